"""Runs handed to someone else: `labkit export` packages a real smoke run of 01-xdp-drop as an
RO-Crate that the rocrate package reads back (every file described with its type and sha256,
the parameters as run, the environment lock); `labkit rerun` refuses a crate changed after
export, and otherwise runs the same notebook with the same parameters and compares the new
run with the packaged one, variant by variant. One smoke run is shared by the module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import needs_root

from labkit import cleanup, results
from labkit.errors import InputError
from labkit.reporting import batch, crate, crate_check, environment_lock

pytestmark = needs_root


#: the packaged run's parameters beside smoke: three variants, no sweep and no program costs (a faster
#: run, and parameters other than the defaults to travel through the crate)
PARAMETERS = {"variants": ["xdp_native", "tc", "iptables_raw"], "sweep_steps": 0, "cost_trials": 0}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run of 01-xdp-drop through `labkit run`'s batch, in folders of this module:
    (run folder, data folder, reports folder)."""
    base = tmp_path_factory.mktemp("crate")
    data, reports = base / "data", base / "reports"
    done = batch.run_all(["01-xdp-drop"], PARAMETERS, reports, data, smoke=True, progress=False, log=lambda *a: None)
    assert done[0].ok, done[0].error
    (run,) = done[0].runs
    return Path(run), data, reports


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    run, data, reports = smoke_run
    out = tmp_path_factory.mktemp("export") / "drop.zip"
    return crate.export([run.name[-6:]], out, data_dir=data, reports_dir=reports)


def labkit(args, data: Path, reports: Path, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`labkit ARGS` as a person types it, with its data, reports and run registry in the folders given."""
    env = dict(os.environ, LABKIT_DATA_DIR=str(data), LABKIT_REPORTS_DIR=str(reports), LABKIT_RUNTIME_DIR=str(tmp))
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_crate_reads_back_with_rocrate(smoke_run, exported):
    from rocrate.rocrate import ROCrate

    run, _, _ = smoke_run
    packaged = ROCrate(exported.path)
    files = {e.id: e for e in packaged.data_entities if e.type == "File"}
    prefix = f"runs/{run.name}/"
    for name in ("results.csv", "metadata.json", "parameters.json", "01-xdp-drop.ipynb", "01-xdp-drop.html"):
        assert prefix + name in files, f"{name} not in the crate: {sorted(files)}"
    assert {crate.LOCK, crate.FREEZE} <= set(files)
    with zipfile.ZipFile(exported.path) as zf:
        assert sorted(files) == sorted(n for n in zf.namelist() if n != crate.METADATA)
        for rel, entity in files.items():  # every file: its sha256, size and type in the metadata
            data = zf.read(rel)
            assert entity["sha256"] == hashlib.sha256(data).hexdigest(), rel
            assert int(entity["contentSize"]) == len(data), rel
            assert entity["encodingFormat"] == crate.TYPES[Path(rel).suffix], rel
        assert zf.read(prefix + "results.csv") == (run / "results.csv").read_bytes()
        params = json.loads(zf.read(prefix + "parameters.json"))
        lock = json.loads(zf.read(crate.LOCK))
        freeze = zf.read(crate.FREEZE).decode()
    # the parameters exactly as papermill gave them: a smoke run
    assert params["notebook"] == "01-xdp-drop" and params["parameters"] == dict(PARAMETERS, smoke=True, progress=False)
    assert params["parameters_from"] == "the executed notebook's papermill record"
    # and every parameter the run recorded, defaults included, which a rerun holds to
    assert params["recorded"] == json.loads((run / "metadata.json").read_text())["parameters"]
    action = packaged.get(f"#run-{run.name}")
    assert action.type == "CreateAction" and action["result"].id == prefix
    given = {p["name"]: json.loads(p["value"]) for p in action["object"] if p.type == "PropertyValue"}
    assert given == params["parameters"]
    assert packaged.get("#labkit").type == "SoftwareApplication"
    # the environment lock: Python packages as pip froze them, Debian packages, kernel, commit
    assert "rocrate==0.16.0" in freeze and lock["python_packages"]["rocrate"] == "0.16.0"
    assert set(lock["debian_packages"]) == set(environment_lock.DEBIAN_PACKAGES)
    assert lock["debian_packages"]["iproute2"]  # installed on every machine labkit runs on
    assert lock["kernel"]["release"] == os.uname().release
    config = lock["kernel"]["config"]
    assert config["sha256"] or "no kernel configuration readable" in config["note"]
    assert len(lock["labkit"]["commit"]) == 40 and isinstance(lock["labkit"]["dirty"], bool)
    assert not exported.notes  # the executed notebook and HTML were there


def test_export_refuses_unknown_run_missing_output_and_overwriting(smoke_run, exported, tmp_path):
    run, data, reports = smoke_run
    with pytest.raises(InputError, match="no runs match"):
        crate.export(["lk0000"], tmp_path / "x.zip", data_dir=data, reports_dir=reports)
    with pytest.raises(InputError, match="-o FILE.zip"):
        crate.export([run.name], None, data_dir=data, reports_dir=reports)
    with pytest.raises(InputError, match="exists; choose another name, or --force"):
        crate.export([run.name], exported.path, data_dir=data, reports_dir=reports)
    assert not list(tmp_path.iterdir())  # nothing was written
    # the command says the same on one line, exit code 2
    for args, said in (
        (["export", "lk0000", "-o", str(tmp_path / "x.zip")], "no runs match"),
        (["export", run.name], "-o FILE.zip"),
        (["export", run.name, "-o", str(exported.path)], "--force to overwrite it"),
    ):
        cp = labkit(args, data, reports, tmp_path)
        assert cp.returncode == 2 and said in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    forced = tmp_path / "again.zip"
    forced.write_text("old")
    cp = labkit(["export", run.name, "-o", str(forced), "--force"], data, reports, tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert zipfile.is_zipfile(forced) and "runs/" in cp.stdout


def _rewrite(src: Path, dst: Path, change: dict) -> None:
    """A copy of the zip SRC at DST with the members of CHANGE replaced (or added)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change.pop(name, None) or zin.read(name))
        for name, data in change.items():
            zout.writestr(name, data)


