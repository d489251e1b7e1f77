"""Plots of tidy result tables. The only module that imports matplotlib.

Every figure shows spread (min..max over trials as error bars, trials as dots) and, for
rates, the offered rate beside the processed one so a reader sees which side limited a run.

A plot takes exactly the rows it describes: bars take one part of a run (the side-by-side
trials: ``result.part("trial")``), a load curve the sweep rows, `at_loads` the rows at fixed
loads, `search_rates` the NDR/PDR search rows. Given rows of several parts (a whole table
whose ``kind`` column holds trials and sweeps), a bar plot refuses, naming the parts, rather
than average unlike things into one bar. Each bar is the same statistic of the same rows as
the experiment's table beside it (mean, or median for searches), its whiskers their min..max.
"""

from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from labkit.errors import InputError  # noqa: E402

SCALE = {"pps": (1e6, "Mpps"), "Mbit/s": (1.0, "Mbit/s"), "ns/packet": (1.0, "ns per packet"), "ratio": (1.0, "ratio")}


def one_part(table, measures):
    """TABLE's rows of MEASURES, which must come from one part of a run (one `kind`)."""
    measures = [m for m in measures if m]
    t = table[table["measure"].isin(measures)]
    if "kind" in t.columns:
        kinds = sorted({str(k) for k in t["kind"].dropna() if str(k)})
        if len(kinds) > 1:
            raise InputError(
                f"rows of {', '.join(measures)} come from several parts of the run ({', '.join(kinds)}): "
                f"plot one, e.g. result.part({kinds[-1]!r})"
            )
    return t


def _groups(table, measure):
    t = table[table["measure"] == measure]
    sizes = sorted(t["size"].dropna().unique())
    variants = list(dict.fromkeys(t["variant"]))
    return t, sizes, variants


def bars_of(ax) -> list:
    """The bar containers of AX, one per variant (labelled with it)."""
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def grouped_bars(
    table,
    measure: str,
    *,
    ax=None,
    title: str | None = None,
    offered_measure: str | None = None,
    variants: list | None = None,
    log: bool = False,
    stat: str = "mean",
    xlabel: str = "frame size",
    group_label=None,
):
    """Bars of MEASURE per packet size (groups) and variant (bars): the STAT (mean or
    median) of its rows with min..max error bars and each row as a dot. With
    OFFERED_MEASURE, the mean offered rate of each bar's rows is drawn as a black tick.
    TABLE holds the rows of one part of a run (see `one_part`). XLABEL and GROUP_LABEL (a
    function of the size) name the groups where they are not frame sizes (e.g. TCP
    streams). The legend sits beside the axes, so it never covers a bar."""
    table = one_part(table, [measure, offered_measure])
    t, sizes, found = _groups(table, measure)
    variants = [v for v in (variants or found) if v in found]
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sizes) * max(1, len(variants)) / 2), 4))
    unit = t["unit"].iloc[0] if len(t) else ""
    div, label = SCALE.get(unit, (1.0, unit))
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(sizes))
    for i, v in enumerate(variants):
        means, lo, hi, xs = [], [], [], []
        for j, s in enumerate(sizes):
            vals = t[(t["variant"] == v) & (t["size"] == s)]["value"].dropna() / div
            xs.append(x[j] + (i - (len(variants) - 1) / 2) * width)
            means.append(getattr(vals, stat)() if len(vals) else np.nan)
            lo.append(vals.min() if len(vals) else np.nan)
            hi.append(vals.max() if len(vals) else np.nan)
            ax.scatter([xs[-1]] * len(vals), vals, color="k", s=6, zorder=3)
        means, lo, hi = map(np.array, (means, lo, hi))
        ax.bar(xs, means, width * 0.95, label=v, yerr=[means - lo, hi - means], capsize=3, zorder=2)
        if offered_measure:
            off = table[(table["measure"] == offered_measure) & (table["variant"] == v)]
            om = [off[off["size"] == s]["value"].mean() / div for s in sizes]
            ax.scatter(xs, om, marker="_", s=300, color="k", zorder=4, label="offered" if i == 0 else None)
    ax.set_xticks(x)
    name = group_label or (lambda s: f"{int(s)} B" if isinstance(s, (int, float, np.integer, np.floating)) else str(s))
    ax.set_xticklabels([name(s) for s in sizes])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(label)
    if log:
        ax.set_yscale("log")
    ax.set_title(title or measure)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.figure.tight_layout()
    return ax


def throughput(table, measure: str = "processed_pps", offered_measure: str = "offered_pps", **kw):
    """Processed packet rate per variant and size, with the offered rate marked."""
    return grouped_bars(
        table,
        measure,
        offered_measure=offered_measure,
        title=kw.pop("title", "Packets processed per second (mean, min..max over trials)"),
        **kw,
    )


def cpu_per_packet(table, measure: str = "cpu_ns_per_pkt", **kw):
    return grouped_bars(table, measure, title=kw.pop("title", "Receiving-side CPU time per packet"), **kw)


