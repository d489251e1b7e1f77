"""Experiments of one shape: each declares itself (EXPERIMENT, NOTEBOOK, VIEW) and is
found; one trial loop; one Result; each notebook declares every parameter of its
experiment with the same default and a comment; every number an interpretation gives for
a variant is that variant's own."""

import ast
import dataclasses
import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from labkit import NOTEBOOKS_DIR, experiments, measure, results
from labkit.experiments import l2fwd, nat, xdp_drop

MODULES = [xdp_drop, l2fwd, nat]


# ---------------------------------------------------------------- declarations
def test_every_experiment_declares_itself_and_is_found():
    found = experiments.declared()
    assert set(MODULES) <= set(found)
    for m in found:
        assert (NOTEBOOKS_DIR / f"{m.NOTEBOOK}.ipynb").exists(), m.NOTEBOOK
        if m in MODULES:  # program_costs declares its notebook only: it has no testbed to parameterise
            assert dataclasses.is_dataclass(m.Params) and callable(m.run)
        if hasattr(m, "VIEW"):
            assert m.VIEW.experiment == m.EXPERIMENT and m.VIEW.notebook == m.NOTEBOOK
    assert [v.experiment for v in experiments.views()][:3] == ["xdp_drop", "l2fwd", "nat"]
    assert experiments.notebook_experiments()["03-ebpf-nat"] == ("nat",)
    assert experiments.view("l2fwd").exclude == (l2fwd.BASELINE,)


def test_the_reporting_layer_names_no_experiment():
    """Adding an experiment is one module and one notebook: comparison, index and
    references know experiments only from their declarations."""
    from labkit.reporting import compare, index, standing

    for mod in (compare, index, standing):
        source = open(mod.__file__).read()
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        for m in MODULES:
            assert f'"{m.EXPERIMENT}"' not in code and f'"{m.NOTEBOOK}"' not in code, (mod.__name__, m.EXPERIMENT)
        assert "VIEWS" not in code


# ---------------------------------------------------------------- the notebooks' parameters
def parameters_cell(notebook: str) -> str:
    data = json.loads((NOTEBOOKS_DIR / f"{notebook}.ipynb").read_text())
    cells = [c for c in data["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, notebook
    return "".join(cells[0]["source"])


def notebook_parameters(notebook: str) -> dict:
    """{name: default} of the parameters cell, read with ast."""
    out = {}
    for node in ast.parse(parameters_cell(notebook)).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def params_defaults(cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
    }


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NOTEBOOK)
def test_notebook_declares_every_parameter_with_its_default(module):
    declared, defaults = notebook_parameters(module.NOTEBOOK), params_defaults(module.Params)
    missing = sorted(set(defaults) - set(declared))
    assert not missing, f"{module.NOTEBOOK} does not declare {missing}"
    differ = {
        n: (declared[n], d)
        for n, d in defaults.items()
        if declared[n] != d
        or type(declared[n]) is not type(d)
        and not (isinstance(d, float) and isinstance(declared[n], (int, float)))
    }
    assert not differ, f"{module.NOTEBOOK}: defaults (notebook, Params) differ: {differ}"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NOTEBOOK)
def test_every_notebook_parameter_has_a_comment_papermill_shows(module):
    from papermill.translators import PythonTranslator

    listed = {p.name: p for p in PythonTranslator.inspect({"source": parameters_cell(module.NOTEBOOK)})}
    declared = notebook_parameters(module.NOTEBOOK)
    assert set(declared) == set(listed), f"papermill --help-notebook misses {set(declared) - set(listed)}"
    assert all(p.help for p in listed.values()), [n for n, p in listed.items() if not p.help]


# ---------------------------------------------------------------- the trial loop and the Result
def fake(offered, processed):
    return SimpleNamespace(offered_pps=offered, offered=SimpleNamespace(packets=offered), processed=processed, flags=[])


def test_trial_loop_rotates_variants_and_marks_each_trial_once_measured():
    calls, recorded = [], []
    rates = {"a": 100, "b": 99, "c": 40}

    def measure_one(variant, size, trial):
        calls.append((size, trial, variant))
        return fake(100, rates[variant])

    def record(variant, size, trial, m):
        assert len([c for c in calls if c[:2] == (size, trial)]) == 3  # the whole trial ran first
        recorded.append((size, trial, variant, list(m.flags)))

    experiments.trial_loop(["a", "b", "c"], 3, measure_one, record, sizes=[64, 1500], show=False)
    assert [v for s, t, v in calls if s == 64] == list("abcbcacab")
    assert len(recorded) == 18
    for size, trial, variant, flags in recorded:
        assert (measure.GENERATOR_LIMITED in flags) == (variant in "ab"), (variant, flags)


