"""reports/index.html: the page a person opens first. The environment, every notebook with
its status and report, one headline figure per experiment, and the warnings that matter.

Per experiment the page shows the run of this batch (or the latest one), naming its
testbed (`testbeds.testbed_of`: this machine's namespaces, an inventory's hosts, a Dask
worker); where the run measured latency (rows of kind 'latency', `reporting.latency_view`),
p50/p99 with no load and under load; and where data/ holds runs of the experiment from
other testbeds, one line per testbed, each from its own run (never averaged together).
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from labkit import REPORTS_DIR
from labkit.reporting import batchfile, crate
from labkit.reporting.batchfile import NotebookRun

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
    from labkit.reporting import plots

    return "data:image/png;base64," + base64.b64encode(plots.to_png(ax)).decode()


def _environment() -> list:
    from labkit.results import collect_metadata

    meta = collect_metadata()
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    return [
        ("kernel", f"{meta.get('kernel')} ({meta.get('kernel_version')})"),
        ("CPU", f"{meta.get('cpu_model')} × {meta.get('cpus')}"),
        ("memory", f"{meta.get('memory_gib')} GiB"),
        ("host", meta.get("host")),
        ("commit", f"{git.get('commit', '?')}" + (" (with uncommitted changes)" if git.get("dirty") else "")),
        ("time (UTC)", meta.get("time_utc")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
    ]


def _experiment_sections(runs: list[NotebookRun], out_dir: Path, data_dir: Path | None):
    """(sections HTML, warnings [(level, text)]) for every experiment with data."""
    from labkit import experiments
    from labkit.reporting import compare, plots, summary

    index = compare.runs(data_dir)
    batch = {str(p) for r in runs for p in r.runs}  # program costs: any run of this batch
    by_notebook = {r.name: r for r in runs}
    sections, warnings = [], []
    for view in experiments.views():  # each experiment declares how it is shown
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
            sections.append(
                f'{head}<p class="warn">No data: {why}. Run <code>labkit run {view.notebook}</code>.'
                f"{(' ' + link) if link else ''}</p>"
            )
            warnings.append(("warn", f"{view.title}: no data ({why})"))
            continue
        run = chosen.iloc[0]
        origin = "this batch" if len(mine) else f"an earlier run (not this batch), {run['time_utc']}"
        table = None
        try:
            table = compare.experiment_table(view, chosen)
            ov_rows = summary.summary_rows(view, table, run)
            fig = _png(
                plots.throughput(compare.by_run(table), variants=None, title=f"{view.title}: Mpps (mean, min..max)")
            )
            img = f'<figure><img src="{fig}" alt="{_esc(view.title)}: packets per second per variant"></figure>'
        except Exception as exc:  # a run this labkit cannot draw still gets its section
            ov_rows, img = [], f'<p class="warn">could not draw this run: {_esc(exc)}</p>'
        line = _headline(ov_rows, view) + _served_by(run)
        lat_html = _latency_block(view, chosen)
        others = _other_testbeds(view, rows, run)
        notes = _run_warnings(view, run, table)
        for level, text in notes:
            if level == "warn":
                warnings.append(("warn", f"{view.title}: {text}"))
        items = "".join(f'<li class="{lvl}">{_esc(t)}</li>' for lvl, t in notes)
        sections.append(
            f"{head}<p>{_esc(line)}</p>{img}{lat_html}"
            f'<p class="note">run <code>{_esc(run["run_id"])}</code> from {_esc(origin)}, '
            f"{_esc(run['machine'])}, testbed: {_esc(run.get('testbed', '?'))}, commit {_esc(run['commit'])}"
            f"{' (smoke run)' if run['smoke'] else ''}. {link} · {crate.export_link(run['run_id'], out_dir)}</p>"
            + others
            + (f"<ul>{items}</ul>" if items else "")
        )
    sections.append(_program_cost_section(index, batch, out_dir, warnings))
    return "\n".join(s for s in sections if s), warnings


def _table_html(df) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    cell = lambda v: ("—" if v != v else f"{v:.1f}") if isinstance(v, float) else v  # noqa: E731
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell(v))}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _latency_block(view, chosen) -> str:
    """One-way latency of the shown run, where it measured any: a sentence and p50/p99 (µs)
    per variant with no load and at each load."""
    from labkit.reporting import latency_view as latency

    try:
        lat = latency.for_runs(view, chosen)
    except Exception as exc:
        return f'<p class="warn">could not read latency: {_esc(exc)}</p>'
    if lat.empty:
        return ""
    text = " ".join(latency.interpret(lat))
    table = latency.wide(lat).drop(columns=["experiment", "run", "testbed"], errors="ignore")
    return f"<p>{_esc(text)}</p>{_table_html(table)}"


def _other_testbeds(view, rows, shown) -> str:
    """A line per other testbed with runs of this experiment: its own latest run's headline
    (rates, and latency where measured); '' when the shown run's testbed is the only one."""
    from labkit.reporting import compare, summary
    from labkit.reporting import latency_view as latency

    picked = compare.pick(rows, view.experiment, per_machine=True)
    if picked.empty or "testbed" not in picked.columns:
        return ""
    same = (picked["testbed"] == shown.get("testbed")) & (picked["machine"] == shown["machine"])
    picked = picked[~same & (picked["run_id"] != shown["run_id"])]  # the shown run's testbed is above
    if picked.empty:
        return ""
    items = []
    for i in range(len(picked)):
        run = picked.iloc[i]
        try:
            t = compare.experiment_table(view, picked.iloc[[i]])
            text = _headline(summary.summary_rows(view, t, run), view)
            lat = latency.interpret(latency.for_runs(view, picked.iloc[[i]]))
            text += (" " + " ".join(lat)) if lat else ""
        except Exception as exc:
            text = f"unreadable: {exc}"
        items.append(
            f"<li><b>{_esc(run['testbed'])}</b> ({_esc(run['machine'])}, run <code>{_esc(run['run_id'])}</code>"
            f"{', smoke' if run['smoke'] else ''}): {_esc(text)}</li>"
        )
    return f'<p class="note">Other testbeds, each from its own run:</p><ul>{"".join(items)}</ul>'


