"""Results over time: each experiment's headline ratios over the stored runs of one testbed,
grouped by jumpavg, every change named in the headline's direction, runs of other testbeds
kept out, the CSV, `labkit trend` and the index's trend section. Most runs here are written
by labkit's own results writer with values chosen for the test (the trend logic on real
storage); one test makes two real smoke runs of the drop experiment."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import needs_root

from labkit import results
from labkit.reporting import index, trend

#: per experiment: the two variants of its headlines, their CPU measure and the rows' kind
SHAPES = {
    "xdp_drop": ("xdp_native", "iptables_raw", "cpu_ns_per_pkt", "trial"),
    "l2fwd": ("xdp_redirect", "bridge", "dut_cpu_ns_per_pkt", "trial"),
    "nat": ("xdp_nat", "iptables", "cpu_ns_per_pkt", "udp"),
}
SPREAD = (0.98, 1.0, 1.02)  # the trials of one run: +-2% around its ratio


def stored(
    data_dir,
    experiment,
    rate_ratio,
    cpu_ratio,
    *,
    when,
    commit="aaaa000000",
    kernel="6.1.0-a",
    worker=None,
    smoke=False,
    missing=(),
):
    """A run of EXPERIMENT written by results.ResultSet: per trial, the first variant at
    RATE_RATIO x the second's rate and CPU_RATIO x its CPU per packet (None: no CPU), then
    its metadata's time, commit and kernel set to WHEN, COMMIT, KERNEL; WORKER marks it as a
    Dask worker's run (another testbed); MISSING variants have no rows."""
    a, b, cpu, kind = SHAPES[experiment]
    rs = results.ResultSet(experiment, {"variants": [a, b], "smoke": smoke, "trials": 3}, data_dir=data_dir)
    for trial, f in enumerate(SPREAD):
        for variant, rate, ns in ((b, 1e6, 400.0), (a, 1e6 * rate_ratio * f, 400.0 * (cpu_ratio or 0) * f)):
            if variant in missing:
                continue
            m = {"processed_pps": (rate, "pps"), "offered_pps": (3e6, "pps")}
            if cpu_ratio is not None:
                m[cpu] = (ns, "ns/packet")
            rs.add(variant, trial, 64, m, kind=kind)
    path = rs.save()
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(time_utc=when, kernel=kernel, git={"commit": commit, "dirty": False})
    if worker:
        meta.update(testbed=worker, worker_host="lab2")
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


def day(n: int) -> str:
    return f"2026-11-{n:02d}T10:00:00Z"


@pytest.fixture
def history(tmp_path):
    """Runs on this machine's namespace testbed: drop's CPU ratio steps from 0.24 up to 0.31
    at the fifth run (new commit and kernel) while its rate ratio holds at 3; forwarding's
    rate ratio rises 2 -> 3 and its CPU ratio falls 0.5 -> 0.3 at its fourth run; the NAT's
    rate ratio falls 1.5 -> 1.0 at its third. Written newest first: time orders them. And a
    Dask worker's run (another testbed) with ratios far off, which no series here may take."""
    data = tmp_path / "data"
    drop = [
        stored(
            data,
            "xdp_drop",
            3.0,
            0.24 if i < 4 else 0.31,
            when=day(10 + i),
            commit="aaaa000000" if i < 4 else "bbbb111111",
            kernel="6.1.0-a" if i < 4 else "6.2.0-b",
        )
        for i in reversed(range(8))
    ][::-1]
    fwd = [stored(data, "l2fwd", 2.0 if i < 3 else 3.0, 0.5 if i < 3 else 0.3, when=day(10 + i)) for i in range(6)]
    nat = [stored(data, "nat", 1.5 if i < 2 else 1.0, None, when=day(10 + i)) for i in range(4)]
    worker = stored(data, "xdp_drop", 9.0, 0.9, when=day(1), worker="tb2")
    return data, drop, fwd, nat, worker


