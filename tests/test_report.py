"""The batch report and the comparison: runs in data/ compared with their spread, what is
missing said, the index page marking a failed notebook and embedding a figure per
experiment, parameters per notebook, and every program in bpf/ costed."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest
from conftest import needs_root

from labkit import results
from labkit.errors import InputError
from labkit.experiments import program_costs
from labkit.reporting import batch as report
from labkit.reporting import compare, summary
from labkit.testbed import topology


def _run(
    data_dir,
    experiment,
    values: dict,
    params=None,
    caveats=(),
    flags=None,
    unit="pps",
    measure="processed_pps",
    cpu=None,
):
    """A run of EXPERIMENT in DATA_DIR: VALUES = {variant: [value per trial]}."""
    rs = results.ResultSet(experiment, params or {"variants": list(values), "smoke": False}, data_dir=data_dir)
    for variant, trials in values.items():
        for trial, v in enumerate(trials):
            m = {measure: (v, unit), "offered_pps": (max(trials) * 1.5, "pps")}
            if cpu:
                m["cpu_ns_per_pkt"] = (cpu[variant][trial], "ns/packet")
            rs.add(variant, trial, 64, m, (flags or {}).get(variant, ()))
    for c in caveats:
        rs.caveat(c)
    path = rs.save()
    return path


# ---------------------------------------------------------------- comparing runs
def test_compare_runs_says_which_differences_are_beyond_spread(tmp_path):
    a = _run(tmp_path, "xdp_drop", {"xdp_native": [1.0e6, 1.1e6, 1.2e6], "tc": [5e5, 6e5, 7e5]})
    b = _run(tmp_path, "xdp_drop", {"xdp_native": [2.0e6, 2.1e6, 2.2e6], "tc": [5.5e5, 6e5, 6.5e5]})
    diff = compare.compare_runs(a, b)
    rates = diff.table[diff.table["measure"] == "processed_pps"].set_index("variant")
    assert rates.loc["xdp_native", "verdict"] == "beyond spread"
    assert rates.loc["xdp_native", "ratio"] == pytest.approx(2.1 / 1.1)
    assert rates.loc["tc", "verdict"] == "within spread"  # ranges overlap
    assert set(diff.beyond["variant"]) >= {"xdp_native"} and "tc" not in set(
        diff.beyond[diff.beyond["measure"] == "processed_pps"]["variant"]
    )
    assert "beyond trial-to-trial spread" in str(diff) and "xdp_native" in str(diff)
    # the same comparison by run id (found in data/) instead of path
    again = compare.compare_runs(a.name, b.name, data_dir=tmp_path)
    assert again.table["verdict"].tolist() == diff.table["verdict"].tolist()


def test_compare_runs_gives_no_verdict_on_one_trial_and_refuses_mixed_experiments(tmp_path):
    a = _run(tmp_path, "l2fwd", {"bridge": [1e5]})
    b = _run(tmp_path, "l2fwd", {"bridge": [9e5]})
    diff = compare.compare_runs(a, b)
    assert not diff.table["beyond_spread"].any()
    assert set(diff.table["verdict"]) == {"one trial: spread unknown"}
    c = _run(tmp_path, "nat", {"ebpf": [1e5, 2e5]})
    with pytest.raises(InputError, match="different experiments"):
        compare.compare_runs(a, c)
    with pytest.raises(InputError, match="no runs match"):
        compare.find_run("lknosuch", data_dir=tmp_path)


def test_compare_runs_lists_the_metadata_that_differs(tmp_path):
    a = _run(tmp_path, "xdp_drop", {"tc": [1, 2]}, params={"count": 10, "variants": ["tc"]})
    b = _run(tmp_path, "xdp_drop", {"tc": [1, 2]}, params={"count": 20, "variants": ["tc"]})
    meta = json.loads((b / "metadata.json").read_text())
    meta["kernel"] = "9.9.9-other"
    (b / "metadata.json").write_text(json.dumps(meta))
    diff = compare.compare_runs(a, b)
    fields = dict(zip(diff.metadata["field"], diff.metadata["b"]))
    assert fields["kernel"] == "9.9.9-other" and fields["parameters.count"] == 20


# ---------------------------------------------------------------- the overview
def test_overview_of_an_empty_data_dir_says_what_is_missing(tmp_path):
    ov = summary.overview(tmp_path)
    assert ov.experiments == []
    for nb in ("01-xdp-drop", "02-l2-forwarding", "03-ebpf-nat"):
        assert any(nb in m for m in ov.missing), nb
    assert "No experiment runs" in ov.interpretation


def test_overview_prefers_full_runs_reads_old_formats_and_reports_missing_variants(tmp_path):
    full = _run(
        tmp_path,
        "xdp_drop",
        {"xdp_native": [2e6, 2.2e6], "iptables_raw": [1e6, 1.1e6]},
        params={"variants": ["xdp_native", "iptables_raw", "tc"], "smoke": False},
        caveats=["tc: could not attach the tc program in this environment"],
        flags={"xdp_native": ["generator-limited"]},
        cpu={"xdp_native": [100, 110], "iptables_raw": [400, 420]},
    )
    _run(tmp_path, "xdp_drop", {"xdp_native": [5e6]}, params={"variants": ["xdp_native"], "smoke": True})
    # an l2fwd run written by an older labkit: no flags column, metadata without caveats
    old = tmp_path / "l2fwd" / "20200101T000000Z-lk0001"
    old.mkdir(parents=True)
    (old / "results.csv").write_text(
        "experiment,run_id,trial,variant,size,measure,value,unit\n"
        "l2fwd,x,0,bridge,64,processed_pps,100000,pps\n"
        "l2fwd,x,1,bridge,64,processed_pps,120000,pps\n"
    )
    (old / "metadata.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "host": "elsewhere",
                "kernel": "5.15",
                "parameters": {"smoke": True, "variants": ["bridge"]},
            }
        )
    )
    ov = summary.overview(tmp_path)
    assert ov.experiments == ["xdp_drop", "l2fwd"]
    drop = ov.summary[ov.summary["experiment"] == "Packet drop"].set_index("variant")
    assert drop.loc["xdp_native", "run"] == full.name  # the full run, not the newer smoke run
    assert drop.loc["xdp_native", "Mpps min"] == pytest.approx(2.0) and drop.loc["xdp_native", "trials"] == 2
    assert drop.loc["iptables_raw", "CPU ns/pkt"] == pytest.approx(410)
    assert "generator-limited" in drop.loc["xdp_native", "flags"]
    assert any("variant tc did not run" in m and "could not attach" in m for m in ov.missing)
    assert any("only a smoke run" in m and "L2 forwarding" in m for m in ov.missing)
    assert any("NAT" in m for m in ov.missing)
    assert any("generator-limited" in w for _, _, w in ov.warnings)
    refs = ov.references.set_index("reference")
    assert refs.loc["XDP paper: XDP drop", "measured"] == pytest.approx(2.1e6)
    assert refs.loc["XDP paper: XDP drop", "per-core equivalent"] == pytest.approx(1e9 / 105)
    assert "xdp_native processed the most" in ov.interpretation
    counts = summary.run_counts(ov.index).set_index("experiment")
    assert counts.loc["xdp_drop", "runs"] == 2 and counts.loc["xdp_drop", "full runs"] == 1


# ---------------------------------------------------------------- parameters
def test_parameters_per_notebook_from_file_and_command_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("trials: 5\n01-xdp-drop:\n  sizes: [64]\n  trials: 2\n")
    params = report.load_parameters([f], [("count", "1000"), ("02-l2-forwarding:trials", "7")])
    nbs = {p.stem: p for p in report.notebooks()}
    assert report.parameters_for(nbs["01-xdp-drop"], params) == {"trials": 2, "sizes": [64], "count": 1000}
    assert report.parameters_for(nbs["02-l2-forwarding"], params) == {"trials": 7, "count": 1000}
    with pytest.raises(InputError, match="NOTEBOOK:NAME"):
        report.load_parameters([], [("xdp:trials", "1")])
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        report.load_parameters([tmp_path / "bad.yaml"])


def test_a_batch_request_is_checked_against_what_the_notebooks_declare():
    """Names, sections and values, before anything runs: each notebook's parameters cell
    says what it takes, its experiment's Params what values are good."""

    def refused(names, params, smoke=False):
        with pytest.raises(InputError) as exc:
            report.check(names, params, smoke)
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert "did you mean 'trials'" in refused(None, {"trails": 2})
    assert "did you mean 'trials'" in refused(["01-xdp-drop"], {"01-xdp-drop": {"trails": 2}})
    assert "did you mean '01-xdp-drop'" in refused(["01-xdp-drop"], {"01-xdp-dorp": {"trials": 2}})
    assert "did you mean '02-l2-forwarding'" in refused(["02-l2-forwardin"], {})
    # a value is checked before smoke shortens the run
    assert "trials 0: at least 1" in refused(["01-xdp-drop"], {"trials": 0}, smoke=True)
    assert "trials 'abc': expected a whole number" in refused(["01-xdp-drop"], {"trials": "abc"}, smoke=True)
    # a lone value where a list is declared is a one-element list
    assert [p.stem for p in report.check(["01-xdp-drop"], {"sizes": 64}, smoke=True)] == ["01-xdp-drop"]
    # a parameter of one notebook is fine for a batch of several, but not for a notebook without it
    assert len(report.check(["01-xdp-drop", "04-comparison"], {"trials": 2})) == 2
    assert "notebook 04-comparison has no parameter 'trials'" in refused(["04-comparison"], {"trials": 2})