def test_a_tampered_crate_is_refused_before_anything_runs(smoke_run, exported, tmp_path):
    run, data, reports = smoke_run
    table = f"runs/{run.name}/results.csv"
    with zipfile.ZipFile(exported.path) as zf:
        rows = zf.read(table).decode().splitlines()
    tampered = tmp_path / "tampered.zip"
    _rewrite(exported.path, tampered, {table: "\n".join(rows[:-1]).encode()})  # one row less
    with pytest.raises(InputError, match=f"{table} was changed after export"):
        with crate_check.opened(tampered):
            pass
    extra = tmp_path / "extra.zip"
    _rewrite(exported.path, extra, {f"runs/{run.name}/notes.txt": b"added later"})
    with pytest.raises(InputError, match="which its ro-crate-metadata.json does not describe"):
        with crate_check.opened(extra):
            pass
    before = set(results.list_runs(None, data))
    cp = labkit(["rerun", str(tampered)], data, reports, tmp_path)
    assert cp.returncode == 2 and "was changed after export" in cp.stderr, cp.stderr
    assert set(results.list_runs(None, data)) == before  # nothing ran
    cp = labkit(["rerun", str(tmp_path / "nosuch.zip")], data, reports, tmp_path)
    assert cp.returncode == 2 and "no such file" in cp.stderr


