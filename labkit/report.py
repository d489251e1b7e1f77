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

import base64
import html
import json
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import NOTEBOOKS_DIR, REPORTS_DIR
from .errors import InputError

KERNEL = "labkit"
SECTION = re.compile(r"^\d\d-[\w.-]+$")  # a notebook's name as a parameters section


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
    runs: list = field(default_factory=list)  # data/ run directories the notebook wrote


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

    from . import results

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


#: the experiments (data/ directories) each notebook writes, where it is not obvious
NOTEBOOK_EXPERIMENTS = {"04-comparison": ("program_costs",)}


def _own_runs(stem: str, new: list, params: dict) -> list:
    """Of the runs that appeared in data/ while notebook STEM ran, those it wrote: other
    work on this machine (tests, another batch) may write runs at the same time. A run
    whose metadata names its notebook (`notebook`, from LABKIT_NOTEBOOK) is matched by
    that; otherwise by experiment and by smoke (the notebook's parameter)."""
    from . import compare

    experiments = set(NOTEBOOK_EXPERIMENTS.get(stem, ()))
    experiments |= {v.experiment for v in compare.VIEWS if v.notebook == stem}
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


class _Stop:
    signal: int | None = None


def _kernel_children() -> list[int]:
    """The Jupyter kernels this process started (papermill's)."""
    me, kids = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{d}/cmdline").read()
        except OSError:
            continue
        if int(stat[1]) == me and "ipykernel" in cmd:
            kids.append(int(d))
    return kids


@contextmanager
def interrupts_reach_the_kernel():
    """Ctrl-C or SIGTERM during a batch interrupts the running notebook's kernel (which
    runs in a session of its own and would not see it): the experiment there unwinds and
    undoes its kernel state, the cell fails, and the batch stops after that notebook."""
    stop = _Stop()

    def forward(signum, frame):
        stop.signal = signum
        for pid in _kernel_children():
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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


def _previous_batch(out_dir: Path) -> list:
    try:
        return list(json.loads((Path(out_dir) / "batch.json").read_text()).get("notebooks", []))
    except (OSError, ValueError, AttributeError):
        return []


# ---------------------------------------------------------------- the index page
STYLE = """body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}
td,th{padding:.3em .6em;text-align:left;vertical-align:top} table{border-collapse:collapse}
tr+tr td{border-top:1px solid #eee} th{background:#f4f4f4}
tr.failed td{background:#fdd} tr.earlier td{color:#555} td.ok{color:#070;font-weight:bold} td.failed{color:#b00;font-weight:bold}
pre{white-space:pre-wrap;font-size:.8em;margin:0} .warn{background:#fff6dd;border-left:4px solid #e0a000;padding:.2em .6em}
.fail{background:#fdd;border-left:4px solid #b00;padding:.2em .6em} figure{margin:1em 0} img{max-width:100%;height:auto}
.note{color:#666;font-size:.9em} li{margin:.2em 0}"""


def _esc(x) -> str:
    return html.escape(str(x))


def _png(ax) -> str:
    """A figure as a PNG data URI (the page stays one self-contained file)."""
    from . import plots

    return "data:image/png;base64," + base64.b64encode(plots.to_png(ax)).decode()


def _environment() -> list:
    from .results import collect_metadata

    meta = collect_metadata()
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    return [("kernel", f"{meta.get('kernel')} ({meta.get('kernel_version')})"),
            ("CPU", f"{meta.get('cpu_model')} × {meta.get('cpus')}"),
            ("memory", f"{meta.get('memory_gib')} GiB"),
            ("host", meta.get("host")),
            ("commit", f"{git.get('commit', '?')}" + (" (with uncommitted changes)" if git.get("dirty") else "")),
            ("time (UTC)", meta.get("time_utc")),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))]