def _program_cost_section(index, batch, out_dir, warnings) -> str:
    from labkit import results
    from labkit.reporting import plots

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
    return (
        f'<h3 id="program_costs">Program cost (every program in bpf/)</h3>{fig}'
        f'<p class="note">run <code>{_esc(run["run_id"])}</code> from {_esc(origin)}, {_esc(run["machine"])}. '
        f"{_report_link('04-comparison', out_dir)} · {crate.export_link(run['run_id'], out_dir)}</p>"
        + (f"<ul>{caveats}</ul>" if caveats else "")
    )


def _report_link(stem: str, out_dir: Path) -> str:
    p = Path(out_dir) / f"{stem}.html"
    return f'<a href="{_esc(p.name)}">full report</a>' if p.exists() else ""


def _headline(rows: list, view) -> str:
    if not rows:
        return "No rates in this run."
    rows = sorted(rows, key=lambda r: -r["Mpps"])
    best, worst = rows[0], rows[-1]
    text = (
        f"At {int(best['size'])}-byte frames, {best['variant']} processed the most: {best['Mpps']:.3f} Mpps "
        f"(trials {best['Mpps min']:.3f}–{best['Mpps max']:.3f})"
    )
    if len(rows) > 1 and worst["Mpps"] > 0:
        text += f", {best['Mpps'] / worst['Mpps']:.2f}× {worst['variant']} ({worst['Mpps']:.3f} Mpps)"
    cpu = sorted(
        (r for r in rows if r["CPU ns/pkt"] == r["CPU ns/pkt"] and r["CPU ns/pkt"] > 0), key=lambda r: r["CPU ns/pkt"]
    )
    if len(cpu) > 1:
        text += (
            f"; {view.cpu_label}: {cpu[0]['variant']} {cpu[0]['CPU ns/pkt']:.0f} ns to "
            f"{cpu[-1]['variant']} {cpu[-1]['CPU ns/pkt']:.0f} ns"
        )
    return text + "."


