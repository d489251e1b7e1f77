"""Result files: tidy rows, metadata with the fields a reader needs, never overwritten, and
older formats still load."""

import json

import pytest

from labkit import results


def test_save_writes_table_and_metadata_and_never_overwrites(tmp_path):
    rs = results.ResultSet("demo", {"sizes": [64]}, "lkabcd", data_dir=tmp_path)
    rs.add("xdp", 0, 64, {"processed_pps": (1e6, "pps"), "cpu_ns_per_pkt": (100.0, "ns/packet")}, ["generator-limited"])
    rs.caveat("a caveat")
    path = rs.save()
    table = results.load_run(path).table
    assert list(table.columns[: len(results.COLUMNS)]) == results.COLUMNS
    assert len(table) == 2 and set(table["measure"]) == {"processed_pps", "cpu_ns_per_pkt"}
    meta = json.loads((path / "metadata.json").read_text())
    for key in (
        "format_version",
        "time_utc",
        "kernel",
        "cpu_model",
        "cpus",
        "git",
        "versions",
        "parameters",
        "caveats",
    ):
        assert key in meta, key
    assert meta["parameters"] == {"sizes": [64]} and meta["caveats"] == ["a caveat"]
    with pytest.raises(FileExistsError):
        rs.save()


def test_loader_reads_an_older_format_and_refuses_a_newer_one(tmp_path):
    run = tmp_path / "demo" / "20200101T000000Z-lk0001"
    run.mkdir(parents=True)
    (run / "results.csv").write_text(
        "experiment,run_id,trial,variant,size,measure,value,unit\ndemo,x,0,xdp,64,processed_pps,5,pps\n"
    )
    (run / "metadata.json").write_text(json.dumps({"format_version": 1, "kernel": "k"}))
    all_runs = results.load_runs("demo", data_dir=tmp_path)
    assert all_runs["flags"].tolist() == [""] and all_runs["kernel"].tolist() == ["k"]
    (run / "metadata.json").write_text(json.dumps({"format_version": results.FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="newer"):
        results.load_run(run)


def test_summary_reports_spread():
    import pandas as pd

    t = pd.DataFrame([{"variant": "a", "size": 64, "measure": "m", "value": v} for v in (1.0, 2.0, 3.0)])
    s = results.summarize(t)
    row = s.iloc[0]
    assert (row["mean"], row["min"], row["max"], row["count"]) == (2.0, 1.0, 3.0, 3)
    assert row["spread_pct"] == pytest.approx(100.0)
