"""A packaged run run again here (`labkit rerun FILE.zip`): what to run, and what came of it.

    with crate_check.opened("run.zip") as packaged, rerun.refusing(packaged) as notes:
        names, params = rerun.request(packaged)   # the notebooks and their parameters, as run
        done = ...                                # `labkit run`'s own path: batch.run_all
        outcome = rerun.outcome(packaged, done, reports_dir, data_dir, notes)
        print(outcome.text)                       # environment differences, then the comparisons

The parameters are those papermill gave the packaged notebook, over every other one the run
recorded (a default changed since is held at the run's value), so a smoke run is rerun as a
smoke run; facilities the packaged runs were told to treat as refused (LABKIT_REFUSE) are
refused again, with those this shell refuses (`refusing`). The outcome names every way this
machine differs from the packaged environment (one line each: kernel, its configuration,
packages, commit, dirty tree, refused facilities, parameters left out), then, per packaged
run, `compare.compare_runs(packaged, new)` and whether every variant the packaged run
measured was measured again; `outcome.page` is the same as an HTML page in reports/
(`rerun-<crate>.html`, linked from the index).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import InputError
from labkit.reporting import compare, crate, environment_lock


def _declared(notebook: str) -> dict:
    from labkit.reporting import batch

    return batch._declared_parameters(batch.notebooks([notebook])[0])


def given(run) -> dict:
    """What RUN's notebook gets again: every parameter the run recorded that the notebook still
    declares (so a default changed since is held at the run's value), then those papermill gave it."""
    declared = _declared(run.notebook)
    return {**{k: v for k, v in run.recorded.items() if k in declared}, **run.parameters}


def left_out(packaged) -> list[str]:
    """One line per parameter a packaged run recorded that its notebook no longer declares."""
    return [
        f"parameter {k} = {v!r} of {run.run_id}: {run.notebook} no longer declares it, so the rerun leaves it out"
        for run in packaged.runs
        for k, v in run.recorded.items()
        if k not in _declared(run.notebook)
    ]


def request(packaged) -> tuple[list, dict]:
    """(notebook names, parameters with one section per notebook: `given`) that run PACKAGED's
    runs again; refused when two runs of one notebook were made with different parameters (one
    batch runs a notebook once)."""
    sections = {}
    for run in packaged.runs:
        params = given(run)
        if run.notebook in sections and sections[run.notebook] != params:
            raise InputError(
                f"{packaged.path.name}: holds runs of {run.notebook} made with different parameters "
                f"({sections[run.notebook]} and {params}); export them into separate crates"
            )
        sections[run.notebook] = params
    return list(sections), sections


def refused(packaged) -> str:
    """The facilities the packaged runs were told to treat as refused (LABKIT_REFUSE, recorded
    in each run's metadata as `facilities.refused_by_env`), comma-separated."""
    names = set()
    for run in packaged.runs:
        meta = json.loads((run.folder / "metadata.json").read_text())
        facilities = meta.get("facilities") if isinstance(meta.get("facilities"), dict) else {}
        names |= {n for n in str(facilities.get("refused_by_env") or "").split(",") if n.strip()}
    return ",".join(sorted(names))


@contextlib.contextmanager
def refusing(packaged):
    """LABKIT_REFUSE for the notebooks run again here (their kernels inherit it): what the
    packaged runs were told to refuse, and what this shell refuses too; restored afterwards.
    Yields the line that says so where the two differ (a list: empty when they agree)."""
    from labkit import capabilities

    name = capabilities.ENV  # the process environment, which the notebooks' kernels inherit
    had = os.environ.get(name)
    packaged_names = set(filter(None, refused(packaged).split(",")))
    here_names = {n.strip() for n in (had or "").split(",") if n.strip()}
    want = ",".join(sorted(packaged_names | here_names))
    lines = []
    if packaged_names != here_names:
        lines.append(
            f"refused facilities (LABKIT_REFUSE): {','.join(sorted(packaged_names)) or 'none'} packaged, "
            f"{','.join(sorted(here_names)) or 'none'} here; the rerun refuses {want or 'none'}"
        )
    os.environ[name] = want
    capabilities.forget()
    try:
        yield lines
    finally:
        if had is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = had
        capabilities.forget()


@dataclass
class RunOutcome:
    packaged: object  # crate.PackagedRun
    new: Path | None
    comparison: object = None  # compare.RunComparison
    variants: list = field(default_factory=list)  # what the packaged run measured
    missing: list = field(default_factory=list)  # ... and the new run did not
    why: str = ""  # no new run: the notebook's error

    @property
    def reproduced(self) -> bool:
        return self.new is not None and not self.missing


@dataclass
class Outcome:
    crate: Path
    environment: list  # one line per difference
    runs: list  # RunOutcome
    page: Path | None = None

    @property
    def ok(self) -> bool:
        return all(r.reproduced for r in self.runs)

    @property
    def text(self) -> str:
        lines = [
            f"environment: {len(self.environment)} difference(s) from the packaged one"
            + (":" if self.environment else " (same kernel, configuration, packages, commit and tree)")
        ]
        lines += [f"  {d}" for d in self.environment]
        for r in self.runs:
            lines.append(
                f"{r.packaged.notebook} ({r.packaged.experiment}, packaged run {r.packaged.run_id}"
                f"{', smoke' if r.packaged.smoke else ''}):"
            )
            if r.new is None:
                lines.append(f"  NOT reproduced: no new run{': ' + r.why if r.why else ''}")
                continue
            got = [v for v in r.variants if v not in r.missing]
            lines.append(
                f"  variants: {len(got)} of {len(r.variants)} measured again ({', '.join(got) or 'none'})"
                + (f"; NOT measured again: {', '.join(r.missing)}" if r.missing else "")
            )
            lines += [f"  {line}" for line in str(r.comparison).splitlines()]
        verdict = "every variant of every packaged run measured again" if self.ok else "NOT every variant reproduced"
        lines.append(f"rerun of {self.crate.name}: {verdict}" + (f"; page: {self.page}" if self.page else ""))
        return "\n".join(lines)


def _variants(table) -> list:
    return list(dict.fromkeys(str(v) for v in table["variant"].dropna()))


def _new_run(run, done) -> tuple[Path | None, str]:
    """The run the rerun's notebook wrote for RUN's experiment (the largest table where a
    notebook wrote several), or None and the notebook's error."""
    for nb in done:
        if nb.name != run.notebook:
            continue
        mine = [Path(p) for p in nb.runs if Path(p).parent.name == run.experiment]
        if mine:
            return max(mine, key=lambda p: (p / "results.csv").stat().st_size), ""
        return None, nb.error or f"{run.notebook} wrote no run of {run.experiment}"
    return None, f"{run.notebook} did not run"


def outcome(packaged, done, reports_dir: Path, data_dir: Path | None = None, notes=(), here: dict | None = None):
    """What the rerun (DONE: the batch's NotebookRuns) gave against PACKAGED, as an Outcome,
    with its page written into REPORTS_DIR and linked from the index (written again, over
    DATA_DIR's runs). NOTES: further differences (`refusing`'s). HERE: this machine's
    environment (default: captured now)."""
    from labkit import results
    from labkit.reporting.index import write_index

    here = here or environment_lock.capture()
    runs = []
    for run in packaged.runs:
        old = results.load_run(run.folder)
        new, why = _new_run(run, done)
        r = RunOutcome(run, new, variants=_variants(old.table), why=why)
        if new is not None:
            r.comparison = compare.compare_runs(old, results.load_run(new))
            again = set(_variants(r.comparison.b.table))
            r.missing = [v for v in r.variants if v not in again]
        runs.append(r)
    env = environment_lock.differences(packaged.lock, here)
    for run in packaged.runs:
        meta = json.loads((run.folder / "metadata.json").read_text())
        env += environment_lock.run_differences(run.run_id, meta, packaged.lock, here)
    out = Outcome(packaged.path, env + list(notes) + left_out(packaged), runs)
    out.page = write_page(out, reports_dir)
    write_index(done, reports_dir, data_dir)
    return out


def _esc(x) -> str:
    return html.escape(str(x))


def write_page(out: Outcome, reports_dir: Path) -> Path:
    """reports/rerun-<crate>.html: the environment's differences and each run's comparison."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{crate.RERUN_PREFIX}{out.crate.stem}.html"
    env = "".join(f"<li>{_esc(d)}</li>" for d in out.environment) or "<li>none</li>"
    parts = []
    for r in out.runs:
        head = f"<h2>{_esc(r.packaged.notebook)}: packaged run <code>{_esc(r.packaged.run_id)}</code></h2>"
        if r.new is None:
            parts.append(f'{head}<p class="fail">NOT reproduced: no new run. {_esc(r.why)}</p>')
            continue
        report = Path(reports_dir) / f"{r.packaged.notebook}.html"
        link = f' (<a href="{_esc(report.name)}">its report</a>)' if report.exists() else ""
        missing = (
            f'<p class="fail">NOT measured again: {_esc(", ".join(r.missing))}</p>'
            if r.missing
            else f"<p>Every variant measured again: {_esc(', '.join(r.variants))}.</p>"
        )
        parts.append(
            f"{head}<p>New run <code>{_esc(r.new.name)}</code>{link}, parameters "
            f"<code>{_esc(r.packaged.parameters)}</code> (from {_esc(r.packaged.parameters_from)})"
            f"{', every other at the packaged run’s recorded value' if r.packaged.recorded else ''}.</p>"
            f"{missing}{r.comparison._repr_html_()}"
        )
    verdict = "Every variant of every packaged run was measured again." if out.ok else "NOT every variant reproduced."
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rerun of {_esc(out.crate.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em}}
td,th{{padding:.2em .5em;text-align:right}} table{{border-collapse:collapse;font-size:.85em}}
.fail{{background:#fdd;border-left:4px solid #b00;padding:.2em .6em}} pre{{white-space:pre-wrap}}</style></head>
<body><h1>Rerun of {_esc(out.crate.name)}</h1>
<p>{_esc(verdict)} Written {_esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))}. A difference is
beyond spread only when both runs have two or more trials and their ranges do not overlap.
<a href="index.html">All reports</a>.</p>
<h2>How this machine differs from the packaged environment</h2><ul>{env}</ul>
{"".join(parts)}
</body></html>
"""
    path.write_text(page)
    return path
