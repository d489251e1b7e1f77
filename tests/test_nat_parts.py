"""03-ebpf-nat where live frames are refused, and with each optional part switched off.

One real notebook run, headless, with LABKIT_REFUSE=live_frames (as on a machine that
refuses BPF_PROG_RUN's live frames): `auto` must pick a generator without them, feed the
many-flow sweep and the new flows with it, record which backend served what, and the
notebook must end with the correctness checks switched off. Then each optional part is
taken out of that run's own table in turn, and the interpretation, the headline and every
cell of the notebook after the run are fed with what remains: they must say the part is
not measured, in one line, and show the rest."""

from __future__ import annotations

import json
import os

import pytest
from conftest import needs_root

from labkit import results
from labkit.experiments import Result, nat
from labkit.experiments.nat import sweep
from labkit.reporting import batch

pytestmark = needs_root

#: the smallest run that still has every part but the checks: two variants, one trial,
#: new flows and a sweep point beyond one byte of the source port (1024 flows)
SMALL = {
    "smoke": True,
    "variants": ["tc_nat", "iptables"],
    "trials": 1,
    "udp_count": 20_000,
    "new_flows": 1000,
    "udp_sizes": [64],
    "flow_counts": [1, 1024],
    "sweep_count": 5000,
    "tcp_seconds": 1.0,
    "tcp_streams": 2,
    "checks": False,
    "progress": False,
}
#: each optional part, switched off by its documented value
OFF = {
    "correctness checks": {"checks": False},
    "new flows": {"new_flows": 0},
    "TCP with many connections": {"tcp_streams": 0},
    "UDP sweep by frame size": {"udp_sizes": []},
    "UDP sweep by flow count": {"flow_counts": []},
    "programs' own time": {"prog_stats": False},
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """The notebook run with live frames refused: (its batch record, its data/ run)."""
    out = tmp_path_factory.mktemp("nat-refused")
    saved = os.environ.get("LABKIT_REFUSE")
    os.environ["LABKIT_REFUSE"] = "live_frames"  # the notebook's kernel inherits it
    try:
        done = batch.execute(
            batch.notebooks(["03-ebpf-nat"])[0], SMALL, out_dir=out, data_dir=out / "data", progress=False
        )
    finally:
        if saved is None:
            os.environ.pop("LABKIT_REFUSE")
        else:
            os.environ["LABKIT_REFUSE"] = saved
    assert done.ok, done.error
    assert len(done.runs) == 1, done.runs
    return done, results.load_run(done.runs[0])


def test_live_frames_refused_the_notebook_runs_to_the_end_on_another_generator(refused):
    done, run = refused
    choices = run.metadata["facilities"]["choices"]
    served = {
        purpose: c["backend"] for purpose, c in choices.items() if purpose in (nat.UDP_LOAD, "new flows", sweep.PURPOSE)
    }
    assert set(served) == {nat.UDP_LOAD, "new flows", sweep.PURPOSE}, choices
    assert "xdp" not in served.values()  # the refused backend served nothing
    assert run.metadata["facilities"]["probes"]["live_frames"]["ok"] is False
    assert run.metadata["generator"] == served[nat.UDP_LOAD]
    t = run.table
    # every part but the checks measured, the new flows and the 1024-flow point included
    assert {"udp", "tcp", "newflow", "tcp_streams", "udp_sweep", "prog"} <= set(t["kind"])
    new = t[(t["kind"] == "newflow") & (t["measure"] == "processed_pps")]
    assert set(new["variant"]) == set(SMALL["variants"]) and (new["value"] > 0).all()
    setup = t[(t["kind"] == "udp_sweep") & (t["measure"] == "flows_set_up") & (t["variant"] == "tc_nat")]
    assert setup.set_index("flows")["value"].to_dict() == {1: 1, 16: 16, 1024: 1024}  # each port a flow
    html = done.html.read_text()
    assert f"Fed by the {served[nat.UDP_LOAD]} generator" in html
    assert f"new flows: {served['new flows']}" in html
    assert "correctness checks: not measured (checks = False)" in html  # the interpretation's line
    assert "Not measured in this run: correctness checks (checks = False)" in html  # the checks' cells


def _without(run, part: str):
    """RUN's table, checks and metadata as if PART had been switched off."""
    import pandas as pd

    table = run.table
    goal_flows = table[table["kind"] == "udp"]["flows"].iloc[0]  # not among SMALL's flow_counts
    sweep_rows = table["kind"] == "udp_sweep"
    drop = {
        "UDP sweep by frame size": sweep_rows & (table["flows"] == goal_flows),  # the points at udp_sizes
        "UDP sweep by flow count": sweep_rows & (table["flows"] != goal_flows),
    }.get(part)
    drop = table["kind"] == nat.PARTS[part] if drop is None else drop
    skipped = {part: nat.switched_off(nat.Params(**{**SMALL, **OFF[part]}).validate())[part]}
    meta = {**run.metadata, "skipped_parts": skipped}
    return table[~drop], pd.DataFrame(columns=["variant", "check", "ok", "detail", "offloads"]), meta, skipped


@pytest.mark.parametrize("part", list(OFF))
def test_each_part_off_is_said_in_one_line_and_the_rest_reads(refused, part):
    """PART taken out of a real run's table: interpretation, headline and the notebook's cells
    after the run all work, say the part was not measured, and still show the UDP trial."""
    _, run = refused
    table, checks, meta, skipped = _without(run, part)
    text = nat.interpret(table, checks, meta=meta)
    assert text.splitlines()[0].count(f"{part}: not measured ({skipped[part]})") == 1, text
    assert "Small-packet UDP (tc_nat)" in text
    head = nat.headline(table)
    assert list(head["variant"]) == SMALL["variants"] and (head["UDP Mpps"] > 0).all()
    assert (head["new flows k/s"] == "not run").all() == (part == "new flows")
    result = Result(
        nat.EXPERIMENT,
        table,
        text,
        [],
        run.path,
        None,
        nat.parts(table, checks, checks.iloc[0:0], skipped),
        headline_of=nat.headline,
    )
    assert len(result.part(nat.PARTS[part])) == len(table[table["kind"] == nat.PARTS[part]])  # never a KeyError
    printed = _notebook_cells_after_the_run(result)
    assert f"Not measured in this run: {part} ({skipped[part]})" in printed


def _notebook_cells_after_the_run(result) -> str:
    """Run the notebook's code cells after its run cell on RESULT (plots to a non-interactive
    backend); what they print."""
    import contextlib
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import display

    from labkit.reporting import plots

    cells = json.loads(batch.notebooks(["03-ebpf-nat"])[0].read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    params = {}
    exec(code[0], params)  # the parameters cell: the defaults the cells read (udp_flows, ...)
    ns = {**params, "result": result, "nat_experiment": nat, "plots": plots, "display": display, "interactive": False}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in code[2:]:  # after the parameters and the run
            exec(source, ns)
            plt.close("all")
    return out.getvalue()


def test_every_part_off_at_once_the_notebook_runs_through(tmp_path):
    """The issue's run (`-p generator trafgen -p new_flows 0 -p flow_counts '[]' -p udp_sizes '[]'`),
    with the checks, the many-connections TCP and the programs' time off too: the UDP and TCP
    trials alone, every other cell saying in one line what was switched off."""
    off = {k: v for part in OFF.values() for k, v in part.items()}
    done = batch.execute(
        batch.notebooks(["03-ebpf-nat"])[0],
        {**SMALL, **off, "generator": "trafgen"},
        out_dir=tmp_path,
        data_dir=tmp_path / "data",
        progress=False,
    )
    assert done.ok, done.error
    run = results.load_run(done.runs[0])
    assert set(run.table["kind"]) == {"udp", "tcp"}
    assert set(run.metadata["skipped_parts"]) == set(OFF)
    html = done.html.read_text()
    for part in OFF:
        assert f"Not measured in this run: {part}" in html, part
        assert f"{part}: not measured" in html, part


def test_skipped_parts_names_each_part_off_by_its_documented_value():
    for part, off in OFF.items():
        p = nat.Params(**{**SMALL, "checks": True, **off}).validate()
        skipped = {**nat.switched_off(p), **nat.cannot_run(p)}
        assert part in skipped and all(k in nat.PARTS for k in skipped), part
    p = nat.Params(**{**SMALL, "variants": ["routing", "iptables"]}).validate()
    assert "no eBPF NAT variant" in nat.cannot_run(p)["programs' own time"]