def test_rerun_reproduces_every_variant_and_says_what_differs(smoke_run, exported, tmp_path):
    """The rerun goes through `labkit run`'s batch into its own folders: the same notebook,
    the same (smoke) parameters, the same variants; the comparison names them."""
    run, _, _ = smoke_run
    data, reports = tmp_path / "data", tmp_path / "reports"
    cp = labkit(["rerun", str(exported.path), "--no-progress"], data, reports, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    packaged = results.load_run(run)
    (new_dir,) = results.list_runs("xdp_drop", data)
    new = results.load_run(new_dir)
    assert new.metadata["parameters"]["smoke"] is True  # the packaged run was a smoke run, so is this one
    assert {k: new.metadata["parameters"][k] for k in PARAMETERS} == PARAMETERS
    assert new.metadata["parameters"] == packaged.metadata["parameters"]  # defaults included
    variants = list(dict.fromkeys(packaged.table["variant"]))
    assert set(new.table["variant"]) >= set(variants)
    out = cp.stdout
    assert f"variants: {len(variants)} of {len(variants)} measured again ({', '.join(variants)})" in out, out
    assert f"{new_dir.name} vs {run.name}: " in out  # the comparison of the new run against the packaged one
    assert "environment: " in out and "every variant of every packaged run measured again" in out
    page = reports / "rerun-drop.html"
    assert page.is_file() and run.name in page.read_text() and new_dir.name in page.read_text()
    assert 'href="rerun-drop.html"' in (reports / "index.html").read_text()
    assert not [n for n in cleanup.labkit_namespaces() if new_dir.name[-6:] in n]


def test_dirty_tree_flag_and_environment_differences(tmp_path, smoke_run):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / "a.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "a.py"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    clean = environment_lock.git_state(repo)
    assert clean["dirty"] is False and clean["changes_sha256"] is None and len(clean["commit"]) == 40
    (repo / "a.py").write_text("x = 2\n")
    dirty = environment_lock.git_state(repo)
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"] and dirty["changes_sha256"]
    (repo / "a.py").write_text("x = 3\n")
    assert environment_lock.git_state(repo)["changes_sha256"] != dirty["changes_sha256"]
    assert environment_lock.git_state(tmp_path / "nogit")["dirty"] is None
    # a crate exported from a dirty tree says so, and a rerun from a clean one names it
    run, data, reports = smoke_run
    here = environment_lock.capture(freeze="rocrate==0.16.0\n")
    lock = dict(here, labkit=dirty)
    out = crate.export(
        [run.name], tmp_path / "dirty.zip", data_dir=data, reports_dir=reports, lock=lock, freeze="rocrate==0.16.0\n"
    )
    with crate_check.opened(out.path) as packaged:
        assert packaged.lock["labkit"]["dirty"] is True
        assert "with uncommitted changes" in packaged.crate.get("#labkit")["description"]
    there = dict(
        here,
        labkit=clean,
        kernel={"release": "6.1.0-9-amd64", "config": {"path": None, "sha256": None}},
        python_packages={"rocrate": "0.15.0", "hdrhistogram": "0.10.8"},
    )
    lines = environment_lock.differences(lock, there)
    assert "dirty tree: uncommitted changes packaged, clean here" in lines
    assert f"kernel: {here['kernel']['release']} packaged, 6.1.0-9-amd64 here" in lines
    assert any(line.startswith("kernel config: ") for line in lines) == bool(here["kernel"]["config"]["sha256"])
    assert "python package rocrate: 0.16.0 packaged, 0.15.0 here" in lines
    assert "python package hdrhistogram: not installed packaged, 0.10.8 here" in lines
    assert environment_lock.differences(lock, lock) == []
    # what a run recorded while it ran, where the lock (taken at export) does not say it already
    meta = {"git": {"commit": "a" * 40, "dirty": False}, "kernel": "5.15.0-1-amd64"}
    assert environment_lock.run_differences("lk0001", meta, lock, lock) == [
        f"commit: labkit aaaaaaaaaaaa when lk0001 ran, {dirty['commit'][:12]} here",
        "dirty tree: clean when lk0001 ran, uncommitted changes here",
        f"kernel: 5.15.0-1-amd64 when lk0001 ran, {here['kernel']['release']} here",
    ]
    assert environment_lock.run_differences("lk0001", {"git": dirty, "kernel": os.uname().release}, lock, lock) == []


def test_pip_freeze_lines_are_read_as_packages():
    freeze = (
        "numpy==2.4.6\n# Editable Git install with no remote (labkit==0.1.0)\n-e /work/main\n"
        "ruff @ file:///tmp/ruff-0.17.6.whl#sha256=aa\nMarkupSafe==3.0.3\n"
    )
    assert environment_lock.packages(freeze) == {
        "numpy": "2.4.6",
        "labkit": "editable /work/main",
        "ruff": "@ file:///tmp/ruff-0.17.6.whl#sha256=aa",
        "markupsafe": "3.0.3",
    }


def test_a_run_whose_notebook_was_replaced_is_exported_with_its_recorded_parameters(smoke_run, tmp_path):
    """A later batch of the same notebook replaced the executed copy: the crate still holds the
    table, metadata and the parameters the run recorded, and says what it lacks."""
    run, data, reports = smoke_run
    elsewhere = tmp_path / "reports"
    shutil.copytree(reports, elsewhere)
    (elsewhere / "01-xdp-drop.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    out = crate.export([str(run)], tmp_path / "bare.zip", data_dir=data, reports_dir=elsewhere)
    assert any("no executed notebook or HTML of this run" in n for n in out.notes)
    names = [f for f, _, _ in out.files]
    assert f"runs/{run.name}/results.csv" in names and f"runs/{run.name}/01-xdp-drop.ipynb" not in names
    with crate_check.opened(out.path) as packaged:
        (p,) = packaged.runs
        assert p.smoke and p.parameters["trials"] == 1 and p.parameters_from.startswith("the run's metadata")
        assert p.parameters["variants"] == PARAMETERS["variants"]


def test_facilities_refused_for_the_packaged_runs_are_refused_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from labkit.reporting import rerun

    (tmp_path / "metadata.json").write_text(json.dumps({"facilities": {"refused_by_env": "live_frames"}}))
    packaged = SimpleNamespace(runs=[SimpleNamespace(folder=tmp_path)])
    monkeypatch.delenv("LABKIT_REFUSE", raising=False)
    with rerun.refusing(packaged) as lines:
        assert os.environ["LABKIT_REFUSE"] == "live_frames"
        assert lines == [
            "refused facilities (LABKIT_REFUSE): live_frames packaged, none here; the rerun refuses live_frames"
        ]
    assert "LABKIT_REFUSE" not in os.environ
    monkeypatch.setenv("LABKIT_REFUSE", "live_frames")
    with rerun.refusing(packaged) as lines:
        assert os.environ["LABKIT_REFUSE"] == "live_frames" and lines == []


def test_the_index_links_a_crate_of_each_run_of_its_batch(smoke_run):
    """`labkit run` and `report` leave a crate of each run beside the index, written while the
    executed notebook is there, and the index links it; a run without one shows the command."""
    run, _, reports = smoke_run
    zipped = reports / crate.CRATES / f"{run.name}.zip"
    assert f'href="crates/{run.name}.zip"' in (reports / "index.html").read_text()
    with crate_check.opened(zipped) as packaged:
        (p,) = packaged.runs
        assert p.run_id == run.name and p.executed is not None and p.html is not None and p.smoke
    assert crate.export_link("20261205T000000Z-lk0000", reports) == (
        "export: <code>labkit export 20261205T000000Z-lk0000 -o 20261205T000000Z-lk0000.zip</code>"
    )