def test_smoke_clamp_shortens_lists_and_lowers_numbers():
    p = SimpleNamespace(sizes=[64, 512], trials=3, count=10, loads=[1, 2], rate=None)
    experiments.smoke_clamp(p, {"sizes": 1, "trials": 1, "count": 20_000, "loads": 0, "rate": 5})
    assert (p.sizes, p.trials, p.count, p.loads, p.rate) == ([64], 1, 10, [], None)


def test_result_parts_are_rows_of_a_kind_or_tables_beside():
    table = pd.DataFrame(
        [
            {"variant": "a", "measure": "m", "value": 1.0, "kind": "trial"},
            {"variant": "a", "measure": "m", "value": 2.0, "kind": "sweep"},
        ]
    )
    costs = pd.DataFrame([{"variant": "x", "value": 3.0}])
    r = experiments.Result("demo", table, "", [], None, None, {"costs": costs}, headline_of=lambda t: t.head(1))
    assert list(r.part("sweep")["value"]) == [2.0] and r.trials["value"].tolist() == [1.0]
    assert r.part("costs") is costs and r.costs is costs
    assert r.part("search").empty  # a part this run did not measure
    assert r.kinds == ["trial", "sweep", "costs"] and len(r.headline()) == 1
    with pytest.raises(KeyError, match="choose from"):
        r.part("sweeps")
    with pytest.raises(AttributeError):
        r.nothing


# ---------------------------------------------------------------- interpretations
def rows(experiment, kind, spec, size=64, **extra):
    """SPEC: {variant: [(offered, processed, cpu, flags), ...per trial]}."""
    out = []
    for v, trials in spec.items():
        for trial, (off, proc, cpu, flags) in enumerate(trials):
            for name, value, unit in (
                ("offered_pps", off, "pps"),
                ("processed_pps", proc, "pps"),
                ("cpu_ns_per_pkt", cpu, "ns/packet"),
                ("loss_ratio", 1 - proc / off, "ratio"),
            ):
                out.append(
                    {
                        "experiment": experiment,
                        "run_id": "r",
                        "trial": trial,
                        "variant": v,
                        "size": size,
                        "measure": name,
                        "value": float(value),
                        "unit": unit,
                        "flags": flags if name == "processed_pps" else "",
                        "kind": kind,
                        **extra,
                    }
                )
    return out


LIM = measure.GENERATOR_LIMITED


def check_offered_numbers(text: str, table, variants, digits: int):
    """Every 'VARIANT ... A of B Mpps offered' in TEXT names VARIANT's own processed and
    offered means; returns how many there were."""
    n = 0
    for v in variants:
        for a, b in re.findall(rf"\b{v}\b\W+\(?([\d.]+) of ([\d.]+) Mpps offered", text):
            t = table[table["variant"] == v]
            assert a == f"{t[t['measure'] == 'processed_pps']['value'].mean() / 1e6:.{digits}f}", (v, text)
            assert b == f"{t[t['measure'] == 'offered_pps']['value'].mean() / 1e6:.{digits}f}", (v, text)
            n += 1
    return n


def test_drop_interpretation_numbers_are_each_variants_own():
    spec = {
        "stack": [(6.09e6, 0.60e6, 2400, ""), (6.11e6, 0.62e6, 2500, "")],
        "iptables_raw": [(5.10e6, 1.70e6, 470, ""), (5.14e6, 1.72e6, 488, "")],
        "xdp_native": [(4.25e6, 4.24e6, 120, LIM), (4.35e6, 4.33e6, 130, LIM)],
        "tc": [(3.00e6, 2.99e6, 300, LIM), (3.04e6, 3.02e6, 310, LIM)],
    }
    table = pd.DataFrame(rows("xdp_drop", "trial", spec))
    text = xdp_drop.interpret(table, None)
    assert check_offered_numbers(text, table, spec, 2) == 2  # both generator-limited variants, each its own
    at = table[table["measure"] == "processed_pps"].groupby("variant")["value"].mean() / 1e6
    assert f"xdp_native processed the most: {at['xdp_native']:.2f} Mpps" in text
    cpu = table[table["measure"] == "cpu_ns_per_pkt"].groupby("variant")["value"].mean()
    assert f"xdp_native {cpu['xdp_native']:.0f} ns, iptables_raw {cpu['iptables_raw']:.0f} ns" in text