def _experiment_sections(runs: list[NotebookRun], out_dir: Path, data_dir: Path | None):
    """(sections HTML, warnings [(level, text)]) for every experiment with data."""
    from . import compare, plots  # plots: matplotlib is imported only when an index is drawn

    index = compare.runs(data_dir)
    batch = {str(p) for r in runs for p in r.runs}  # program costs: any run of this batch
    by_notebook = {r.name: r for r in runs}
    sections, warnings = [], []
    for view in compare.VIEWS:
        rows = index[index["experiment"] == view.experiment]
        nb = by_notebook.get(view.notebook)
        own = {str(p) for p in nb.runs} if nb else set()
        mine = rows[rows["path"].astype(str).isin(own) & (rows["unreadable"] == "")]
        if len(mine) > 1:  # several candidates (other work wrote runs meanwhile): the largest is the notebook's
            mine = mine.assign(_bytes=[(Path(p) / "results.csv").stat().st_size for p in mine["path"]])
            mine = mine.sort_values("_bytes", kind="stable")
        chosen = mine.iloc[[-1]] if len(mine) else compare.pick(rows, view.experiment, per_machine=False)
        link = _report_link(view.notebook, out_dir)
        head = f'<h3 id="{view.experiment}">{_esc(view.title)}</h3>'
        if chosen.empty:
            why = "its notebook failed" if nb and not nb.ok else "no run in data/"
            sections.append(f'{head}<p class="warn">No data: {why}. Run <code>labkit run {view.notebook}</code>.'
                            f"{(' ' + link) if link else ''}</p>")
            warnings.append(("warn", f"{view.title}: no data ({why})"))
            continue
        run = chosen.iloc[0]
        origin = "this batch" if len(mine) else f"an earlier run (not this batch), {run['time_utc']}"
        table = None
        try:
            table = compare.experiment_table(view, chosen)
            ov_rows = compare._summary_rows(view, table, run)
            fig = _png(plots.throughput(compare.by_run(table), variants=None,
                                        title=f"{view.title}: Mpps (mean, min..max)"))
            img = f'<figure><img src="{fig}" alt="{_esc(view.title)}: packets per second per variant"></figure>'
        except Exception as exc:  # a run this labkit cannot draw still gets its section
            ov_rows, img = [], f'<p class="warn">could not draw this run: {_esc(exc)}</p>'
        line = _headline(ov_rows, view)
        notes = _run_warnings(view, run, table)
        for level, text in notes:
            if level == "warn":
                warnings.append(("warn", f"{view.title}: {text}"))
        items = "".join(f'<li class="{lvl}">{_esc(t)}</li>' for lvl, t in notes)
        sections.append(
            f"{head}<p>{_esc(line)}</p>{img}"
            f'<p class="note">run <code>{_esc(run["run_id"])}</code> from {_esc(origin)}, '
            f'{_esc(run["machine"])}, commit {_esc(run["commit"])}{" (smoke run)" if run["smoke"] else ""}. '
            f'{link}</p>' + (f"<ul>{items}</ul>" if items else ""))
    sections.append(_program_cost_section(index, batch, out_dir, warnings))
    return "\n".join(s for s in sections if s), warnings


def _program_cost_section(index, batch, out_dir, warnings) -> str:
    from . import plots, results

    rows = index[index["experiment"] == "program_costs"]
    if rows.empty:
        return ""
    mine = rows[rows["path"].astype(str).isin(batch)]
    run = (mine if len(mine) else rows).iloc[-1]
    try:
        t = results.load_run(run["path"]).table
        t = t[t["measure"] == "prog_ns_per_pkt"]
        img = _png(plots.program_cost(t, title="Own cost per packet (BPF_PROG_TEST_RUN)"))
        fig = f'<figure><img src="{img}" alt="program cost per packet"></figure>'
    except Exception as exc:
        fig = f'<p class="warn">could not draw: {_esc(exc)}</p>'
    caveats = "".join(f"<li>{_esc(c)}</li>" for c in run["caveats"])
    origin = "this batch" if len(mine) else "an earlier run (not this batch)"
    return (f'<h3 id="program_costs">Program cost (every program in bpf/)</h3>{fig}'
            f'<p class="note">run <code>{_esc(run["run_id"])}</code> from {_esc(origin)}, {_esc(run["machine"])}. '
            f'{_report_link("04-comparison", out_dir)}</p>' + (f"<ul>{caveats}</ul>" if caveats else ""))


def _report_link(stem: str, out_dir: Path) -> str:
    p = Path(out_dir) / f"{stem}.html"
    return f'<a href="{_esc(p.name)}">full report</a>' if p.exists() else ""


def _headline(rows: list, view) -> str:
    if not rows:
        return "No rates in this run."
    rows = sorted(rows, key=lambda r: -r["Mpps"])
    best, worst = rows[0], rows[-1]
    text = (f"At {int(best['size'])}-byte frames, {best['variant']} processed the most: {best['Mpps']:.3f} Mpps "
            f"(trials {best['Mpps min']:.3f}–{best['Mpps max']:.3f})")
    if len(rows) > 1 and worst["Mpps"] > 0:
        text += f", {best['Mpps'] / worst['Mpps']:.2f}× {worst['variant']} ({worst['Mpps']:.3f} Mpps)"
    cpu = sorted((r for r in rows if r["CPU ns/pkt"] == r["CPU ns/pkt"] and r["CPU ns/pkt"] > 0),
                 key=lambda r: r["CPU ns/pkt"])
    if len(cpu) > 1:
        text += (f"; {view.cpu_label}: {cpu[0]['variant']} {cpu[0]['CPU ns/pkt']:.0f} ns to "
                 f"{cpu[-1]['variant']} {cpu[-1]['CPU ns/pkt']:.0f} ns")
    return text + "."