def one(series, experiment, name, worker=False):
    found = [
        s
        for s in series
        if s.headline.experiment == experiment
        and s.headline.name == name
        and s.testbed.startswith("Dask worker") == worker
    ]
    assert len(found) == 1, [(s.testbed, s.headline) for s in series]
    return found[0]


def test_series_follow_time_and_jumpavg_names_each_change_in_its_direction(history):
    data, drop, fwd, nat, worker = history
    series = trend.collect(data)
    cpu = one(series, "xdp_drop", "xdp_native/iptables_raw CPU")
    assert cpu.testbed.startswith("namespace testbed on ") and not cpu.smoke
    assert [p.run_id for p in cpu.points] == [p.name for p in drop]  # oldest first, by time
    assert [round(p.value, 6) for p in cpu.points] == [0.24] * 4 + [0.31] * 4
    assert [len(p.trials) for p in cpu.points] == [3] * 8  # jumpavg gets each run's trials
    assert [p.group for p in cpu.points] == [1] * 4 + [2] * 4
    # CPU per packet: lower is better, so a rise is a regression (jumpavg itself would call it a progression)
    fifth = drop[4].name
    assert cpu.lines() == [
        f"01 xdp_native/iptables_raw CPU: regression at run {fifth} (commit bbbb111111, "
        f"kernel 6.2.0-b, {day(14)}): 0.24 -> 0.31"
    ]
    rate = one(series, "xdp_drop", "xdp_native/iptables_raw rate")
    assert rate.lines() == [
        f"01 xdp_native/iptables_raw rate: no change over 8 runs: 3 (from {drop[0].name} to {drop[-1].name})"
    ]
    assert {p.verdict for p in rate.points} == {"baseline"}
    assert (
        one(series, "l2fwd", "xdp_redirect/bridge rate")
        .lines()[0]
        .startswith(f"02 xdp_redirect/bridge rate: progression at run {fwd[3].name} ")
    )
    assert (
        one(series, "l2fwd", "xdp_redirect/bridge CPU")
        .lines()[0]
        .startswith(f"02 xdp_redirect/bridge CPU: progression at run {fwd[3].name} ")
    )  # CPU fell: better
    nat_rate = one(series, "nat", "xdp_nat/iptables rate")
    assert nat_rate.lines() == [
        f"03 xdp_nat/iptables rate: regression at run {nat[2].name} (commit aaaa000000, "
        f"kernel 6.1.0-a, {day(12)}): 1.5 -> 1"
    ]
    # the NAT runs recorded no CPU: said, not guessed
    assert one(series, "nat", "xdp_nat/iptables CPU").lines() == [
        "03 xdp_nat/iptables CPU: not measured in any of 4 runs"
    ]


def test_runs_of_another_testbed_are_never_mixed_in(history):
    data, drop, fwd, nat, worker = history
    series = trend.collect(data)
    here = one(series, "xdp_drop", "xdp_native/iptables_raw CPU")
    there = one(series, "xdp_drop", "xdp_native/iptables_raw CPU", worker=True)
    assert worker.name not in [p.run_id for p in here.points] and len(here.points) == 8
    assert there.testbed.startswith("Dask worker tb2 on lab2") and [p.run_id for p in there.points] == [worker.name]
    assert there.lines()[0].startswith("01 xdp_native/iptables_raw CPU: no change (one run so far): 0.9 at run ")
    # the same runs filtered by testbed from the command's side
    out = []
    assert trend.main(testbed="tb2", data_dir=data, out=out.append) == 0
    assert [line for line in out if not line.startswith("  ")] == [f"{there.testbed} ({there.machine}), full runs:"]
    assert "0.9 at run" in out[1] and not [line for line in out if "0.24" in line or "0.31" in line]
    assert (
        "  02 xdp_redirect/bridge rate: no run of l2fwd here (labkit run 02-l2-forwarding)" in out
    )  # said, not left out


