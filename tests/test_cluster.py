"""Notebook runs farmed out with Dask distributed, for real: a local cluster of
single-threaded workers, one per namespace testbed, each offering its testbed as a
resource. Everything is written to temporary folders; the workers are gone afterwards."""

from __future__ import annotations

import json
import os
import time

import pytest

from labkit.errors import InputError

distributed = pytest.importorskip("distributed")
from labkit.reporting import cluster  # noqa: E402


@pytest.fixture(scope="module")
def client():
    if os.geteuid() != 0:
        pytest.skip("needs root: the notebooks' experiments build testbeds")
    local = cluster.local_cluster(2)
    c = distributed.Client(local)
    c.wait_for_workers(2, timeout=120)
    pids = list(c.run(os.getpid).values())
    yield c
    c.close()
    local.close()
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids), "a Dask worker outlived its cluster"


def occupy(seconds: float) -> tuple:
    """A stand-in for a notebook run: which testbed's worker ran it, and when."""
    start = time.time()
    time.sleep(seconds)
    return distributed.get_worker().name, start, time.time()


def test_a_testbed_never_runs_two_things_at_once(client):
    futures = [client.submit(occupy, 0.3, resources={cluster.RESOURCE: 1}, pure=False) for _ in range(6)]
    done = client.gather(futures)
    by_testbed = {}
    for name, start, end in done:
        by_testbed.setdefault(name, []).append((start, end))
    assert set(by_testbed) <= {"tb1", "tb2"}
    for name, spans in by_testbed.items():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), (
            f"testbed {name} ran two at once: {spans}"
        )
    only = client.gather([client.submit(occupy, 0, resources={"testbed-tb2": 1}, pure=False) for _ in range(3)])
    assert {name for name, _, _ in only} == {"tb2"}, "a run for one testbed goes to that testbed's worker"


def test_a_testbed_nobody_offers_is_refused_before_submitting(client, tmp_path):
    with pytest.raises(InputError, match=r"no worker of the cluster offers \['testbed-lab9'\].*offered: .*testbed-tb1"):
        cluster.run_all(
            ["01-xdp-drop"],
            {},
            tmp_path / "reports",
            tmp_path / "data",
            testbed="lab9",
            smoke=True,
            client=client,
            log=lambda m: None,
        )
    assert not (tmp_path / "reports").exists() and not (tmp_path / "data").exists()


def test_two_notebooks_on_two_testbeds_come_back_here(client, tmp_path):
    reports, data = tmp_path / "reports", tmp_path / "data"
    done = cluster.run_all(
        ["01-xdp-drop", "04-comparison"], {}, reports, data, smoke=True, client=client, log=lambda m: None
    )
    assert [r.name for r in done] == ["01-xdp-drop", "04-comparison"]
    assert all(r.ok for r in done), [r.error for r in done]
    assert {r.testbed for r in done} == {"tb1", "tb2"}, "two testbeds, one notebook each"
    for r in done:
        assert r.executed.parent == reports and r.executed.exists() and r.html.exists()
    drop = done[0]
    assert drop.runs and all(p.parent.parent == data for p in drop.runs)
    meta = json.loads((drop.runs[0] / "metadata.json").read_text())
    assert meta["testbed"] == drop.testbed and meta["notebook"] == "01-xdp-drop"
    assert (drop.runs[0] / "results.csv").exists()
    batch = json.loads((reports / "batch.json").read_text())
    assert {e["name"] for e in batch["notebooks"]} == {"01-xdp-drop", "04-comparison"}
    assert (reports / "index.html").exists()


def test_the_command_line_names_a_missing_scheduler(tmp_path, capsys):
    from labkit import cli

    assert cli.main(["run", "01-xdp-drop", "--smoke", "--scheduler-file", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert f"scheduler file {tmp_path / 'none.json'} does not exist" in err and "dask scheduler --scheduler-file" in err
