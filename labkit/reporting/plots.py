"""Plots of tidy result tables. The only module that imports matplotlib.

Every figure shows spread (min..max over trials as error bars, trials as dots) and, for
rates, the offered rate beside the processed one so a reader sees which side limited a run.
"""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SCALE = {"pps": (1e6, "Mpps"), "Mbit/s": (1.0, "Mbit/s"), "ns/packet": (1.0, "ns per packet"), "ratio": (1.0, "ratio")}


def _groups(table, measure):
    t = table[table["measure"] == measure]
    sizes = sorted(t["size"].dropna().unique())
    variants = list(dict.fromkeys(t["variant"]))
    return t, sizes, variants


def grouped_bars(table, measure: str, *, ax=None, title: str | None = None, offered_measure: str | None = None,
                 variants: list | None = None, log: bool = False):
    """Bars of MEASURE per packet size (groups) and variant (bars): mean with min..max
    error bars and each trial as a dot. With OFFERED_MEASURE, the offered rate of each
    bar is drawn as a black tick above it."""
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
            means.append(vals.mean() if len(vals) else np.nan)
            lo.append(vals.min() if len(vals) else np.nan)
            hi.append(vals.max() if len(vals) else np.nan)
            ax.scatter([xs[-1]] * len(vals), vals, color="k", s=6, zorder=3)
        means, lo, hi = map(np.array, (means, lo, hi))
        ax.bar(xs, means, width * 0.95, label=v, yerr=[means - lo, hi - means], capsize=3, zorder=2)
        if offered_measure:
            off = table[(table["measure"] == offered_measure) & (table["variant"] == v)]
            om = [off[off["size"] == s]["value"].mean() / div for s in sizes]
            ax.scatter(xs, om, marker="_", s=300, color="k", zorder=4,
                       label="offered" if i == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{int(s)} B" if isinstance(s, (int, float, np.integer, np.floating)) else str(s) for s in sizes])
    ax.set_xlabel("frame size")
    ax.set_ylabel(label)
    if log:
        ax.set_yscale("log")
    ax.set_title(title or measure)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=2)
    return ax


def throughput(table, measure: str = "processed_pps", offered_measure: str = "offered_pps", **kw):
    """Processed packet rate per variant and size, with the offered rate marked."""
    return grouped_bars(table, measure, offered_measure=offered_measure,
                        title=kw.pop("title", "Packets processed per second (mean, min..max over trials)"), **kw)


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


def load_curve(rows, y: str = "received_pps", ax=None, title: str | None = None):
    """Received rate against the target offered rate, one line per variant, from sweep rows
    (labkit.loadsweep): the canonical picture for comparing packet processors. The
    full-speed point (no target) is placed at the rate the generator reached."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    keys = [k for k in ("variant", "trial", "step") if k in rows.columns]
    w = rows.pivot_table(index=keys, columns="measure", values="value").reset_index()
    target = rows.groupby(keys)["target_pps"].first().reset_index(drop=True) if "target_pps" in rows else None
    w["x"] = target.fillna(w["offered_pps"]).values if target is not None else w["offered_pps"]
    for v in dict.fromkeys(rows["variant"]):
        t = w[w["variant"] == v].groupby("x")[y].agg(["mean", "min", "max"]).reset_index().sort_values("x")
        line = ax.plot(t["x"] / 1e6, t["mean"] / 1e6, marker="o", label=v)[0]
        ax.fill_between(t["x"] / 1e6, t["min"] / 1e6, t["max"] / 1e6, color=line.get_color(), alpha=0.2)
    lim = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([0, lim], [0, lim], linestyle=":", color="grey", label="received = offered")
    ax.set_xlabel("offered (target) rate, Mpps")
    ax.set_ylabel("received at the hook, Mpps")
    ax.set_title(title or "Throughput against offered load")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def at_loads(rows, measure: str = "net_rx_cores", ax=None, title: str | None = None):
    """A measure at fixed offered loads (e.g. receive-path CPU cores busy), bars per load
    and variant, as in the CPU-against-load figure of the XDP paper."""
    t = rows[rows["measure"] == measure].copy()
    t["size"] = t["target_pps"] / 1e6
    ax = grouped_bars(t, measure, ax=ax, title=title or f"{measure} at fixed offered loads")
    ax.set_xticklabels([f"{x:g} Mpps" for x in sorted(t["size"].unique())])
    ax.set_xlabel("offered load")
    ax.set_ylabel({"net_rx_cores": "CPU cores busy in the receive path",
                   "busy_fraction": "fraction of all CPUs busy"}.get(measure, measure))
    return ax


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