def program_cost(costs, ax=None, title: str = "Program cost per packet (BPF_PROG_TEST_RUN)"):
    """Horizontal bars of ns per packet per program, trials as dots."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.6 * max(2, costs["variant"].nunique()) + 1))
    names = list(dict.fromkeys(costs["variant"]))
    for i, n in enumerate(names):
        vals = costs[costs["variant"] == n]["value"]
        ax.barh(i, vals.mean(), xerr=[[vals.mean() - vals.min()], [vals.max() - vals.mean()]], capsize=3)
        ax.scatter(vals, [i] * len(vals), color="k", s=6, zorder=3)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("ns per packet")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def with_references(ax, refs, unit_divisor: float = 1e6):
    """Draw labelled reference values (labkit.references) as dashed lines."""
    for r in refs:
        ax.axhline(r.value / unit_divisor, linestyle="--", linewidth=1, color="grey")
        ax.annotate(r.label, (0, r.value / unit_divisor), fontsize=7, color="grey", va="bottom")
    return ax


def sweep_points(rows, y: str = "received_pps"):
    """One row per variant and sweep point of sweep ROWS: the rate actually offered
    (``offered``, mean over the point's trials), the target (NaN for the full-speed point)
    and Y's mean, min and max: what `load_curve` draws."""
    import pandas as pd

    rows = one_part(rows, [y, "offered_pps"])
    point = rows["target_pps"].fillna(-1.0) if "target_pps" in rows else pd.Series(-1.0, index=rows.index)
    t = rows.assign(point=point.values)
    out = []
    for (v, target), g in t.groupby(["variant", "point"], sort=False):
        ys, off = g[g["measure"] == y]["value"], g[g["measure"] == "offered_pps"]["value"]
        if len(ys):
            out.append(
                {
                    "variant": v,
                    "target": target if target >= 0 else float("nan"),
                    "offered": off.mean(),
                    "mean": ys.mean(),
                    "min": ys.min(),
                    "max": ys.max(),
                }
            )
    return pd.DataFrame(out, columns=["variant", "target", "offered", "mean", "min", "max"])


def load_curve(rows, y: str = "received_pps", ax=None, title: str | None = None):
    """Y (what reached the hook) against the target offered rate, one line per variant,
    from sweep rows (labkit.measure.loadsweep; ``result.part("sweep")``): the canonical
    picture for comparing packet processors. A target the testbed could not offer shows as
    a point below the diagonal (the sweep counts the shortfall as loss); the full-speed
    point (no target) is a star at the rate the generator reached. The band is min..max
    over the point's trials."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    pts = sweep_points(rows, y)
    for i, v in enumerate(dict.fromkeys(pts["variant"])):
        t = pts[(pts["variant"] == v) & pts["target"].notna()].sort_values("target")
        line = ax.plot(t["target"] / 1e6, t["mean"] / 1e6, marker="o", label=v)[0]
        ax.fill_between(t["target"] / 1e6, t["min"] / 1e6, t["max"] / 1e6, color=line.get_color(), alpha=0.2)
        full = pts[(pts["variant"] == v) & pts["target"].isna()]
        ax.scatter(
            full["offered"] / 1e6,
            full["mean"] / 1e6,
            marker="*",
            s=120,
            color=line.get_color(),
            zorder=3,
            label="full speed (at the rate reached)" if i == 0 else None,
        )
    lim = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([0, lim], [0, lim], linestyle=":", color="grey", label="received = offered")
    ax.set_xlabel("target offered rate (full speed: the rate reached), Mpps")
    ax.set_ylabel("received at the hook, Mpps")
    ax.set_title(title or "Throughput against offered load")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def at_loads(rows, measure: str = "net_rx_cores", ax=None, title: str | None = None):
    """A measure at fixed offered loads (e.g. receive-path CPU cores busy), bars per load
    and variant, as in the CPU-against-load figure of the XDP paper."""
    t = one_part(rows, [measure])
    t = t[t["measure"] == measure].assign(size=t["target_pps"] / 1e6)
    ax = grouped_bars(t, measure, ax=ax, title=title or f"{measure} at fixed offered loads")
    ax.set_xticklabels([f"{x:g} Mpps" for x in sorted(t["size"].dropna().unique())])
    ax.set_xlabel("target offered load")
    ax.set_ylabel(
        {"net_rx_cores": "CPU cores busy in the receive path", "busy_fraction": "fraction of all CPUs busy"}.get(
            measure, measure
        )
    )
    return ax


def search_rates(rows, ax=None, title: str | None = None):
    """The rates the NDR/PDR searches found (``result.part("search")``), one group per loss
    threshold and one bar per variant: the median over searches with min..max, as in the
    experiment's search table; a hatched bar was generator-limited (a lower bound)."""
    t = one_part(rows, ["ndr_pps", "pdr_pps"])
    t = t[t["measure"].isin(["ndr_pps", "pdr_pps"])]
    label = {
        m: ("NDR (no loss)" if m == "ndr_pps" else f"PDR (loss ≤ {th:.1%})")
        for m, th in zip(t["measure"], t["threshold"] if "threshold" in t else [0] * len(t))
    }
    t = t.assign(size=[label[m] for m in t["measure"]], measure="found_pps")
    ax = grouped_bars(
        t,
        "found_pps",
        ax=ax,
        stat="median",
        title=title or "Highest rate within the loss threshold (median, min..max over searches)",
    )
    if "generator_limited" in t:
        limited = {(v, s) for v, s, g in zip(t["variant"], t["size"], t["generator_limited"]) if str(g) == "True"}
        groups = sorted(t["size"].unique())
        for c in bars_of(ax):
            for bar, s in zip(c.patches, groups):
                if (c.get_label(), s) in limited:
                    bar.set_hatch("//")
    ax.set_xlabel("search")
    return ax


def latency_cdf(cdf, trial: int = 0, *, loaded: str = "background at {:.0%} of its PDR", plain: bool = False):
    """The probes' delay CDF per variant of TRIAL, one panel per load (no load, then each
    fraction of the PDR: LOADED.format(it)), log time axis (PLAIN: plain ticks). The
    figure; with no probes in CDF (latency off or skipped), one empty panel that says so."""
    import pandas as pd
    from matplotlib import ticker

    from labkit.measure.latency_profile import LOAD

    cdf = cdf if isinstance(cdf, pd.DataFrame) else pd.DataFrame(cdf)
    if not len(cdf) or not {"variant", "trial", LOAD, "delay_us", "fraction"} <= set(cdf.columns):
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no latency probes in this run", ha="center", va="center")
        ax.set_axis_off()
        return fig
    loads = sorted(cdf[LOAD].unique())
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 3.6), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], loads):
        g = cdf[(cdf[LOAD] == f) & (cdf["trial"] == trial)]
        for v, gv in g.groupby("variant"):
            ax.step(gv["delay_us"], gv["fraction"], where="post", label=v)
        ax.set_xscale("log")
        if plain:
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("one-way delay (µs)")
        ax.set_title("no load" if f == 0 else loaded.format(f))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of probes")
    axes[0][-1].legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