def test_l2fwd_interpretation_numbers_are_each_variants_own():
    spec = {
        "baseline_sink": [(6.0e6, 6.0e6, 50, LIM)],
        "xdp_redirect": [(5.2e6, 3.1e6, 300, ""), (5.4e6, 3.3e6, 320, "")],
        "bridge": [(4.1e6, 1.0e6, 900, ""), (4.3e6, 1.2e6, 950, "")],
    }
    table = pd.DataFrame(rows("l2fwd", "trial", spec))
    text = l2fwd.interpret(table, None)
    assert check_offered_numbers(text, table, ["xdp_redirect", "bridge"], 3) == 2
    assert "baseline_sink" not in text


def test_nat_interpretation_numbers_are_each_variants_own():
    spec = {
        "routing": [(0.483e6, 0.483e6, 900, LIM)],
        "ebpf": [(0.40e6, 0.38e6, 1100, "")],
        "iptables": [(0.37e6, 0.30e6, 1500, "")],
    }
    table = pd.DataFrame(rows("nat", "udp", spec))
    text = nat.interpret(table, None)
    assert check_offered_numbers(text, table, spec, 3) == 1  # routing's own, not the mean of all (0.418)
    assert "0.418" not in text
    assert "Against plain forwarding (0.483 Mpps)" in text
    assert "eBPF NAT 0.380 Mpps" in text and "iptables NAT 0.300 Mpps" in text


def test_result_tables_in_the_results_format_agree_with_interpretation():
    """The real run's path: ResultSet rows -> table -> headline and interpretation."""
    rs = results.ResultSet("xdp_drop", {}, "lk0000", data_dir="/nonexistent")
    for r in rows("xdp_drop", "trial", {"xdp_native": [(4e6, 3.9e6, 100, LIM)], "stack": [(5e6, 1e6, 900, "")]}):
        rs.add(
            r["variant"],
            r["trial"],
            r["size"],
            {r["measure"]: (r["value"], r["unit"])},
            [f for f in r["flags"].split(";") if f],
            kind="trial",
        )
    head = xdp_drop.headline(rs.table).set_index("variant")
    text = xdp_drop.interpret(rs.table, None)
    assert (
        f"{head.loc['xdp_native', 'processed Mpps']:.2f} of {head.loc['xdp_native', 'offered Mpps']:.2f} Mpps offered"
        in text
    )


# ---------------------------------------------------------------- a part missing, and what fed the run
def meta_of(feed, skipped=None, generator="trafgen"):
    """A run's metadata as results.collect_metadata and the experiments write it."""
    return {
        "generator": generator,
        "feed": {"generator": generator, "receiver_got": feed},
        "skipped_parts": skipped or {},
        "facilities": {
            "probes": {"live_frames": {"ok": False, "reason": "refused through LABKIT_REFUSE"}},
            "choices": {
                "load generator": {
                    "backend": generator,
                    "why": "the fastest that works here (xdp refused: a long reason)",
                },
                "latency probes": {"backend": "af_packet+tc", "why": "live frames refused"},
            },
        },
    }


DROP = {
    "stack": [(0.40e6, 0.20e6, 2400, "")],
    "iptables_raw": [(0.41e6, 0.30e6, 1200, "")],
    "xdp_generic": [(0.42e6, 0.31e6, 1150, "")],
    "xdp_native": [(0.42e6, 0.33e6, 1090, "")],
}


def test_drop_interpretation_says_a_socket_buffer_feed_shows_no_native_advantage():
    skb = pd.DataFrame(rows("xdp_drop", "trial", DROP, feed=experiments.FEED_SKB))
    text = xdp_drop.interpret(skb, None, meta_of(experiments.FEED_SKB))
    first = text.splitlines()[0]
    assert first.startswith("Fed by the trafgen generator; the receiver got socket buffers")
    assert "load generator: trafgen (the fastest that works here)" in first and "a long reason" not in first
    assert "latency probes: af_packet+tc" in first
    assert "native XDP there runs its slow path" in text and "about the skb path" in text
    assert "xdp_native vs iptables_raw: 1.10× the rate (socket-buffer feed: the skb path)." in text
    assert "cannot show in this run" in text
    # the feed read from the table's own rows when the metadata is not at hand
    assert "native XDP there runs its slow path" in xdp_drop.interpret(skb, None)
    xdp = pd.DataFrame(rows("xdp_drop", "trial", DROP, feed=experiments.FEED_XDP))
    text = xdp_drop.interpret(xdp, None, meta_of(experiments.FEED_XDP, generator="xdp_loop"))
    assert "the receiver got XDP frames" in text and "slow path" not in text and "skb path" not in text