def test_short_series_and_runs_without_the_headline(tmp_path):
    data = tmp_path / "data"
    first = stored(data, "xdp_drop", 3.0, 0.24, when=day(1))
    s = one(trend.collect(data), "xdp_drop", "xdp_native/iptables_raw CPU")
    assert s.lines() == [
        f"01 xdp_native/iptables_raw CPU: no change (one run so far): 0.24 at run {first.name} "
        f"(commit aaaa000000, kernel 6.1.0-a, {day(1)})"
    ]
    second = stored(data, "xdp_drop", 3.0, 0.241, when=day(2))
    s = one(trend.collect(data), "xdp_drop", "xdp_native/iptables_raw CPU")
    assert len(s.groups) == 1 and s.lines()[0].startswith("01 xdp_native/iptables_raw CPU: no change over 2 runs: ")
    gap = stored(data, "xdp_drop", 3.0, 0.24, when=day(3), missing=("iptables_raw",))
    s = one(trend.collect(data), "xdp_drop", "xdp_native/iptables_raw CPU")
    assert [p.run_id for p in s.points] == [first.name, second.name, gap.name]
    assert s.lines()[-1] == (
        f"01 xdp_native/iptables_raw CPU: not measured in 1 of 3 runs ({gap.name}: "
        "no cpu_ns_per_pkt of iptables_raw in this run)"
    )
    # smoke runs are a series of their own, beside the full runs of the same testbed
    smoke = stored(data, "xdp_drop", 3.0, 0.5, when=day(4), smoke=True)
    both = [x for x in trend.collect(data) if x.headline.name == "xdp_native/iptables_raw CPU"]
    assert sorted((x.smoke, [p.run_id for p in x.points] == [smoke.name]) for x in both) == [
        (False, False),
        (True, True),
    ]


def test_csv_holds_one_row_per_run_and_headline(history, tmp_path):
    data, drop, fwd, nat, worker = history
    out, target = [], tmp_path / "trend.csv"
    assert trend.main(csv=target, data_dir=data, out=out.append) == 0
    t = pd.read_csv(target)
    assert list(t.columns) == trend.CSV_COLUMNS
    assert len(t) == 2 * (8 + 6 + 4) + 2  # two headlines per experiment and run, and the worker's run
    cpu = t[(t["headline"] == "xdp_native/iptables_raw CPU") & (t["testbed"].str.startswith("namespace"))]
    assert cpu["run"].tolist() == [p.name for p in drop] and cpu["value"].round(6).tolist() == [0.24] * 4 + [0.31] * 4
    assert (
        cpu["verdict"].tolist() == ["baseline"] * 4 + ["regression"] * 4 and cpu["group"].tolist() == [1] * 4 + [2] * 4
    )
    assert set(cpu["better"]) == {"lower"} and cpu["commit"].tolist()[-1] == "bbbb111111"
    assert cpu["kernel"].tolist()[-1] == "6.2.0-b" and (cpu["trials"] == 3).all()
    assert (cpu["min"] < cpu["value"]).all() and (cpu["value"] < cpu["max"]).all()
    assert t["testbed"].nunique() == 2
    text = "\n".join(out)
    assert f"regression at run {drop[4].name}" in text and f"{len(t)} rows written to {target}" in text