def _run_warnings(view, run, table) -> list:
    """[(level, text)]: 'warn' for what changes how a number reads, 'note' for caveats."""
    from . import compare

    out = []
    if run["smoke"]:
        out.append(("warn", f"smoke run ({run['run_id']}): one short trial, no spread"))
    if table is not None:
        got = set(table[table["measure"] == view.rate]["variant"])
        for v in run["requested"]:
            if v not in got and v not in view.exclude:
                why = [c for c in run["caveats"] if v in c]
                out.append(("warn", f"variant {v} could not run" + (f": {why[0]}" if why else " (no reason recorded)")))
        for v, flags in compare.flags_of(table).items():
            for f in flags:
                out.append(("warn", f"{v}: {compare.FLAG_WARNINGS.get(f, f)}"))
    out += [("note", c) for c in run["caveats"]]
    return out


def write_index(runs: list[NotebookRun], out_dir: Path = REPORTS_DIR, data_dir: Path | None = None) -> Path:
    """reports/index.html: environment, notebooks with status and links, a headline figure
    per experiment, and the warnings that matter. Never fails for want of data: what
    cannot be shown is said."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        env = _environment()
    except Exception as exc:
        env = [("environment", f"unavailable: {exc}")]
    rows = []
    for r in runs:
        status = "ok" if r.ok else "FAILED"
        links = []
        if r.html and Path(r.html).exists():
            links.append(f'<a href="{_esc(Path(r.html).name)}">report</a>')
        if r.executed.exists():
            links.append(f'<a href="{_esc(r.executed.name)}">executed notebook</a>')
        err = f"<pre>{_esc(r.error)}</pre>" if r.error else ""
        rows.append(f'<tr class="{status.lower()}"><td>{_esc(r.name)}</td><td class="{status.lower()}">{status}</td>'
                    f"<td>{r.seconds:.0f} s</td><td>{' · '.join(links) or 'no output'}</td><td>{err}</td></tr>")
    done = {r.name for r in runs}
    for e in _previous_batch(out_dir):
        if e.get("name") in done or not e.get("html") or not (out_dir / e["html"]).exists():
            continue
        status = "ok" if e.get("ok") else "FAILED"
        links = [f'<a href="{_esc(e["html"])}">report</a>']
        if e.get("executed") and (out_dir / e["executed"]).exists():
            links.append(f'<a href="{_esc(e["executed"])}">executed notebook</a>')
        rows.append(f'<tr class="earlier"><td>{_esc(e["name"])}</td><td class="{status.lower()}">{status}</td>'
                    f'<td>{e.get("seconds", 0):.0f} s</td><td>{" · ".join(links)}</td>'
                    f'<td class="note">not run in this batch: report of {_esc(e.get("time_utc", "an earlier batch"))}'
                    f"</td></tr>")
    warnings = [("fail", f"notebook {r.name} FAILED: see its executed copy ({r.executed.name})" +
                 (f" — {r.error.splitlines()[-1]}" if r.error else "")) for r in runs if not r.ok]
    try:
        sections, more = _experiment_sections(runs, out_dir, data_dir)
        warnings += more
    except Exception as exc:
        sections = f'<p class="warn">experiment summaries unavailable: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'
    ok = sum(r.ok for r in runs)
    total_s = sum(r.seconds for r in runs)
    status = (f"{ok} of {len(runs)} notebooks ran, {len(runs) - ok} FAILED" if ok < len(runs)
              else f"all {len(runs)} notebooks ran")
    warn_html = "".join(f'<li class="{lvl}">{_esc(t)}</li>' for lvl, t in warnings)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit reports</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>labkit reports</h1>
<p>{_esc(status)} in {total_s:.0f} s. Written {_esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}.
Rates on the namespace testbed are relative (sender, device under test and receiver share this machine's CPUs):
read variants as ratios within one run, with the spread over trials.</p>
<h2 id="warnings">Warnings</h2>{f'<ul>{warn_html}</ul>' if warn_html else '<p>none</p>'}
<h2 id="notebooks">Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>time</th><th>links</th><th>notes</th></tr>
{''.join(rows)}</table>
<h2 id="experiments">Experiments</h2>
{sections}
<h2 id="environment">Environment</h2><table>{''.join(f'<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>' for k, v in env)}</table>
<p class="note">Tables: <code>data/&lt;experiment&gt;/&lt;run&gt;/results.csv</code> with <code>metadata.json</code>
(format described in docs/results-format.md). Compare two runs: <code>labkit.compare.compare_runs(a, b)</code>.</p>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