def test_the_comparison_notebook_runs_last_and_is_committed_clean():
    names = [p.stem for p in report.notebooks()]
    assert names[-1] == "04-comparison"
    data = json.loads(report.notebooks(["04-comparison"])[0].read_text())
    params = [c for c in data["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "smoke: bool = False" in "".join(params[0]["source"])
    assert all(not c.get("outputs") for c in data["cells"] if c["cell_type"] == "code")


# ---------------------------------------------------------------- program costs
def test_entry_points_are_found_in_source(tmp_path):
    (tmp_path / "x.c").write_text(
        textwrap.dedent("""\
        /* int commented(struct xdp_md *ctx) is not a program */
        static __always_inline int helper(void *p) { return 0; }
        int a_xdp(struct xdp_md *ctx) { return XDP_PASS; }
        int a_tc(struct __sk_buff *skb)
        { return TC_ACT_OK; }
        """)
    )
    assert program_costs.entry_points(tmp_path / "x.c") == [("a_xdp", "xdp"), ("a_tc", "tc")]


@needs_root
def test_every_program_in_bpf_is_costed_on_its_working_path():
    costs = program_costs.measure(repeat=20_000, trials=1, single_calls=50)
    wanted = {(s, name) for s, entries in program_costs.sources().items() for name, _ in entries}
    measured = costs.dropna(subset=["ns_per_pkt"])
    assert wanted <= set(zip(measured["source"], measured["program"]))
    assert (measured["ns_per_pkt"] > 0).all()
    worked = measured[measured["expected"].notna()]
    assert (worked["verdict"] == worked["expected"]).all(), worked[worked["verdict"] != worked["expected"]]
    assert {"drop_filter", "xdp_fwd", "nat", "xdp_gen", "xdp_minimal"} <= set(worked["source"])
    # a source without XDP/tc programs is listed, with the reason
    none = costs[costs["ns_per_pkt"].isna()]
    assert set(none["source"]) == {s for s, e in program_costs.sources().items() if not e}
    assert none["note"].str.contains("not an XDP or tc program").all()


# ---------------------------------------------------------------- the batch and its index
PASSING = """\
from labkit import results
rs = results.ResultSet("xdp_drop", {"variants": ["xdp_native", "tc", "stack"], "smoke": False}, data_dir=data_dir)
for trial, (a, b) in enumerate([(2e6, 1e6), (2.2e6, 1.1e6)]):
    rs.add("xdp_native", trial, 64, {"processed_pps": (a, "pps"), "offered_pps": (a, "pps"),
                                     "cpu_ns_per_pkt": (100.0, "ns/packet")}, ["generator-limited"])
    rs.add("tc", trial, 64, {"processed_pps": (b, "pps"), "offered_pps": (a, "pps"), "cpu_ns_per_pkt": (300.0, "ns/packet")})
rs.caveat("could not attach stack in this test", "stack")
rs.caveat("veth: native XDP on a veth is not a NIC driver")
print(rs.save())
"""


def _notebook(path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": report.kernel_name(), "display_name": "labkit", "language": "python"}
    params = nbformat.v4.new_code_cell("data_dir: str = ''  # where tables go", metadata={"tags": ["parameters"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, str(path))


def test_batch_marks_a_failed_notebook_and_embeds_a_figure_per_experiment(tmp_path):
    nbs, data, out = tmp_path / "notebooks", tmp_path / "data", tmp_path / "reports"
    nbs.mkdir()
    _notebook(nbs / "01-xdp-drop.ipynb", PASSING)
    _notebook(nbs / "02-l2-forwarding.ipynb", "raise RuntimeError('the DUT caught fire')")
    # a parameter no notebook declares stops the batch before anything runs
    with pytest.raises(InputError, match=r"no notebook has a parameter 'data_dri' \(did you mean 'data_dir'\?\)"):
        report.run_all(None, {"data_dri": str(data)}, out, data, progress=False, log=lambda *a: None, directory=nbs)
    assert not out.exists() and not data.exists()
    runs = report.run_all(None, {"data_dir": str(data)}, out, data, progress=False, log=lambda *a: None, directory=nbs)
    ok = {r.name: r for r in runs}
    assert ok["01-xdp-drop"].ok and not ok["02-l2-forwarding"].ok
    # the failure in one line (the traceback is in the executed notebook, linked from the index)
    assert ok["02-l2-forwarding"].error == "RuntimeError: the DUT caught fire"
    assert len(ok["01-xdp-drop"].runs) == 1 and not ok["02-l2-forwarding"].runs
    assert not ok["01-xdp-drop"].error
    page = (out / "index.html").read_text()
    assert re.search(r'<tr class="failed"><td>02-l2-forwarding</td><td class="failed">FAILED', page)
    assert 'href="02-l2-forwarding.ipynb"' in page and (out / "02-l2-forwarding.ipynb").exists()
    assert "the DUT caught fire" in (out / "02-l2-forwarding.html").read_text()  # its executed copy shows it
    assert page.count('<img src="data:image/png;base64,') == 1  # one headline figure: the experiment with data
    assert "xdp_native processed the most" in page
    assert "generator-limited" in page and "variant stack could not run: could not attach stack" in page
    assert "veth: native XDP on a veth" in page
    assert "L2 forwarding" in page and "no data" in page  # its notebook failed: said, not hidden
    assert "kernel" in page and "commit" in page
    batch = json.loads((out / "batch.json").read_text())
    assert [n["ok"] for n in batch["notebooks"]] == [True, False]
    for r in runs:  # reports open offline: no script from the network
        assert not re.search(r'<script[^>]*src="https?://', r.html.read_text())
    # running one notebook again keeps the other's report on the index, marked as earlier
    again = report.run_all(
        ["01-xdp-drop"], {"data_dir": str(data)}, out, data, progress=False, log=lambda *a: None, directory=nbs
    )
    assert [r.name for r in again] == ["01-xdp-drop"]
    page = (out / "index.html").read_text()
    assert re.search(r'<tr class="earlier"><td>02-l2-forwarding</td><td class="failed">FAILED', page)
    assert "not run in this batch" in page
    batch = {n["name"]: n for n in json.loads((out / "batch.json").read_text())["notebooks"]}
    assert batch["02-l2-forwarding"]["earlier"] and not batch["01-xdp-drop"]["earlier"]


@needs_root
def test_the_comparison_notebook_runs_headless(tmp_path):
    before = set(results.list_runs("program_costs"))
    run = report.execute(report.notebooks(["04-comparison"])[0], {"smoke": True}, out_dir=tmp_path, progress=False)
    assert run.ok, run.error
    html = run.html.read_text()
    assert html.count("data:image/png;base64") >= 2  # at least the program costs and one experiment
    assert "Published reference values" in html and "24.00 Mpps per core" in html
    assert not re.search(r'<script[^>]*src="https?://', html)
    new = set(results.list_runs("program_costs")) - before
    assert len(new) == 1
    costs = results.load_run(new.pop()).table
    assert (costs[costs["measure"] == "prog_ns_per_pkt"]["value"] > 0).all()


def test_comparison_notebook_runs_with_no_runs_at_all(tmp_path):
    """On a fresh clone data/ holds nothing: the comparison says what is missing, and runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root (it measures program costs)")
    empty = tmp_path / "data"
    empty.mkdir()
    run = report.execute(
        report.notebooks(["04-comparison"])[0], {"smoke": True}, tmp_path / "reports", empty, progress=False
    )
    assert run.ok, run.error
    assert "no run of 'xdp_drop'" in run.html.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_a_batch_undoes_the_running_experiment(sig, tmp_path):
    """Ctrl-C (or SIGTERM) on `labkit run`: the notebook's kernel, in a session of its own,
    is interrupted, the experiment undoes its namespaces, the batch stops non-zero."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from labkit import cleanup

    # its own run registry folder: the run it starts is found there, not confused with
    # testbeds other work on this machine builds meanwhile
    registry = tmp_path / "run"
    env = dict(
        os.environ,
        LABKIT_DATA_DIR=str(tmp_path / "data"),
        LABKIT_REPORTS_DIR=str(tmp_path / "reports"),
        LABKIT_RUNTIME_DIR=str(registry),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labkit",
            "run",
            "01-xdp-drop",
            "--no-progress",
            "-p",
            "sizes",
            "[64]",
            "-p",
            "trials",
            "5",
            "-p",
            "count",
            "3000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline, new = time.monotonic() + 60, set()
        while time.monotonic() < deadline and not new:
            prefixes = {f.stem for f in registry.glob("lk*.json")}
            new = {
                n
                for n in cleanup.labkit_namespaces()
                if n[:6] in prefixes  # the experiment's, not a
                and n[7:] not in topology.PROBE_HOSTS
            }  # capability probe's while the batch checks its input
            time.sleep(0.2)
        assert new, "the experiment never built its testbed"
        time.sleep(1.0)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "stopped by signal" in out
    assert (tmp_path / "reports" / "batch.json").exists(), "the batch wrote where LABKIT_REPORTS_DIR points"
    assert not set(cleanup.labkit_namespaces()) & new, "the interrupted run left its namespaces"


# ---------------------------------------------------------------- latency and testbeds
def _testbed_run(data_dir, experiment, rates: dict, p99_us: dict, where=None):
    """A run of EXPERIMENT with trial rates {variant: [pps per trial]} and latency rows (no
    load and 90% of the no-drop rate; p99 {variant: [µs with no load, µs at 90%]} in each of
    two trials), measured on WHERE: None (this machine's namespaces), ('cluster', worker,
    host) or ('inventory', {host: role})."""

    class Bed:  # what an inventory run's testbed records (labkit.testbed.inventory)
        def __init__(self, hosts):
            self.hosts = hosts

        def metadata(self):
            return {"inventory": "/lab/hosts.yml", "hosts": {h: {"role": r} for h, r in self.hosts.items()}}

    rs = results.ResultSet(experiment, {"variants": list(rates), "smoke": False, "trials": 2}, data_dir=data_dir)
    for variant, trials in rates.items():
        for trial, v in enumerate(trials):
            rs.add(variant, trial, 64, {"processed_pps": (v, "pps"), "offered_pps": (max(trials), "pps")}, kind="trial")
            rs.add(variant, trial, 64, {"ndr_pps": (v, "pps")}, kind="latency", load_fraction=None)
            for f, p99 in zip((0.0, 0.9), p99_us[variant]):
                p99 = p99 * (1 + 0.1 * trial)  # a spread over the two trials
                rs.add(
                    variant,
                    trial,
                    64,
                    {
                        "lat_p50_ns": (p99 * 200, "ns"),
                        "lat_p99_ns": (p99 * 1e3, "ns"),
                        "lat_max_ns": (p99 * 2e3, "ns"),
                        "lat_probes": (100, "packets"),
                        "lat_load_pps": (f * v, "pps"),
                    },
                    kind="latency",
                    load_fraction=f,
                )
    path = rs.save(Bed(where[1]) if where and where[0] == "inventory" else None)
    if where and where[0] == "cluster":  # as labkit.reporting.cluster marks what a worker ran
        meta = json.loads((path / "metadata.json").read_text())
        meta.update(testbed=where[1], worker_host=where[2])
        (path / "metadata.json").write_text(json.dumps(meta))
    return path


def _three_testbeds(data_dir):
    here = _testbed_run(
        data_dir, "xdp_drop", {"xdp_native": [2e6, 2.2e6], "tc": [1e6, 1.1e6]}, {"xdp_native": [5, 20], "tc": [6, 40]}
    )
    worker = _testbed_run(
        data_dir,
        "xdp_drop",
        {"xdp_native": [9e6, 9.2e6], "tc": [4e6, 4.1e6]},
        {"xdp_native": [50, 200], "tc": [60, 400]},
        ("cluster", "tb2", "lab2"),
    )
    hosts = _testbed_run(
        data_dir,
        "xdp_drop",
        {"xdp_native": [20e6, 21e6], "tc": [7e6, 7.1e6]},
        {"xdp_native": [2, 3], "tc": [3, 4]},
        ("inventory", {"gen1": "sender", "dut1": "receiver"}),
    )
    fwd = _testbed_run(
        data_dir,
        "l2fwd",
        {"xdp_redirect": [3e6, 3.1e6], "bridge": [1e6, 1.2e6]},
        {"xdp_redirect": [7, 30], "bridge": [9, 90]},
    )
    return here, worker, hosts, fwd


def test_overview_shows_latency_of_every_experiment_and_keeps_testbeds_apart(tmp_path):
    here, worker, hosts, fwd = _three_testbeds(tmp_path)
    index = compare.runs(tmp_path).set_index("run_id")
    assert index.loc[here.name, "testbed"].startswith("namespace testbed on ")
    assert index.loc[worker.name, "testbed"].startswith("Dask worker tb2 on lab2")
    assert index.loc[hosts.name, "testbed"] == "hosts dut1 (receiver), gen1 (sender)"
    ov = summary.overview(tmp_path)
    drop = ov.summary[(ov.summary["experiment"] == "Packet drop") & (ov.summary["variant"] == "xdp_native")]
    # one row per testbed, each its own run's numbers: never averaged together
    got = dict(zip(drop["run"], drop["Mpps"]))
    assert got == {here.name: pytest.approx(2.1), worker.name: pytest.approx(9.1), hosts.name: pytest.approx(20.5)}
    assert drop["testbed"].nunique() == 3
    lat = ov.latency
    assert set(lat["experiment"]) == {"Packet drop", "L2 forwarding"}  # found in the data, for both
    p99 = lat[(lat["variant"] == "xdp_native") & (lat["load_fraction"] == 0.9)].set_index("run")
    assert p99.loc[here.name, "p99_us"] == pytest.approx(21.0)  # (20 + 22) / 2, its own two trials
    assert p99.loc[worker.name, "p99_us"] == pytest.approx(210.0)
    assert p99.loc[hosts.name, "p99_us_min"] == pytest.approx(3.0) and p99.loc[
        hosts.name, "p99_us_max"
    ] == pytest.approx(3.3)
    wide = summary.latency_view.wide(lat)
    assert {"p50 µs (no load)", "p99 µs (no load)", "p50 µs (90% NDR)", "p99 µs (90% NDR)"} <= set(wide.columns)
    assert len(wide) == 2 * 3 + 2  # per run and variant: three testbeds of drop, one of forwarding
    text = ov.interpretation
    assert "L2 forwarding latency" in text and "Packet drop latency" in text
    assert "Dask worker tb2" in text and "hosts dut1 (receiver)" in text
    # two testbeds are never a before/after pair
    assert compare.latest_pair("xdp_drop", tmp_path) is None


def test_index_shows_latency_and_every_testbed_from_its_own_run(tmp_path):
    from labkit.reporting import index

    data, out = tmp_path / "data", tmp_path / "reports"
    here, worker, hosts, fwd = _three_testbeds(data)
    page = index.write_index([], out, data).read_text()
    assert "p99 µs (90% NDR)" in page and "p50 µs (no load)" in page  # the latency table
    assert "L2 forwarding latency" in page and "Packet drop latency" in page
    assert "Other testbeds, each from its own run" in page
    assert "Dask worker tb2 on lab2" in page and "hosts dut1 (receiver), gen1 (sender)" in page
    # each testbed's headline is its own run's rate: 9.1 (worker), 20.5 (inventory), 2.1 (here)
    assert "9.100 Mpps" in page and "20.500 Mpps" in page and "2.100 Mpps" in page
    for run in (here, worker, hosts, fwd):
        assert run.name in page
