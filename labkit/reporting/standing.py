"""Where this data stands against published reference values: each reference an
experiment's View names (`labkit.experiments.View.references`) beside the nearest
counterpart measured here, as a rate and as the per-core equivalent of the measured CPU
time. The references are never mixed with our results, only shown beside them."""

from __future__ import annotations

from labkit import experiments


def _pick(tables, experiment, variants, measure, lowest: bool = False):
    """(value, variant, run) of the highest mean of MEASURE over one run and variant of
    VARIANTS (LOWEST: the lowest above 0, for CPU time), or None where there is none."""
    t = tables.get(experiment)
    if t is None or not len(t):
        return None
    t = t[(t["measure"] == measure) & t["variant"].isin(variants)]
    g = t.groupby(["run", "variant"])["value"].mean()
    if lowest:
        g = g.dropna()
        g = g[g > 0]
    if g.empty:
        return None
    (run, variant), value = (g.idxmin(), g.min()) if lowest else (g.idxmax(), g.max())
    return value, variant, run


def reference_table(tables, views=None):
    """Each published reference an experiment's View names, beside this data's nearest
    counterpart: the measured rate, and the per-core equivalent of the measured CPU time
    (1e9 / ns per packet, the rate one core would reach doing only this work)."""
    import pandas as pd

    rows = []
    for view, ref, variants, kind in [(v, *r) for v in (views or experiments.views()) for r in v.references]:
        exp, variants = view.experiment, list(variants)
        row = {
            "reference": ref.label,
            "published": ref.value,
            "unit": ref.unit,
            "source": ref.source,
            "counterpart here": "no run",
            "measured": float("nan"),
            "per-core equivalent": float("nan"),
            "measured / published": float("nan"),
        }
        best = _pick(tables, exp, variants, view.rate)
        if kind == "Mbit/s":
            if best:
                t = tables[exp]
                size = t[(t["run"] == best[2]) & (t["variant"] == best[1])]["size"].dropna()
                mbps = best[0] * (size.iloc[0] if len(size) else 64) * 8 / 1e6
                row["counterpart here"], row["measured"] = f"{best[1]} ({best[2]}), frame bytes", mbps
                row["measured / published"] = mbps / ref.value
        else:
            cheap = _pick(tables, exp, variants, view.cpu, lowest=True)
            if best:
                what = best[1] + (f" ({view.title.lower()}, not drop)" if "drop" not in view.title.lower() else "")
                row["counterpart here"], row["measured"] = f"{what} ({best[2]})", best[0]
                row["measured / published"] = best[0] / ref.value
            if cheap:
                row["per-core equivalent"] = 1e9 / cheap[0]
        rows.append(row)
    return pd.DataFrame(rows)


def reference_view(refs):
    """The reference table for reading: rates in Mpps (or Mbit/s), ratios in percent."""
    import pandas as pd

    def fmt(value, unit):
        if value != value:
            return "—"
        return f"{value / 1e6:.2f} Mpps" if "pps" in unit else f"{value:.0f} {unit}"

    return pd.DataFrame(
        {
            "reference": refs["reference"],
            "published": [
                fmt(v, u) + (" per core" if "core" in u else "") for v, u in zip(refs["published"], refs["unit"])
            ],
            "counterpart here": refs["counterpart here"],
            "measured here": [fmt(v, u) for v, u in zip(refs["measured"], refs["unit"])],
            "measured / published": [f"{x * 100:.1f}%" if x == x else "—" for x in refs["measured / published"]],
            "per-core equivalent (1e9 / CPU ns)": [fmt(v, "pps") for v in refs["per-core equivalent"]],
            "source": refs["source"],
        }
    )