def labkit_trend(args, data):
    env = dict(os.environ, LABKIT_DATA_DIR=str(data))
    return subprocess.run(
        [sys.executable, "-m", "labkit", "trend", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_labkit_trend_prints_the_lines_writes_the_csv_and_refuses_bad_arguments(history, tmp_path):
    data = history[0]
    cp = labkit_trend(["--csv", str(tmp_path / "t.csv"), "--experiment", "l2fwd"], data)
    assert cp.returncode == 0, cp.stderr
    assert "02 xdp_redirect/bridge rate: progression at run" in cp.stdout and "01 " not in cp.stdout
    assert set(pd.read_csv(tmp_path / "t.csv")["experiment"]) == {"l2fwd"}
    cp = labkit_trend(["-o", str(tmp_path / "o.csv")], data)
    assert cp.returncode == 0 and (tmp_path / "o.csv").exists()
    for args, hint in (
        (
            ["--experiment", "nosuch"],
            "experiment 'nosuch' has no headline followed over time: choose from ['xdp_drop', 'l2fwd', 'nat']",
        ),
        (["--csv", str(tmp_path / "no" / "t.csv")], "does not exist; create it or write elsewhere"),
        (["--csv", str(tmp_path)], "is a directory; give a file name"),
        (["--testbed", "nosuch"], "matches no testbed with runs in"),
    ):
        cp = labkit_trend(args, data)
        assert cp.returncode == 2 and hint in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert "Traceback" not in cp.stderr and not cp.stdout


def test_index_shows_every_headline_of_this_testbed_with_its_verdict_and_plot(history):
    data, drop, fwd, nat, worker = history
    out = data.parent / "reports"
    page = index.write_index([], out, data).read_text()
    trend_part = page[page.index('<h2 id="trend">') :]
    assert 'href="trend.csv"' in trend_part and (out / "trend.csv").exists()
    for label in (
        "01 xdp_native/iptables_raw CPU",
        "01 xdp_native/iptables_raw rate",
        "02 xdp_redirect/bridge rate",
        "02 xdp_redirect/bridge CPU",
        "03 xdp_nat/iptables rate",
    ):
        assert f"<td>{label}</td>" in trend_part
    assert f"regression at {drop[4].name}: 0.24 → 0.31" in trend_part  # jumpavg's verdict beside the figure
    assert f"01 xdp_native/iptables_raw CPU: regression at run {drop[4].name}" in trend_part
    assert trend_part.count('<img src="data:image/png;base64,') == 5  # a plot per measured headline here
    # the other testbed: its own lines, no plot, never in this testbed's table
    others = trend_part[trend_part.index("Other testbeds, each over its own runs") :]
    assert "Dask worker tb2 on lab2" in others and "0.9" in others and "<img" not in others
    # a regression is a warning of the page
    warnings = page[page.index('<h2 id="warnings">') : page.index('<h2 id="notebooks">')]
    assert f"xdp_native/iptables_raw CPU: regression at run {drop[4].name}" in warnings


@needs_root
def test_two_real_smoke_runs_make_a_series(tmp_path):
    """Two smoke runs of the drop experiment (the headline's two variants only), then the
    series, its values read back from each run's own rows, jumpavg's verdict and the index."""
    from labkit.experiments import xdp_drop

    data = tmp_path / "data"
    quick = dict(
        smoke=True,
        variants=["xdp_native", "iptables_raw"],
        latency=False,
        cost_trials=0,
        sweep_steps=0,
        loss_thresholds=[],
        cpu_loads=[],
        progress=False,
        data_dir=data,
    )
    runs = [xdp_drop.run(**quick).run_dir for _ in range(2)]
    series = trend.collect(data)
    assert {s.testbed for s in series} == {f"namespace testbed on {os.uname().nodename}"} and all(
        s.smoke for s in series
    )
    for s in series:
        assert [p.run_id for p in s.points] == [r.name for r in runs]
        m = "cpu_ns_per_pkt" if s.headline.measure == "cpu" else "processed_pps"
        for p, r in zip(s.points, runs):
            t = results.load_run(r).table
            t = t[(t["kind"] == "trial") & (t["measure"] == m)].set_index("variant")["value"]
            assert p.value == pytest.approx(t["xdp_native"] / t["iptables_raw"])
        first, second = (p.value for p in s.points)
        if len(s.groups) == 1:
            assert s.lines()[0].startswith(f"{s.headline.label()}: no change over 2 runs: ")
        else:  # jumpavg split the two: the direction says which word
            worse = second > first if s.headline.lower_is_better else second < first
            assert s.lines() == [
                f"{s.headline.label()}: {'regression' if worse else 'progression'} at "
                f"{s.points[1].where()}: {first:.3g} -> {second:.3g}"
            ]
    page = index.write_index([], tmp_path / "reports", data).read_text()
    part = page[page.index('<h2 id="trend">') :]
    assert part.count('<img src="data:image/png;base64,') == 2 and runs[1].name in part and "2 runs" in part
    assert "<td>01 xdp_native/iptables_raw CPU</td>" in part and "<td>01 xdp_native/iptables_raw rate</td>" in part
