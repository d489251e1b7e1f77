"""The index page's trend section: every headline of `trend.HEADLINES` over every stored run
of this batch's testbed (smoke and full runs apart), jumpavg's verdict beside each, a small
plot per headline, and the CSV of every series of every testbed (``trend.csv`` beside the
index). Other testbeds get one line each per change, from their own runs only.

    html, warnings = trend_page.section(batch_paths, out_dir, data_dir)

Regressions go to the page's warnings; a section that cannot be drawn says why instead.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from labkit.reporting import trend

CSV_NAME = "trend.csv"
#: a group's colour on the plots
COLOURS = {"baseline": "#444", "no change": "#444", "regression": "#c00", "progression": "#070"}


def _esc(x) -> str:
    return html.escape(str(x))


def plot(series: trend.Series):
    """SERIES's value per run (whiskers: min..max over its trials) in time order, with each
    jumpavg group's average as a line across its runs, coloured by verdict. Returns the axes."""
    import matplotlib.pyplot as plt

    from labkit.reporting import plots  # noqa: F401  (a headless backend where none was chosen)

    measured = series.measured
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    x = list(range(1, len(measured) + 1))
    values = [p.value for p in measured]
    low = [p.value - min(p.trials) for p in measured]
    high = [max(p.trials) - p.value for p in measured]
    ax.errorbar(x, values, yerr=[low, high], fmt="o", color="#1f77b4", capsize=3, markersize=4, zorder=3)
    for start, n, avg, verdict in series.groups:
        ax.hlines(
            avg,
            start + 0.6,
            start + n + 0.4,
            colors=COLOURS.get(verdict, "#444"),
            linewidth=2,
            label=verdict if verdict not in ("baseline", "no change") else None,
        )
    ax.set_xlim(0.4, len(measured) + 0.6)
    ax.set_xticks(
        x,
        [p.commit[:7] for p in measured] if len(measured) <= 6 else x,
        fontsize="x-small",
        rotation=20 if len(measured) <= 6 else 0,
    )
    ax.set_xlabel("runs, oldest first" + (" (commit)" if len(measured) <= 6 else ""), fontsize="small")
    better = "lower" if series.headline.lower_is_better else "higher"
    ax.set_ylabel("ratio", fontsize="small")
    ax.set_title(f"{series.headline.label()} ({better} is better)", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    if any(v in ("regression", "progression") for *_, v in series.groups):
        ax.legend(fontsize="x-small")
    return ax


def _png(series: trend.Series) -> str:
    from labkit.reporting import plots

    return "data:image/png;base64," + base64.b64encode(plots.to_png(plot(series))).decode()


def _verdict(series: trend.Series) -> str:
    """The series's verdict in a few words: the last change, or no change."""
    if not series.measured:
        return "not measured"
    if len(series.groups) == 1:
        return "no change" if len(series.measured) > 1 else "no change (one run)"
    verdict, p, before, after = series.changes[-1]
    return f"{verdict} at {p.run_id}: {before:.3g} → {after:.3g}"


def _series_block(group: list) -> str:
    rows, figures = [], []
    for s in group:
        values = ", ".join(f"{p.value:.3g}" if p.trials else "—" for p in s.points)
        cls = "warn" if "regression" in _verdict(s) else ""
        rows.append(
            f"<tr><td>{_esc(s.headline.label())}</td><td>{'lower' if s.headline.lower_is_better else 'higher'}"
            f'</td><td>{_esc(values)}</td><td class="{cls}">{_esc(_verdict(s))}</td></tr>'
        )
        if s.measured:
            try:
                figures.append(
                    f'<img src="{_png(s)}" alt="{_esc(s.headline.label())} over runs" '
                    'style="width:24em;display:inline-block">'
                )
            except Exception as exc:  # a series that cannot be drawn keeps its row
                figures.append(f'<p class="warn">could not draw {_esc(s.headline.label())}: {_esc(exc)}</p>')
    for line in trend.absent(group):
        label, why = line.split(": ", 1)
        rows.append(f"<tr><td>{_esc(label)}</td><td></td><td>—</td><td>{_esc(why)}</td></tr>")
    lines = "".join(f"<li>{_esc(line)}</li>" for s in group for line in s.lines())
    return (
        f"<table><tr><th>headline</th><th>better</th><th>value per run, oldest first</th><th>jumpavg</th></tr>"
        f"{''.join(rows)}</table><ul>{lines}</ul><figure>{''.join(figures)}</figure>"
    )


def _runs(group: list) -> str:
    """'N runs from FIRST to LAST' over every run of a testbed's series."""
    points = {p.run_id: p for s in group for p in s.points}
    times = sorted(p.time_utc for p in points.values())
    return f"{len(points)} run{'s' * (len(points) != 1)}" + (f", {times[0]} to {times[-1]}" if len(times) > 1 else "")


def section(batch_paths, out_dir: Path, data_dir: Path | None = None) -> tuple[str, list]:
    """(HTML, warnings [(level, text)]) of the trend section; writes OUT_DIR/trend.csv.
    This testbed is the one of the runs in BATCH_PATHS (this batch), else of the latest run."""
    series = trend.collect(data_dir)
    head = '<h2 id="trend">Trend</h2>'
    if not series:
        return head + "<p>No runs with a headline in data/ yet.</p>", []
    csv = trend.write_csv(series, Path(out_dir) / CSV_NAME)
    names = {Path(p).name for p in batch_paths}
    here = {(s.testbed, s.machine) for s in series if any(p.run_id in names for p in s.points)}
    if not here:
        latest = max((p.time_utc, s.testbed, s.machine) for s in series for p in s.points)
        here = {latest[1:]}
    blocks, others, warnings = [], [], []
    for (bed, host, smoke), group in trend.by_testbed(series).items():
        kind = "smoke" if smoke else "full"
        for s in group:
            warnings += [
                ("warn", f"trend, {bed}, {kind} runs: {line}") for line in s.lines() if ": regression at" in line
            ]
        if (bed, host) in here:
            blocks.append(
                f'<h3>{_esc(bed)}, {kind} runs</h3><p class="note">{_esc(host)}; {_esc(_runs(group))}</p>'
                + _series_block(group)
            )
        else:
            items = "".join(f"<li>{_esc(line)}</li>" for s in group for line in s.lines())
            others.append(
                f"<li><b>{_esc(bed)}</b> ({_esc(host)}), {kind} runs, {_esc(_runs(group))}:<ul>{items}</ul></li>"
            )
    other = f'<p class="note">Other testbeds, each over its own runs:</p><ul>{"".join(others)}</ul>' if others else ""
    intro = (
        "<p>Each experiment's headline ratios (two variants of the same run, trial by trial) over every stored "
        "run of this testbed, oldest first, grouped by jumpavg: a new group is a change, named where it starts. "
        f'Runs of other testbeds are never mixed in. Every point of every testbed: <a href="{_esc(csv.name)}">'
        f"{_esc(csv.name)}</a> (also <code>labkit trend --csv FILE</code>).</p>"
    )
    return head + intro + "".join(blocks) + other, warnings
