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
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NOTEBOOK)
def test_notebook_declares_every_parameter_with_its_default(module):
    declared, defaults = notebook_parameters(module.NOTEBOOK), params_defaults(module.Params)
    missing = sorted(set(defaults) - set(declared))
    assert not missing, f"{module.NOTEBOOK} does not declare {missing}"
    differ = {n: (declared[n], d) for n, d in defaults.items() if declared[n] != d or type(declared[n]) is not type(d)
              and not (isinstance(d, float) and isinstance(declared[n], (int, float)))}
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
    return SimpleNamespace(offered_pps=offered, offered=SimpleNamespace(packets=offered), processed=processed,
                           flags=[])


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
    assert [v for s, t, v in calls if s == 64] == list("abc" "bca" "cab")
    assert len(recorded) == 18
    for size, trial, variant, flags in recorded:
        assert (measure.GENERATOR_LIMITED in flags) == (variant in "ab"), (variant, flags)


def test_smoke_clamp_shortens_lists_and_lowers_numbers():
    p = SimpleNamespace(sizes=[64, 512], trials=3, count=10, loads=[1, 2], rate=None)
    experiments.smoke_clamp(p, {"sizes": 1, "trials": 1, "count": 20_000, "loads": 0, "rate": 5})
    assert (p.sizes, p.trials, p.count, p.loads, p.rate) == ([64], 1, 10, [], None)


def test_result_parts_are_rows_of_a_kind_or_tables_beside():
    table = pd.DataFrame([{"variant": "a", "measure": "m", "value": 1.0, "kind": "trial"},
                          {"variant": "a", "measure": "m", "value": 2.0, "kind": "sweep"}])
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
            for name, value, unit in (("offered_pps", off, "pps"), ("processed_pps", proc, "pps"),
                                      ("cpu_ns_per_pkt", cpu, "ns/packet"), ("loss_ratio", 1 - proc / off, "ratio")):
                out.append({"experiment": experiment, "run_id": "r", "trial": trial, "variant": v, "size": size,
                            "measure": name, "value": float(value), "unit": unit,
                            "flags": flags if name == "processed_pps" else "", "kind": kind, **extra})
    return out


LIM = measure.GENERATOR_LIMITED


def check_offered_numbers(text: str, table, variants, digits: int):
    """Every 'VARIANT ... A of B Mpps offered' in TEXT names VARIANT's own processed and
    offered means; returns how many there were."""
    n = 0
    for v in variants:
        for a, b in re.findall(rf"\b{v}\b\W+\(?([\d.]+) of ([\d.]+) Mpps offered", text):
            t = table[table["variant"] == v]
            assert a == f'{t[t["measure"] == "processed_pps"]["value"].mean() / 1e6:.{digits}f}', (v, text)
            assert b == f'{t[t["measure"] == "offered_pps"]["value"].mean() / 1e6:.{digits}f}', (v, text)
            n += 1
    return n


def test_drop_interpretation_numbers_are_each_variants_own():
    spec = {"stack": [(6.09e6, 0.60e6, 2400, ""), (6.11e6, 0.62e6, 2500, "")],
            "iptables_raw": [(5.10e6, 1.70e6, 470, ""), (5.14e6, 1.72e6, 488, "")],
            "xdp_native": [(4.25e6, 4.24e6, 120, LIM), (4.35e6, 4.33e6, 130, LIM)],
            "tc": [(3.00e6, 2.99e6, 300, LIM), (3.04e6, 3.02e6, 310, LIM)]}
    table = pd.DataFrame(rows("xdp_drop", "trial", spec))
    text = xdp_drop.interpret(table, None)
    assert check_offered_numbers(text, table, spec, 2) == 2  # both generator-limited variants, each its own
    at = table[table["measure"] == "processed_pps"].groupby("variant")["value"].mean() / 1e6
    assert f"xdp_native processed the most: {at['xdp_native']:.2f} Mpps" in text
    cpu = table[table["measure"] == "cpu_ns_per_pkt"].groupby("variant")["value"].mean()
    assert f"xdp_native {cpu['xdp_native']:.0f} ns, iptables_raw {cpu['iptables_raw']:.0f} ns" in text


def test_l2fwd_interpretation_numbers_are_each_variants_own():
    spec = {"baseline_sink": [(6.0e6, 6.0e6, 50, LIM)],
            "xdp_redirect": [(5.2e6, 3.1e6, 300, ""), (5.4e6, 3.3e6, 320, "")],
            "bridge": [(4.1e6, 1.0e6, 900, ""), (4.3e6, 1.2e6, 950, "")]}
    table = pd.DataFrame(rows("l2fwd", "trial", spec))
    text = l2fwd.interpret(table, None)
    assert check_offered_numbers(text, table, ["xdp_redirect", "bridge"], 3) == 2
    assert "baseline_sink" not in text


def test_nat_interpretation_numbers_are_each_variants_own():
    spec = {"routing": [(0.483e6, 0.483e6, 900, LIM)], "ebpf": [(0.40e6, 0.38e6, 1100, "")],
            "iptables": [(0.37e6, 0.30e6, 1500, "")]}
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
        rs.add(r["variant"], r["trial"], r["size"], {r["measure"]: (r["value"], r["unit"])},
               [f for f in r["flags"].split(";") if f], kind="trial")
    head = xdp_drop.headline(rs.table).set_index("variant")
    text = xdp_drop.interpret(rs.table, None)
    assert f"{head.loc['xdp_native', 'processed Mpps']:.2f} of {head.loc['xdp_native', 'offered Mpps']:.2f} Mpps offered" in text
