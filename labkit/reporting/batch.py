"""Batch runs: every experiment notebook executed headlessly with papermill, exported as
self-contained HTML (images embedded, no script from the network), and an index page that
a person opens first.

    labkit report                      # every notebooks/NN-*.ipynb, default parameters
    labkit report 01-xdp-drop -p trials 5 -f params.yaml
    labkit run 01-xdp-drop --smoke     # one notebook, a seconds-long run

Parameters: `-p NAME VALUE` (value read as YAML) goes to every notebook that declares
NAME; `-p 01-xdp-drop:NAME VALUE` to that notebook only. A YAML file (`-f`) holds
`NAME: VALUE` pairs for every notebook and, under a notebook's name, pairs for that one:

    trials: 5
    01-xdp-drop:
      sizes: [64]
      count: 2000000

Executed notebooks and HTML go to reports/; each experiment writes its own tables to
data/. A notebook that fails does not stop the others: the index marks it failed and
links its executed copy, which shows the error; the command then exits non-zero.
reports/batch.json records each notebook's status, time, parameters and the data/ runs
it wrote.

reports/index.html shows the environment (kernel, CPU, versions, commit), the notebooks
with status, time and links, one headline figure per experiment (from the run this batch
wrote, else the latest run in data/, said so), and the warnings that matter: failed
notebooks, generator-limited variants, loss before the hook, variants that could not run
and why, veth caveats (from each run's metadata `caveats` and its table's `flags`).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from labkit import NOTEBOOKS_DIR, REPORTS_DIR
from labkit.errors import InputError
from labkit.reporting.index import write_index
from labkit.testbed.signals import interrupts_reach_the_kernel
from labkit.reporting.index import NotebookRun, _previous_batch

KERNEL = "labkit"
SECTION = re.compile(r"^\d\d-[\w.-]+$")  # a notebook's name as a parameters section


def notebooks(names=None, directory: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The experiment notebooks (NN-name.ipynb) in reading order, or those NAMES pick
    (a name may omit the number and the .ipynb: '01-xdp-drop', 'xdp-drop')."""
    found = sorted(p for p in Path(directory).glob("[0-9][0-9]-*.ipynb"))
    if not names:
        return found
    picked = []
    for n in names:
        n = Path(n).name.removesuffix(".ipynb")
        match = [p for p in found if p.stem == n or p.stem[3:] == n]
        if not match:
            raise InputError(f"no notebook {n!r}; notebooks: {', '.join(p.stem for p in found)}")
        picked.extend(m for m in match if m not in picked)
    return picked


def load_parameters(files=(), pairs=()) -> dict:
    """Parameters from YAML files (-f) and NAME VALUE pairs (-p), later ones winning.
    Values of -p are read as YAML, so `-p sizes "[64, 128]"` is a list, as in papermill.
    A file's mapping under a notebook's name (`01-xdp-drop: {...}`), and a pair named
    `NOTEBOOK:NAME`, apply to that notebook only (kept as a nested section)."""
    import yaml

    params = {}
    for f in files or ():
        path = Path(f)
        if not path.is_file():
            raise InputError(f"parameters file {f} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{f} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{f}: a parameters file holds a mapping of NAME: VALUE")
        for k, v in data.items():
            if SECTION.match(str(k)):
                if not isinstance(v, dict):
                    raise InputError(f"{f}: the section {k} must hold a mapping of NAME: VALUE")
                params.setdefault(str(k), {}).update(v)
            else:
                params[k] = v
    for name, value in pairs or ():
        value = yaml.safe_load(value)
        if ":" in name:
            section, name = name.split(":", 1)
            if not SECTION.match(section) or not name.isidentifier():
                raise InputError(f"-p {section}:{name}: write NOTEBOOK:NAME, e.g. -p 01-xdp-drop:trials 5")
            params.setdefault(section, {})[name] = value
        else:
            params[name] = value
    return params


def parameters_for(nb: Path, parameters: dict) -> dict:
    """The parameters one notebook gets: the common ones, then its own section."""
    common = {k: v for k, v in parameters.items() if not SECTION.match(str(k))}
    for key in (nb.stem,):
        common.update(parameters.get(key) or {})
    return common


