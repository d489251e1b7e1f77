"""Runs packaged so that anyone can run them again: `labkit export RUN... -o FILE.zip` writes an
RO-Crate (https://w3id.org/ro/crate, with the `rocrate` package), and `labkit rerun FILE.zip`
(`reporting.rerun`) runs it again here.

    exported = crate.export(["lk3a1d"], "run.zip")   # run ids (or their unique start) or run folders
    exported.path, exported.bytes, exported.files, exported.notes
    crate.for_batch(done, reports_dir)              # reports/crates/<run id>.zip of a batch's runs

`reporting.crate_check` reads a crate back, checked against its checksums.

A crate holds, per run, its folder `runs/<run id>/`: the tidy table and metadata from data/,
the executed notebook and its HTML from reports/ (where reports/ still holds this run's: a
later batch of the same notebook replaces them, and the crate then says so), and
`parameters.json`, the notebook and the parameters papermill gave it (read from the executed
notebook's own papermill record; without it, the run's recorded parameters the notebook
declares), and every parameter the run recorded, defaults included (`recorded`). Beside them `environment/`: `pip-freeze.txt` and `lock.json`
(`reporting.environment_lock`: Debian packages, kernel release and configuration hash,
labkit's commit and whether its tree was dirty). `ro-crate-metadata.json` describes every
file with its type (`encodingFormat`), size and sha256, each run as a `CreateAction` of
labkit with its parameters as `PropertyValue`s and its folder as result.

`labkit report` and `labkit run` write a crate of each run they make into reports/crates/
(`for_batch`, called by the index, which links it): about 1 MB and one second for a full
run of 01-xdp-drop, written while reports/ holds that run's executed notebook and with the
environment as it was while it ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit import __version__
from labkit.errors import InputError
from labkit.reporting import batchfile, environment_lock

METADATA = "ro-crate-metadata.json"
LOCK = "environment/lock.json"
FREEZE = "environment/pip-freeze.txt"
TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".ipynb": "application/x-ipynb+json",
    ".html": "text/html",
    ".txt": "text/plain",
    ".pcap": "application/vnd.tcpdump.pcap",
}
DESCRIPTIONS = {
    "results.csv": "the run's tidy table: one row per trial, variant, size and measure (docs/results-format.md)",
    "metadata.json": "the run's metadata: when, where, how, parameters, caveats",
    "parameters.json": "the notebook and the parameters papermill gave it, for `labkit rerun`",
}


@dataclass
class PackagedRun:
    """One run in a crate: where its files are (once extracted) and how to run it again."""

    run_id: str
    experiment: str
    notebook: str
    parameters: dict
    parameters_from: str
    folder: Path  # runs/<run id>/ of the crate (extracted), or the run's data/ folder while exporting
    executed: Path | None = None
    html: Path | None = None
    recorded: dict = field(default_factory=dict)  # the parameters the run itself recorded (defaults included)

    @property
    def smoke(self) -> bool:
        return bool(self.parameters.get("smoke"))


@dataclass
class Exported:
    path: Path
    bytes: int
    files: list  # (path in the crate, bytes, encodingFormat)
    notes: list = field(default_factory=list)  # what the crate lacks, and why


# ---------------------------------------------------------------- finding what a run left
def _declaration(meta: dict, experiment: str):
    """(notebook, the names of its experiment's Params or None) that ran EXPERIMENT: the
    notebook the run recorded, else the one its experiment module names."""
    from labkit import experiments, parameters

    modules = [m for m in experiments.declared() if m.EXPERIMENT == experiment]
    stem = meta.get("notebook") or (modules[0].NOTEBOOK if modules else None)
    params = next(
        (m.Params for m in modules if m.NOTEBOOK == stem and isinstance(getattr(m, "Params", None), type)), None
    )
    return stem, (set(parameters.declared(params)) if params is not None else None)


def _executed_copy(run_dir: Path, stem: str, reports_dir: Path, batch=()):
    """(executed notebook, HTML) of the entry of notebook STEM that wrote RUN_DIR, among BATCH
    (NotebookRuns of a batch not yet in batch.json) and REPORTS_DIR's batch.json, and only if
    the executed copy names the run; (None, None) otherwise."""
    given = [
        {"name": r.name, "runs": r.runs, "executed": r.executed.name, "html": r.html and r.html.name} for r in batch
    ]
    for entry in given + batchfile.read(reports_dir):
        if entry.get("name") != stem or run_dir.name not in {Path(p).name for p in entry.get("runs") or ()}:
            continue
        executed = reports_dir / (entry.get("executed") or f"{stem}.ipynb")
        if executed.is_file() and run_dir.name in executed.read_text(errors="replace"):
            html = reports_dir / (entry.get("html") or "")
            return executed, html if entry.get("html") and html.is_file() else None
    return None, None


def _packaged_run(run, reports_dir: Path, batch=()) -> tuple[PackagedRun, list]:
    meta = run.metadata
    experiment = meta.get("experiment") or run.path.parent.name
    stem, declared = _declaration(meta, experiment)
    if stem is None:
        raise InputError(f"run {run.path.name}: no notebook runs experiment {experiment!r}, so it cannot be run again")
    notes = []
    executed, html = _executed_copy(run.path, stem, reports_dir, batch)
    if executed is not None:
        papermill = json.loads(executed.read_text()).get("metadata", {}).get("papermill", {})
        params, source = dict(papermill.get("parameters") or {}), "the executed notebook's papermill record"
    else:
        params = {k: v for k, v in (meta.get("parameters") or {}).items() if k in (declared or ())}
        source = "the run's metadata (its executed notebook was not in reports/)"
        notes.append(
            f"{run.path.name}: no executed notebook or HTML of this run in {reports_dir} (a later run of "
            f"{stem} replaced them); the crate holds its table, metadata and recorded parameters"
        )
    recorded = {k: v for k, v in (meta.get("parameters") or {}).items() if k in (declared or ())}
    return PackagedRun(run.path.name, experiment, stem, params, source, run.path, executed, html, recorded), notes


# ---------------------------------------------------------------- writing
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file(crate, source: Path, dest: str, description: str):
    props = {
        "name": Path(dest).name,
        "description": description,
        "sha256": sha256(source),
        "contentSize": str(source.stat().st_size),
        "encodingFormat": TYPES.get(source.suffix, "application/octet-stream"),
    }
    return crate.add_file(source=source, dest_path=dest, properties=props)


def _check_output(out, force: bool) -> Path:
    if not out:
        raise InputError("say where to write the crate: -o FILE.zip")
    out = Path(out)
    if out.suffix != ".zip":
        raise InputError(f"{out}: a crate is a zip file; give a name ending in .zip")
    if out.is_dir():
        raise InputError(f"{out} is a folder; give a file name ending in .zip")
    if out.exists() and not force:
        raise InputError(f"{out} exists; choose another name, or --force to overwrite it")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent} does not exist; create it first or write the crate elsewhere")
    return out


def export(
    runs,
    out,
    force: bool = False,
    data_dir: Path | None = None,
    reports_dir: Path | None = None,
    lock: dict | None = None,
    freeze: str | None = None,
    batch=(),
) -> Exported:
    """Write RUNS (run ids, their unique start, or run folders) as one RO-Crate zip at OUT.
    Refuses an unknown run, a missing or existing OUT (unless FORCE) before writing anything.
    LOCK and FREEZE: an environment already captured (default: this machine, now). BATCH: the
    NotebookRuns of a batch whose batch.json is not written yet (`for_batch`)."""
    from rocrate.rocrate import ROCrate

    from labkit import REPORTS_DIR
    from labkit.reporting import compare

    out = _check_output(out, force)
    if not runs:
        raise InputError("name at least one run to export (a run id such as 20261125T170519Z-lk3a1d, or lk3a1d)")
    found = {}
    for r in runs:
        run = compare.find_run(r, data_dir)
        found.setdefault(run.path.name, run)
    reports_dir = Path(reports_dir or REPORTS_DIR)
    packaged, notes = [], []
    for run in found.values():
        p, n = _packaged_run(run, reports_dir, batch)
        packaged.append(p)
        notes += n
    freeze = environment_lock.pip_freeze() if freeze is None else freeze
    lock = lock or environment_lock.capture(freeze)
    git = lock.get("labkit") or {}
    for p in packaged:
        measured = found[p.run_id].metadata.get("git")
        if isinstance(measured, dict) and (measured.get("commit"), measured.get("dirty")) != (
            git.get("commit"),
            git.get("dirty"),
        ):
            notes.append(
                f"{p.run_id} was measured at commit {str(measured.get('commit'))[:12]}"
                f"{' (dirty)' if measured.get('dirty') else ''}; the environment lock records "
                f"{str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}, checked out now"
            )

    crate = ROCrate()
    names = ", ".join(f"{p.notebook} ({p.run_id})" for p in packaged)
    crate.name = f"labkit runs: {names}"
    crate.description = (
        "Runs of labkit experiments, packaged to be run again: `labkit rerun` on this zip runs the "
        "same notebooks with the same parameters and compares the new runs with these."
    )
    crate.datePublished = lock.get("captured_utc")
    labkit_id = "#labkit"
    state = "with uncommitted changes" if git.get("dirty") else "clean tree" if git.get("dirty") is False else "no git"
    crate.add_jsonld(
        {
            "@id": labkit_id,
            "@type": "SoftwareApplication",
            "name": "labkit",
            "version": __version__,
            "softwareVersion": str(git.get("commit")),
            "description": f"the workbench, at commit {git.get('commit')} ({state}) when these runs were exported; "
            "each run's folder names the commit it was measured at",
        }
    )
    with tempfile.TemporaryDirectory(prefix="labkit-crate-") as tmp:
        tmp = Path(tmp)
        (tmp / "lock.json").write_text(json.dumps(lock, indent=2, sort_keys=True))
        (tmp / "pip-freeze.txt").write_text(freeze)
        env = [
            _file(
                crate,
                tmp / "lock.json",
                LOCK,
                "the environment: Python and Debian packages, kernel release "
                "and configuration hash, labkit's commit and dirty flag (reporting.environment_lock)",
            ),
            _file(
                crate, tmp / "pip-freeze.txt", FREEZE, "pip freeze of the Python environment that exported these runs"
            ),
        ]
        actions = []
        for p in packaged:
            actions.append(_add_run(crate, p, tmp, labkit_id, found[p.run_id].metadata, env))
        crate.root_dataset["mentions"] = [{"@id": a} for a in actions]
        partial = out.with_name(f".{out.name}.partial")
        try:
            crate.write_zip(partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    files = [(e.id, int(e["contentSize"]), e["encodingFormat"]) for e in crate.data_entities if e.type == "File"]
    return Exported(out, out.stat().st_size, files, notes)


def _add_run(crate, p: PackagedRun, tmp: Path, labkit_id: str, meta: dict, env: list) -> str:
    folder = f"runs/{p.run_id}/"
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    what = f"{p.experiment} run {p.run_id} of notebook {p.notebook}" + (" (smoke run)" if p.smoke else "")
    crate.add_dataset(
        dest_path=folder,
        properties={
            "name": what,
            "description": f"{what}; measured at commit "
            f"{git.get('commit', 'unknown')}" + (" with uncommitted changes" if git.get("dirty") else ""),
        },
    )
    params_file = tmp / p.run_id / "parameters.json"
    params_file.parent.mkdir()
    params_file.write_text(
        json.dumps(
            {
                "run_id": p.run_id,
                "experiment": p.experiment,
                "notebook": p.notebook,
                "parameters": p.parameters,
                "parameters_from": p.parameters_from,
                "recorded": p.recorded,
                "smoke": p.smoke,
            },
            indent=2,
            default=str,
        )
    )
    parts = [_file(crate, params_file, folder + "parameters.json", DESCRIPTIONS["parameters.json"])]
    for f in sorted(p.folder.rglob("*")):  # every file the run wrote, in folders of its own too
        if f.is_file():
            rel = f.relative_to(p.folder).as_posix()
            parts.append(_file(crate, f, folder + rel, DESCRIPTIONS.get(rel, f"a file of run {p.run_id}")))
    if p.executed is not None:
        parts.append(
            _file(
                crate,
                p.executed,
                folder + p.executed.name,
                f"the executed notebook {p.notebook} (papermill), with every output",
            )
        )
    if p.html is not None:
        parts.append(_file(crate, p.html, folder + p.html.name, f"the executed notebook {p.notebook} as HTML"))
    crate.get(folder)["hasPart"] = [{"@id": e.id} for e in parts]
    values = []
    for name, value in sorted(p.parameters.items()):
        pid = f"#{p.run_id}-parameter-{name}"
        crate.add_jsonld({"@id": pid, "@type": "PropertyValue", "name": name, "value": json.dumps(value)})
        values.append({"@id": pid})
    action = f"#run-{p.run_id}"
    crate.add_jsonld(
        {
            "@id": action,
            "@type": "CreateAction",
            "name": f"{p.notebook} with papermill: {what}",
            "instrument": {"@id": labkit_id},
            "object": values + [{"@id": e.id} for e in env],
            "result": {"@id": folder},
            "endTime": meta.get("time_utc"),
        }
    )
    return action


# ---------------------------------------------------------------- a crate per run of a batch
CRATES = "crates"
#: the page `labkit rerun` writes beside the index: rerun-<crate name>.html (reporting.rerun)
RERUN_PREFIX = "rerun-"


def for_batch(runs, reports_dir: Path, data_dir: Path | None = None) -> dict:
    """A crate of every run the batch's notebooks (RUNS: NotebookRuns) wrote, at
    REPORTS_DIR/crates/<run id>.zip, written while reports/ still holds their executed
    notebooks and with the environment as it is while they ran: {run id: zip path, or the
    reason there is none}. A run's crate already there is kept (a run never changes)."""
    reports_dir = Path(reports_dir)
    wanted = [Path(p) for r in runs for p in r.runs]
    out, lock, freeze = {}, None, None
    for run in wanted:
        path = reports_dir / CRATES / f"{run.name}.zip"
        if path.is_file():
            out[run.name] = path
            continue
        try:
            if lock is None:
                freeze = environment_lock.pip_freeze()
                lock = environment_lock.capture(freeze)
            path.parent.mkdir(parents=True, exist_ok=True)
            out[run.name] = export(
                [run], path, data_dir=data_dir, reports_dir=reports_dir, lock=lock, freeze=freeze, batch=runs
            ).path
        except Exception as exc:  # the index is written whatever happens; it shows the command instead
            out[run.name] = f"{type(exc).__name__}: {exc}"
    return out


def export_link(run_id: str, reports_dir: Path) -> str:
    """HTML for the index: a link to the run's crate in REPORTS_DIR/crates/, or, where there is
    none (a run of an earlier batch), the command that writes one."""
    import html

    if (Path(reports_dir) / CRATES / f"{run_id}.zip").is_file():
        return (
            f'<a href="{CRATES}/{html.escape(run_id)}.zip" download>export</a> (RO-Crate; <code>labkit rerun</code> it)'
        )
    return f"export: <code>labkit export {html.escape(run_id)} -o {html.escape(run_id)}.zip</code>"