def _served_by(run) -> str:
    """' Fed by …': which generator fed the run and as what (XDP frames or socket buffers),
    which backend served each purpose and the parts it skipped (its metadata), or '' for a
    run that recorded none of it."""
    import json

    from labkit.experiments import fed_by

    try:
        meta = json.loads((Path(run["path"]) / "metadata.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not any(meta.get(k) for k in ("generator", "feed", "facilities")):
        return ""
    return " " + fed_by(meta)


def _run_warnings(view, run, table) -> list:
    """[(level, text)]: 'warn' for what changes how a number reads, 'note' for caveats."""
    from labkit.reporting import compare

    out = []
    if run["smoke"]:
        out.append(("warn", f"smoke run ({run['run_id']}): one short trial, no spread"))
    if table is not None:
        out += [("warn", f"variant {v} could not run{why}") for v, why in compare.not_run(view, run, table)]
        out += [("warn", w) for w in compare.flag_warnings(table)]
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
        rows.append(
            f'<tr class="{status.lower()}"><td>{_esc(r.name)}</td><td class="{status.lower()}">{status}</td>'
            f"<td>{r.seconds:.0f} s</td><td>{' · '.join(links) or 'no output'}</td><td>{err}</td></tr>"
        )
    done = {r.name for r in runs}
    for e in batchfile.read(out_dir):
        if e.get("name") in done or not e.get("html") or not (out_dir / e["html"]).exists():
            continue
        status = "ok" if e.get("ok") else "FAILED"
        links = [f'<a href="{_esc(e["html"])}">report</a>']
        if e.get("executed") and (out_dir / e["executed"]).exists():
            links.append(f'<a href="{_esc(e["executed"])}">executed notebook</a>')
        rows.append(
            f'<tr class="earlier"><td>{_esc(e["name"])}</td><td class="{status.lower()}">{status}</td>'
            f"<td>{e.get('seconds', 0):.0f} s</td><td>{' · '.join(links)}</td>"
            f'<td class="note">not run in this batch: report of {_esc(e.get("time_utc", "an earlier batch"))}'
            f"</td></tr>"
        )
    warnings = [
        (
            "fail",
            f"notebook {r.name} FAILED: see its executed copy ({r.executed.name})"
            + (f" — {r.error.splitlines()[-1]}" if r.error else ""),
        )
        for r in runs
        if not r.ok
    ]
    crate.for_batch(runs, out_dir, data_dir)  # each run's crate, while its executed notebook is here
    reruns = [
        f'<a href="{_esc(p.name)}">{_esc(p.stem)}</a>' for p in sorted(out_dir.glob(f"{crate.RERUN_PREFIX}*.html"))
    ]
    try:
        sections, more = _experiment_sections(runs, out_dir, data_dir)
        warnings += more
    except Exception as exc:
        sections = f'<p class="warn">experiment summaries unavailable: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'
    try:  # every headline over every stored run of this testbed, with jumpavg's verdict
        from labkit.reporting import trend_page

        trend_html, more = trend_page.section([p for r in runs for p in r.runs], out_dir, data_dir)
        warnings += more
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        trend_html = f'<h2 id="trend">Trend</h2><p class="warn">trend unavailable: {_esc(why)}</p>'
    ok = sum(r.ok for r in runs)
    total_s = sum(r.seconds for r in runs)
    status = (
        f"{ok} of {len(runs)} notebooks ran, {len(runs) - ok} FAILED"
        if ok < len(runs)
        else f"all {len(runs)} notebooks ran"
    )
    warn_html = "".join(f'<li class="{lvl}">{_esc(t)}</li>' for lvl, t in warnings)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit reports</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>labkit reports</h1>
<p>{_esc(status)} in {total_s:.0f} s. Written {_esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))}.
Rates on the namespace testbed are relative (sender, device under test and receiver share this machine's CPUs):
read variants as ratios within one run, with the spread over trials.</p>
<h2 id="warnings">Warnings</h2>{f"<ul>{warn_html}</ul>" if warn_html else "<p>none</p>"}
<h2 id="notebooks">Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>time</th><th>links</th><th>notes</th></tr>
{"".join(rows)}</table>
{f"<p>Packaged runs run again (labkit rerun): {' · '.join(reruns)}</p>" if reruns else ""}
<h2 id="experiments">Experiments</h2>
{sections}
{trend_html}
<h2 id="environment">Environment</h2><table>{"".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in env)}</table>
<p class="note">Tables: <code>data/&lt;experiment&gt;/&lt;run&gt;/results.csv</code> with <code>metadata.json</code>
(format described in docs/results-format.md). Compare two runs: <code>labkit.reporting.compare.compare_runs(a, b)</code>.</p>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
