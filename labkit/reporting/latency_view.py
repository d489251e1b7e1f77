"""Latency across runs, read the same way whichever experiment measured it.

An experiment that measures one-way latency (`labkit.measure.latency_profile`) records rows of
kind ``latency``: per variant, trial and load (column ``load_fraction``: 0 with no load,
else the background load as a fraction of the variant's PDR; of its no-drop rate in runs
recorded before the PDR) the measures ``lat_p50_ns`` .. ``lat_max_ns``, ``lat_probes``,
``lat_load_pps`` and ``lat_hdr`` (the point's HDR histogram, encoded in column ``hdr``:
`labkit.measure.hdr`), and a ``pdr_pps`` row (older runs: ``ndr_pps``) with no load
fraction. This module finds those rows in any run, so the comparison and the index show
latency for every experiment that has it, without naming one:

    lat = latency.for_runs(view, chosen)   # per run, variant and load: p50/p99 (µs) with min..max
    latency.wide(lat)                      # one row per run and variant: p50/p99 at each load
    latency.interpret(lat)                 # sentences, each number from its own run's rows
    latency.plot(lat, title)               # p99 bars (min..max whiskers) and p50 dots per load

Runs are never pooled: every row keeps its run and testbed, and spread is over the
trials of one run (the histograms of several runs' points can be merged on purpose:
`hdr.merge` of their ``lat_hdr`` rows). A load is labelled with the rate it is a fraction of
(column ``load`` of the summary: "90% PDR", or "90% NDR" for older runs).
"""

from __future__ import annotations

from labkit import results
from labkit.measure import latency_profile as latency

KIND, LOAD = latency.KIND, latency.LOAD

load_label = latency.load_label
#: per variant and load of one run's table (`labkit.measure.latency_profile.summary`)
summary = latency.summary


def for_runs(view, chosen, labels=None):
    """Latency of each run in CHOSEN (rows of `compare.runs`/`pick`), for VIEW's contenders:
    one row per run, variant and load, with the experiment's title, the run's label, its
    testbed and machine. LABELS: a function row -> run label (default the run id)."""
    import pandas as pd

    frames = []
    for _, row in chosen.iterrows():
        try:
            table = results.load_run(row["path"]).table
        except Exception:  # an unreadable run is listed as such by compare.runs
            continue
        s = summary(table)
        s = s[~s["variant"].isin(view.exclude)]
        if s.empty:
            continue
        s.insert(0, "experiment", view.title)
        s.insert(1, "run", labels(row) if labels else row["run_id"])
        s.insert(2, "testbed", row.get("testbed", "?"))
        s.insert(3, "machine", row.get("machine", "?"))
        frames.append(s)
    return pd.concat(frames, ignore_index=True) if frames else summary(pd.DataFrame(columns=["kind", LOAD]))


def wide(lat):
    """One row per experiment, run, testbed and variant: p50 and p99 (µs, mean over trials)
    with no load and at each load, in reading order."""
    import pandas as pd

    if lat is None or lat.empty:
        return pd.DataFrame()
    keys = [k for k in ("experiment", "run", "testbed", "variant") if k in lat.columns]
    out = None
    for (f, label), g in lat.groupby([LOAD, "load"], sort=True):
        g = g.set_index(keys)[["p50_us", "p99_us"]]
        g.columns = [f"p50 µs ({label})", f"p99 µs ({label})"]
        out = g if out is None else out.join(g, how="outer")
    return out.reset_index()


def interpret(lat) -> list[str]:
    """Per experiment and run: the lowest and highest median delay with no load, and how the
    p99 grew at the highest load, each number from that run's own rows."""
    lines = []
    if lat is None or lat.empty:
        return lines
    for (title, run, testbed), g in lat.groupby(["experiment", "run", "testbed"], sort=False):
        idle = g[g[LOAD] == 0].dropna(subset=["p50_us"]).set_index("variant")
        if idle.empty:
            continue
        order = idle["p50_us"].sort_values()
        lo, hi = order.index[0], order.index[-1]
        text = (
            f"{title} latency ({run}, {testbed}): with no load p50 from {lo} {idle.loc[lo, 'p50_us']:.1f} µs "
            f"(trials {idle.loc[lo, 'p50_us_min']:.1f}–{idle.loc[lo, 'p50_us_max']:.1f}) to {hi} "
            f"{idle.loc[hi, 'p50_us']:.1f} µs"
        )
        top = g[LOAD].max()
        loaded = g[(g[LOAD] == top) & g["p99_us"].notna()].set_index("variant")
        if top > 0 and len(loaded):
            best, worst = loaded["p99_us"].idxmin(), loaded["p99_us"].idxmax()
            text += (
                f"; at {top:.0%} of each variant's {_rate(loaded)} p99 from {best} "
                f"{loaded.loc[best, 'p99_us']:.1f} µs to {worst} {loaded.loc[worst, 'p99_us']:.1f} µs (trials {loaded.loc[worst, 'p99_us_min']:.1f}–"
                f"{loaded.loc[worst, 'p99_us_max']:.1f})"
            )
        lines.append(text + ".")
    return lines


def _rate(rows) -> str:
    """The rate ROWS' loads are fractions of, in words: 'PDR' or, in older runs, 'no-drop rate'."""
    rate = set(rows["rate"].dropna()) if "rate" in rows.columns else set()
    return "PDR" if rate == {"PDR"} else "no-drop rate" if rate <= {"NDR"} else "PDR or NDR"


def plot(lat, title: str = "one-way latency"):
    """P99 per variant as bars (whiskers: min..max over trials), one bar per load, p50 as a
    dot on each; log scale. One run's rows (LAT of one run). Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import ticker

    variants = list(dict.fromkeys(lat["variant"]))
    loads = sorted(lat[LOAD].unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(variants) + 2), 3.6))
    width = 0.8 / max(1, len(loads))
    x = np.arange(len(variants))
    for i, f in enumerate(loads):
        g = lat[lat[LOAD] == f].set_index("variant").reindex(variants)
        label = next(iter(g["load"].dropna()), load_label(f)) if "load" in g.columns else load_label(f)
        pos = x + (i - (len(loads) - 1) / 2) * width
        err = [np.clip(g["p99_us"] - g["p99_us_min"], 0, None), np.clip(g["p99_us_max"] - g["p99_us"], 0, None)]
        ax.bar(pos, g["p99_us"], width, yerr=err, capsize=3, label=f"p99, {label}", alpha=0.85)
        ax.plot(pos, g["p50_us"], "k.", markersize=7, label="p50" if i == 0 else None)
    ax.set_xticks(x, variants, rotation=20, ha="right")
    ax.set_yscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if hi < 20 * lo else ticker.NullFormatter())  # minor labels: narrow ranges only
    ax.set_ylabel("one-way delay (µs)")
    ax.set_title(title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return ax