#: where a percentile plot's x ticks sit (CSIT's: 0, 90, 99, 99.9 ... %); the top level a
#: curve is drawn to (100% would lie at infinity on this axis)
PERCENTILE_TICKS, PERCENTILE_TOP = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999), 99.999


def _percentile_x(p: float) -> float:
    """A percentile's place on the x axis: 1 / (1 - p), so 0% at 1, 90% at 10, 99% at 100."""
    return 100.0 / (100.0 - min(p, PERCENTILE_TOP))


def latency_percentiles(
    histograms, *, title: str = "one-way delay by percentile", loaded: str = "{:.0%} of its PDR", columns: int = 3
):
    """HDR latency as FD.io CSIT draws it: a panel per variant, one step curve per load (no
    load, then each fraction of the variant's PDR: LOADED.format(it)), x the percentile on
    a log scale of 1/(1-p) (0, 90, 99, 99.9 ... %), y the delay (µs, log) at or below
    which that share of the probes arrived. HISTOGRAMS: {(variant, load fraction): histogram}
    (`labkit.measure.hdr.by_point`: every trial's probes merged) or a run's table, whose
    histogram rows are read that way. The figure; without histograms, one panel that says so."""
    from matplotlib import ticker

    from labkit.measure import hdr

    if not isinstance(histograms, dict):
        histograms = hdr.by_point(histograms)
    points = {k: h for k, h in histograms.items() if h.get_total_count()}
    if not points:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no latency histograms in this run", ha="center", va="center")
        ax.set_axis_off()
        return fig
    variants = list(dict.fromkeys(v for v, _ in points))
    loads = sorted({f for _, f in points})
    colors = dict(zip(loads, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    cols = min(columns, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), sharey=True, squeeze=False)
    ticks = [_percentile_x(p) for p in PERCENTILE_TICKS]
    for ax, v in zip(axes.flat, variants):
        for f in loads:
            if (v, f) not in points:
                continue
            h = points[(v, f)]
            xs, ys, prev = [], [], 1.0
            for level, ns in hdr.steps(h):
                nxt = _percentile_x(level)
                xs += [prev, nxt]
                ys += [ns / 1e3, ns / 1e3]
                prev = nxt
            ax.plot(xs, ys, color=colors[f], label="no load" if not f else loaded.format(f))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [f"{p:g}%" for p in PERCENTILE_TICKS])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlim(1, ticks[-1])
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.set_title(v)
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("one-way delay (µs)")
    for ax in list(axes.flat)[len(variants) :]:
        ax.set_axis_off()
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="upper center",
        ncols=len(handles),
        fontsize="small",
        bbox_to_anchor=(0.5, 0.94),
    )
    return fig


def to_png(ax_or_fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot lets it go)."""
    import io

    fig = ax_or_fig.figure if hasattr(ax_or_fig, "figure") else ax_or_fig
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save(ax_or_fig, path) -> None:
    fig = ax_or_fig.figure if hasattr(ax_or_fig, "figure") else ax_or_fig
    fig.tight_layout()
    fig.savefig(path, dpi=110)
