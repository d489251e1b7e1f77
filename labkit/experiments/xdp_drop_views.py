"""01-xdp-drop's load tests read back: the NDR/PDR table and the sentences about the
offered-load sweep, the searches and CPU at fixed loads (labkit/experiments/xdp_drop.py
runs them; `xdp_drop.search_table` and `xdp_drop.load_interpretation` are these)."""

from __future__ import annotations

from labkit.measure import loadsweep


def search_table(rows):
    """NDR/PDR per variant from search rows (or a whole table): median and spread of the
    searches, and whether the generator was the limit."""
    import pandas as pd

    if rows is not None and "kind" in rows.columns:
        rows = rows[rows["kind"] == "search"]
    if rows is None or rows.empty:
        return pd.DataFrame()
    g = rows.groupby(["variant", "measure"])
    out = g["value"].agg(["median", "min", "max", "count"]) / [1e6, 1e6, 1e6, 1]
    out.columns = ["Mpps (median)", "min", "max", "searches"]
    out["generator-limited"] = g["generator_limited"].agg(lambda v: bool(v.astype(bool).any()))
    return out.reset_index()


LOAD_KINDS = ("sweep", "search", "cpu_at_load")


def load_interpretation(table, kind: str | None = None) -> str:
    """The sentences about one part of the load tests (KIND: 'sweep', 'search' or
    'cpu_at_load'; all of them when None), computed from TABLE."""
    lines = _interpret_load(table, (kind,) if kind else LOAD_KINDS)
    return "\n".join(lines) if lines else f"No {kind or 'load test'} rows in this run."


def _interpret_sweep(sweep) -> list[str]:
    parts = []
    for v, g in sweep.groupby("variant", sort=False):
        pts = g.assign(target=g["target_pps"].fillna(-1.0)).pivot_table(
            index="target", columns="measure", values="value", aggfunc="mean"
        )
        if "received_pps" not in pts:
            continue
        targets = pts[pts.index >= 0].sort_index()
        ok = (targets["received_pps"] >= 0.99 * targets.index.to_series()).cummin()  # up to the first shortfall
        kept = targets[ok]
        text = (
            f"{v} received 99% or more of each target up to {kept.index.max() / 1e6:.2f} Mpps"
            if len(kept)
            else f"{v} fell short already at {targets.index.min() / 1e6:.2f} Mpps"
            if len(targets)
            else v
        )
        if -1.0 in pts.index:
            full = pts.loc[-1.0]
            text += f" and {full['received_pps'] / 1e6:.2f} of {full.get('offered_pps', float('nan')) / 1e6:.2f} Mpps at full speed"
        parts.append(text)
    if not parts:
        return []
    size = sweep["size"].min()
    return [f"Offered-load sweep ({int(size)}-byte frames, one set of targets for all): " + "; ".join(parts) + "."]


def _interpret_load(table, kinds=LOAD_KINDS) -> list[str]:
    lines = []
    if "kind" not in table.columns:
        return lines
    if "sweep" in kinds:
        lines += _interpret_sweep(table[table["kind"] == "sweep"])
    for name, label in (("ndr_pps", "No-drop rate (NDR)"), ("pdr_pps", "Partial-drop rate (PDR)")):
        found = table[(table["kind"] == "search") & (table["measure"] == name)]
        if found.empty or "search" not in kinds:
            continue
        med = found.groupby("variant")["value"].median().sort_values(ascending=False)
        lim = set(found[found["generator_limited"].astype(bool)]["variant"]) if "generator_limited" in found else set()
        th = found["threshold"].iloc[0] if "threshold" in found else 0
        lines.append(
            f"{label}, loss <= {th:.1%}, binary search up to the generator's maximum (a target the testbed "
            f"could not offer within {loadsweep.RATE_TOLERANCE:.0%} counts as loss): "
            + ", ".join(
                f"{v} {r / 1e6:.2f} Mpps" + (" (generator-limited)" if v in lim else "") for v, r in med.items()
            )
            + "."
        )
    cpu = table[(table["kind"] == "cpu_at_load") & (table["measure"] == "net_rx_cores")]
    if len(cpu) and "cpu_at_load" in kinds:
        load = cpu["target_pps"].min()
        at = cpu[cpu["target_pps"] == load].groupby("variant")["value"].mean().sort_values()
        lines.append(
            f"At a fixed {load / 1e6:.1f} Mpps, the receive path kept "
            + ", ".join(f"{v} {c:.2f}" for v, c in at.items())
            + " CPU cores busy."
        )
    return lines