def test_fed_by_leaves_out_a_skipped_parts_backend_and_says_it_was_skipped():
    line = experiments.fed_by(meta_of(experiments.FEED_SKB, {"latency": "latency = False"}))
    assert "af_packet+tc" not in line and "latency: not measured (latency = False)" in line
    assert "\n" not in line
    assert experiments.fed_by({}).startswith("Fed by the unrecorded generator")


def test_feed_is_measured_from_the_senders_xdp_xmit_counter():
    from labkit import traffic

    def trial(xmit):
        offered = traffic.Offered("g", packets=1000, bytes=64_000, seconds=1.0)
        probes = {"snd": {"tx_packets": 1000, "ethtool:tx_queue_0_xdp_xmit": xmit, "ethtool:rx_queue_0_drops": 0}}
        return measure.Measurement(offered, 1000, 64, measure.cpu_times(), probes)

    feed = experiments.Feed("g")
    assert feed.metadata()["receiver_got"] == "not measured"
    assert feed.add(trial(1000)) == experiments.FEED_XDP and feed.add(trial(0)) == experiments.FEED_SKB
    assert feed.add(trial(0)) == experiments.FEED_SKB and feed.kind == experiments.FEED_SKB
    meta = feed.metadata()
    assert meta["trials"] == {experiments.FEED_XDP: 1, experiments.FEED_SKB: 2} and "1000 of 3000" in meta["how"]
    no_counter = measure.Measurement(trial(0).offered, 1000, 64, measure.cpu_times(), {"snd": {"tx_packets": 1}})
    assert experiments.Feed("g").add(no_counter) is None
    assert experiments.Feed("g", real_interfaces=True).add(no_counter) == experiments.FEED_WIRE


def test_drop_parts_switched_off_are_named_and_their_views_read_empty():
    p = xdp_drop.Params(smoke=True, latency=False, cost_trials=0, sweep_steps=0).validate()
    off = xdp_drop.switched_off(p)
    assert set(off) == {"sweep", "search", "cpu_at_load", "program costs", "latency"}
    assert off["latency"] == "latency = False, in a smoke run"
    table = pd.DataFrame(rows("xdp_drop", "trial", DROP))
    assert xdp_drop.search_table(table).empty
    assert xdp_drop.load_interpretation(table, "sweep") == "No sweep rows in this run."
    lat = xdp_drop.latency.summary(table)
    assert lat.empty and xdp_drop.latency.interpret(lat) == "" and xdp_drop.latency.table(lat).empty
    costs = pd.DataFrame(columns=["variant", "trial", "value"])
    assert "Program cost" not in xdp_drop.interpret(table, costs)
    assert xdp_drop.plot_latency_cdf(pd.DataFrame()).axes  # a figure that says there is nothing


def test_l2fwd_views_read_a_run_without_latency_idle_cost_or_baseline():
    from labkit.experiments import l2fwd_views

    spec = {"xdp_redirect": [(0.30e6, 0.29e6, 900, "")], "bridge": [(0.25e6, 0.20e6, 1300, "")]}
    table = pd.DataFrame(rows("l2fwd", "trial", spec, feed=experiments.FEED_SKB))
    none = pd.DataFrame()
    lat = l2fwd_views.latency_summary(table)
    assert lat.empty and l2fwd_views.interpret_latency(lat, table) == ""
    over = l2fwd_views.overview(l2fwd.headline(table), none, lat)
    assert set(over["variant"]) == {"xdp_redirect", "bridge"} and "p50_us (no load)" not in over.columns
    assert "forwarded the most" in l2fwd.interpret(table, none)
    fig = l2fwd.plot_latency_cdf(pd.DataFrame())  # what `latency False` used to fail in, with KeyError 'variant'
    assert fig.axes
    line = l2fwd_views.fed_by(meta_of(experiments.FEED_SKB, {"latency": "latency = False"}), table)
    assert "xdp_redirect's native program on dut0 then runs the veth's slow path" in line
    assert "xdp_redirect" not in l2fwd_views.fed_by(meta_of(experiments.FEED_XDP), table)
    p = l2fwd.Params(latency=False, idle_s=0, baseline=False).validate()
    assert set(l2fwd.switched_off(p)) == {"latency", "idle cost", "DUT CPU per packet"}