def kernel_name() -> str:
    """The `labkit` Jupyter kernel (set-up registers it), else the running Python's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL in KernelSpecManager().find_kernel_specs():
            return KERNEL
    except Exception:
        pass
    return "python3"


def execute(nb: Path, parameters: dict, out_dir: Path = REPORTS_DIR, progress: bool = True,
            data_dir: Path | None = None) -> NotebookRun:
    """Run one notebook with papermill and export it to HTML, whatever happened."""
    import papermill as pm

    from labkit import results

    nb = Path(nb)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / nb.name
    declared = _declared_parameters(nb)
    wanted = parameters_for(nb, parameters)
    unknown = sorted(set(wanted) - set(declared))
    params = {k: v for k, v in wanted.items() if k in declared}
    before = set(results.list_runs(None, data_dir))
    t0 = time.monotonic()
    ok, error = True, ""
    os.environ["LABKIT_NOTEBOOK"] = nb.stem  # the kernel inherits it: a run can record its notebook
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel_name(),
                            cwd=str(nb.parent), progress_bar=progress, report_mode=False)
    except Exception as exc:  # PapermillExecutionError and start-up failures alike
        ok, error = False, _short_error(exc)
    finally:
        os.environ.pop("LABKIT_NOTEBOOK", None)
    seconds = time.monotonic() - t0
    if unknown:
        error = (error + "\n" if error else "") + f"ignored parameters this notebook does not declare: {unknown}"
    html_path = None
    if executed.exists():
        try:
            html_path = export_html(executed)
        except Exception as exc:
            error = (error + "\n" if error else "") + f"HTML export failed: {exc}"
    new = _own_runs(nb.stem, sorted(set(results.list_runs(None, data_dir)) - before), params)
    return NotebookRun(nb.stem, nb, executed, html_path, ok, seconds, error, params, new)


def _own_runs(stem: str, new: list, params: dict) -> list:
    """Of the runs that appeared in data/ while notebook STEM ran, those it wrote: other
    work on this machine (tests, another batch) may write runs at the same time. A run
    whose metadata names its notebook (`notebook`, from LABKIT_NOTEBOOK) is matched by
    that; otherwise by experiment and by smoke (the notebook's parameter)."""
    from labkit import experiments as declared
    from labkit.reporting import compare

    experiments = set(declared.notebook_experiments().get(stem, ()))  # each experiment names its NOTEBOOK
    smoke = bool(params.get("smoke", False))
    own = []
    for path in new:
        meta = compare._meta(path)
        if "notebook" in meta:
            if meta["notebook"] == stem:
                own.append(path)
        elif path.parent.name in experiments and bool((meta.get("parameters") or {}).get("smoke", False)) == smoke:
            own.append(path)
    return own


def _declared_parameters(nb: Path) -> set:
    data = json.loads(nb.read_text())
    for cell in data.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            names = set()
            for line in src.splitlines():
                head = line.split("#", 1)[0]
                if "=" in head:
                    names.add(head.split("=", 1)[0].split(":", 1)[0].strip())
            return names
    return set()


def _short_error(exc: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # papermill's tracebacks carry terminal colours
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-12:])


# Scripts nbconvert's template loads from a CDN (require.js, MathJax): the notebooks need
# neither, and a report must open offline, so they are left out.
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', re.I)


def export_html(executed: Path) -> Path:
    """A self-contained HTML copy beside the notebook: plots embedded as data URIs, no
    script or style loaded from the network."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    body = _REMOTE_SCRIPT.sub("", body)
    out = Path(executed).with_suffix(".html")
    out.write_text(body)
    return out


def run_all(names=None, parameters: dict | None = None, smoke: bool = False, out_dir: Path = REPORTS_DIR,
            progress: bool = True, log=print, directory: Path = NOTEBOOKS_DIR,
            data_dir: Path | None = None) -> list[NotebookRun]:
    """Execute the chosen notebooks one after the other and write the index page."""
    chosen = notebooks(names, directory)
    if not chosen:
        raise InputError(f"no experiment notebooks in {directory}")
    params = dict(parameters or {})
    if smoke:
        params["smoke"] = True
    runs = []
    t0 = time.monotonic()
    with interrupts_reach_the_kernel() as stop:
        for i, nb in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {nb.stem} ...")
            r = execute(nb, params, out_dir, progress, data_dir)
            log(f"[{i}/{len(chosen)}] {nb.stem}: {'ok' if r.ok else 'FAILED'} in {r.seconds:.0f} s"
                + (f"\n{r.error}" if r.error else ""))
            runs.append(r)
            if stop.signal:
                log(f"stopped by signal {stop.signal}: the notebook's kernel undid its kernel state; "
                    f"{len(chosen) - i} notebook(s) not run")
                break
    log(f"{len(runs)} notebooks in {time.monotonic() - t0:.0f} s")
    path = write_index(runs, out_dir, data_dir)
    write_batch(runs, out_dir)
    log(f"index: {path}")
    return runs


def write_batch(runs: list[NotebookRun], out_dir: Path = REPORTS_DIR) -> Path:
    """reports/batch.json: each notebook's status, seconds, parameters and data/ runs. A
    notebook of an earlier batch that this one did not run keeps its entry, marked
    `earlier`, so `labkit run ONE` does not make the others' reports disappear."""
    out = Path(out_dir) / "batch.json"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = [{"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 1), "error": r.error,
                "parameters": r.parameters, "runs": [str(p) for p in r.runs],
                "html": r.html.name if r.html else None, "executed": r.executed.name, "time_utc": now,
                "earlier": False} for r in runs]
    done = {r.name for r in runs}
    for e in _previous_batch(out_dir):
        if e.get("name") not in done:
            entries.append(dict(e, earlier=True))
    entries.sort(key=lambda e: e["name"])
    out.write_text(json.dumps({"time_utc": now, "notebooks": entries}, indent=2, default=str))
    return out


# ---------------------------------------------------------------- the index page


