"""Batch runs: every experiment notebook executed headlessly with papermill, exported as
self-contained HTML (images embedded), and an index page that a person opens first.

    labkit report                      # every notebooks/NN-*.ipynb, default parameters
    labkit report 01-xdp-drop -p trials 5 -f params.yaml
    labkit run 01-xdp-drop --smoke     # one notebook, a seconds-long run

Executed notebooks and HTML go to reports/; each experiment writes its own tables to
data/. A notebook that fails does not stop the others: the index marks it failed and
links its executed copy, which shows the error; the command then exits non-zero.
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import NOTEBOOKS_DIR, REPORTS_DIR
from .errors import InputError

KERNEL = "labkit"


@dataclass
class NotebookRun:
    name: str
    source: Path
    executed: Path
    html: Path | None
    ok: bool
    seconds: float
    error: str = ""
    parameters: dict = field(default_factory=dict)


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
    Values of -p are read as YAML, so `-p sizes "[64, 128]"` is a list, as in papermill."""
    import yaml

    params = {}
    for f in files or ():
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise InputError(f"{f}: a parameters file holds a mapping of NAME: VALUE")
        params.update(data)
    for name, value in pairs or ():
        params[name] = yaml.safe_load(value)
    return params


def kernel_name() -> str:
    """The `labkit` Jupyter kernel (set-up registers it), else the running Python's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL in KernelSpecManager().find_kernel_specs():
            return KERNEL
    except Exception:
        pass
    return "python3"


def execute(nb: Path, parameters: dict, out_dir: Path = REPORTS_DIR, progress: bool = True) -> NotebookRun:
    """Run one notebook with papermill and export it to HTML, whatever happened."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / nb.name
    declared = _declared_parameters(nb)
    unknown = sorted(set(parameters) - set(declared))
    params = {k: v for k, v in parameters.items() if k in declared}
    t0 = time.monotonic()
    ok, error = True, ""
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel_name(),
                            cwd=str(nb.parent), progress_bar=progress, report_mode=False)
    except Exception as exc:  # PapermillExecutionError and start-up failures alike
        ok, error = False, _short_error(exc)
    seconds = time.monotonic() - t0
    if unknown:
        error = (error + "\n" if error else "") + f"ignored parameters this notebook does not declare: {unknown}"
    html_path = export_html(executed) if executed.exists() else None
    return NotebookRun(nb.stem, nb, executed, html_path, ok, seconds, error, params)


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
    text = str(exc)
    lines = [l for l in text.splitlines() if l.strip()]
    return "\n".join(lines[-12:])


def export_html(executed: Path) -> Path:
    """A self-contained HTML copy (plots are embedded as data URIs) beside the notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    out = executed.with_suffix(".html")
    out.write_text(body)
    return out


def run_all(names=None, parameters: dict | None = None, smoke: bool = False, out_dir: Path = REPORTS_DIR,
            progress: bool = True, log=print) -> list[NotebookRun]:
    """Execute the chosen notebooks one after the other and write the index page."""
    chosen = notebooks(names)
    if not chosen:
        raise InputError(f"no experiment notebooks in {NOTEBOOKS_DIR}")
    params = dict(parameters or {})
    if smoke:
        params["smoke"] = True
    runs = []
    for i, nb in enumerate(chosen, 1):
        log(f"[{i}/{len(chosen)}] {nb.stem} ...")
        r = execute(nb, params, out_dir, progress)
        log(f"[{i}/{len(chosen)}] {nb.stem}: {'ok' if r.ok else 'FAILED'} in {r.seconds:.0f} s"
            + (f"\n{r.error}" if r.error else ""))
        runs.append(r)
    write_index(runs, out_dir)
    return runs


def write_index(runs: list[NotebookRun], out_dir: Path = REPORTS_DIR) -> Path:
    """reports/index.html: the environment, one line per notebook with its status and links."""
    from .results import collect_metadata

    meta = collect_metadata()
    env = [("kernel", meta.get("kernel")), ("CPU", f"{meta.get('cpu_model')} × {meta.get('cpus')}"),
           ("commit", (meta.get("git") or {}).get("commit", "?") if isinstance(meta.get("git"), dict) else "?"),
           ("time (UTC)", meta.get("time_utc")),
           ("versions", ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()))]
    rows = []
    for r in runs:
        status = "ok" if r.ok else "FAILED"
        link = f'<a href="{html.escape(r.html.name)}">report</a>' if r.html else "no report"
        nb_link = f'<a href="{html.escape(r.executed.name)}">notebook</a>' if r.executed.exists() else ""
        err = f"<pre>{html.escape(r.error)}</pre>" if r.error else ""
        rows.append(f'<tr class="{status.lower()}"><td>{html.escape(r.name)}</td><td>{status}</td>'
                    f"<td>{r.seconds:.0f} s</td><td>{link} {nb_link}</td><td>{err}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>labkit reports</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} td,th{{padding:.3em .6em;text-align:left;vertical-align:top}}
tr.failed td{{background:#fdd}} tr.ok td:nth-child(2){{color:#070}} pre{{white-space:pre-wrap;font-size:.8em}}</style></head>
<body><h1>labkit reports</h1>
<h2>Environment</h2><table>{''.join(f'<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>' for k, v in env)}</table>
<h2>Experiments</h2><table><tr><th>notebook</th><th>status</th><th>time</th><th>links</th><th>notes</th></tr>
{''.join(rows)}</table></body></html>
"""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page)
    return path
