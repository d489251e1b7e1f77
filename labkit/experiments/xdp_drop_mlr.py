"""01-xdp-drop's NDR/PDR by MLRsearch, beside its binary search: the part's settings from
the experiment's parameters, the rows it adds, and the tables and sentences that read them
back (`xdp_drop` runs it on the same receiver and trial callable as its binary search).

Rows: kind ``mlrsearch`` (ndr_pps, pdr_pps; `lower_pps`/`upper_pps` its relevant bounds,
`complete`, `search_s`) and ``mlrsearch_trial`` (every trial MLRsearch ran, with its counts:
asked, sent, received, unsent, lost); the binary search's rows (kind ``search``) gain
`method` "binary", its own bracket (`lower_pps`: the highest passing rate, `upper_pps`:
the lowest failing target above it) and `search_s`.

The two NDRs agree when they differ by no more than the variant's trial spread (the
relative range of its side-by-side trials' processed rate at the search's frame size,
times the larger NDR) plus both searches' final brackets.
"""

from __future__ import annotations

import math

from labkit.errors import InputError
from labkit.measure import loadsweep, mlr

#: the names of this part's parameters in xdp_drop.Params
PARAMS = ("mlr_loss_ratios", "mlr_final_trial_s", "mlr_width", "mlr_time_budget_s")
#: mlr.Settings' names -> those parameters
NAMES = {
    "ndr_loss": "mlr_loss_ratios[0]",
    "pdr_loss": "mlr_loss_ratios[1]",
    "final_trial_s": "mlr_final_trial_s",
    "width": "mlr_width",
    "time_budget_s": "mlr_time_budget_s",
}


def settings(p) -> mlr.Settings:
    """The search's settings from P (xdp_drop.Params), checked (InputError)."""
    ratios = p.mlr_loss_ratios
    if (
        not isinstance(ratios, list)
        or len(ratios) > 2
        or (ratios and not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios))
    ):
        raise InputError(
            f"mlr_loss_ratios {ratios!r}: [NDR loss ratio, PDR loss ratio], e.g. [0.0, 0.005]; "
            "[0.0] for the NDR only; [] for no MLRsearch"
        )
    if not ratios:
        return None
    try:
        return mlr.Settings(
            ndr_loss=float(ratios[0]),
            pdr_loss=float(ratios[1]) if len(ratios) > 1 else None,
            final_trial_s=p.mlr_final_trial_s,
            width=p.mlr_width,
            time_budget_s=p.mlr_time_budget_s,
        ).validate()
    except InputError as exc:  # named as the experiment's parameters are
        name, _, rest = str(exc).partition(" ")
        raise InputError(f"{NAMES.get(name, name)} {rest}") from None


def search_rows(trial, top: float, p, variant: str, size: int) -> list[dict]:
    """MLRsearch on TRIAL (one variant set up), from the generator's maximum TOP down:
    its result rows and its trials' rows."""
    s = settings(p)
    found = mlr.search(
        trial,
        max_load_pps=top,
        ndr_loss=s.ndr_loss,
        pdr_loss=s.pdr_loss,
        final_trial_s=s.final_trial_s,
        width=s.width,
        time_budget_s=s.time_budget_s,
    )
    return found.rows(variant=variant, size=size) + found.trial_rows(variant=variant, size=size)


def binary_columns(found: loadsweep.SearchResult, seconds: float) -> list[dict]:
    """Columns for each row of FOUND's rows: the method, its bracket and its time."""
    out = []
    for rate, steps in zip(found.rates, found.steps):
        failed = [
            pt.target_pps
            for pt in steps
            if pt.target_pps is not None and pt.target_pps > rate and not (pt.loss_ratio <= found.loss_threshold)
        ]
        out.append(
            {
                "method": "binary",
                "lower_pps": float(rate),
                "upper_pps": min(failed) if failed else math.nan,
                "search_s": seconds / max(1, len(found.rates)),
            }
        )
    return out


# ---------------------------------------------------------------- reading the rows back
def found(table):
    """MLRsearch's result rows of TABLE."""
    if table is None or "kind" not in table.columns:
        return table.iloc[0:0] if table is not None else None
    return table[table["kind"] == mlr.KIND]


def mlr_table(table):
    """NDR/PDR by MLRsearch per variant: the conditional throughput, its relevant bounds,
    how many trials and seconds it took, and whether it finished within its budget."""
    import pandas as pd

    rows = found(table)
    if rows is None or rows.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "variant": rows["variant"],
            "measure": rows["measure"],
            "loss ratio": rows["threshold"],
            "Mpps": rows["value"] / 1e6,
            "lower bound": rows["lower_pps"] / 1e6,
            "upper bound": rows["upper_pps"] / 1e6,
            "trials": rows["iterations"].astype(int),
            "seconds": rows["search_s"],
            "complete": rows["complete"].astype(bool),
            "generator-limited": rows["generator_limited"].astype(bool),
        }
    )
    return out.round({"Mpps": 3, "lower bound": 3, "upper bound": 3, "seconds": 1}).reset_index(drop=True)


def _spread(table, size) -> dict:
    """{variant: relative range (max - min) / median} of the side-by-side trials' processed rate at SIZE."""
    t = table[(table["kind"] == "trial") & (table["measure"] == "processed_pps") & (table["size"] == size)]
    g = t.groupby("variant")["value"]
    return {v: (s.max() - s.min()) / s.median() if s.median() else 0.0 for v, s in g}


def side_by_side(table):
    """Per variant: NDR and PDR by the binary search and by MLRsearch (Mpps), how far apart
    their NDRs are, the tolerance (trial spread plus both brackets) and whether they agree,
    and each search's seconds."""
    import pandas as pd

    if table is None or "kind" not in table.columns:
        return pd.DataFrame()
    new = found(table)
    old = table[table["kind"] == "search"]
    if new.empty or old.empty:
        return pd.DataFrame()
    spread = _spread(table, new["size"].min())
    out = []
    for v in dict.fromkeys(list(old["variant"]) + list(new["variant"])):
        row = {"variant": v}
        for name, rows in (("binary", old), ("MLRsearch", new)):
            mine = rows[rows["variant"] == v]
            for m in ("ndr_pps", "pdr_pps"):
                vals = mine[mine["measure"] == m]["value"]
                row[f"{name} {m[:3].upper()} Mpps"] = vals.median() / 1e6 if len(vals) else math.nan
            # the binary search's rows are one search each; MLRsearch's rows share one search
            took = mine["search_s"] if "search_s" in mine and len(mine) else None
            row[f"{name} s"] = math.nan if took is None else took.sum() if name == "binary" else took.max()
        row.update(_agreement(old, new, v, spread.get(v, 0.0)))
        out.append(row)
    return pd.DataFrame(out).round(4)


def _bracket(rows) -> float:
    """The width (pps) of a search's final bracket; 0 where it has no upper bound."""
    if rows.empty or "upper_pps" not in rows or "lower_pps" not in rows:
        return 0.0
    w = (rows["upper_pps"] - rows["lower_pps"]).dropna()
    return float(w.max()) if len(w) else 0.0


def _agreement(old, new, variant, spread) -> dict:
    a = old[(old["variant"] == variant) & (old["measure"] == "ndr_pps")]
    b = new[(new["variant"] == variant) & (new["measure"] == "ndr_pps")]
    if a.empty or b.empty or b["value"].isna().all():
        return {"NDR apart %": math.nan, "tolerance %": math.nan, "NDRs agree": None, "trial spread %": spread * 100}
    x, y = a["value"].median(), b["value"].median()
    top = max(x, y)
    tol = spread * top + _bracket(a) + _bracket(b)
    return {
        "NDR apart %": abs(x - y) / top * 100 if top else 0.0,
        "tolerance %": tol / top * 100 if top else 0.0,
        "NDRs agree": bool(abs(x - y) <= tol),
        "trial spread %": spread * 100,
    }


def _missing(complete: bool) -> str:
    return "no lower bound: loss even at its min load" if complete else "no lower bound before the time budget ran out"


def interpret(table) -> list[str]:
    """Sentences: what MLRsearch found, and whether its NDRs agree with the binary search's."""
    rows = found(table)
    if rows is None or rows.empty:
        return []
    lines = []
    for m, label in (("ndr_pps", "NDR"), ("pdr_pps", "PDR")):
        r = rows[rows["measure"] == m]
        if r.empty:
            continue
        parts = [
            f"{v} "
            + (_missing(done) if math.isnan(x) else f"{x / 1e6:.3f} Mpps")
            + (" (generator-limited)" if lim else "")
            + ("" if done or math.isnan(x) else " (time budget ran out: the bounds so far)")
            for v, x, lim, done in zip(
                r["variant"], r["value"], r["generator_limited"].astype(bool), r["complete"].astype(bool)
            )
        ]
        lines.append(
            f"MLRsearch {label} (loss ratio <= {r['threshold'].iloc[0]:.1%}, width {r['width'].iloc[0]:.1%}, "
            f"final trials {r['final_trial_s'].iloc[0]:g} s): " + ", ".join(parts) + "."
        )
    both = side_by_side(table)
    if both.empty or both["NDRs agree"].isna().all():
        lines.append("No binary-search NDR in this run to compare MLRsearch's with.")
        return lines
    judged = both.dropna(subset=["NDRs agree"])
    agree, differ = judged[judged["NDRs agree"].astype(bool)], judged[~judged["NDRs agree"].astype(bool)]
    if len(agree):
        lines.append(
            "The binary search's and MLRsearch's NDRs agree within the trial spread (plus both searches' "
            "final brackets) for "
            + ", ".join(
                f"{r.variant} ({r['NDR apart %']:.1f}% apart; its trials ranged {r['trial spread %']:.1f}%, "
                f"tolerance with the brackets {r['tolerance %']:.1f}%)"
                for _, r in agree.iterrows()
            )
            + "."
        )
    if len(differ):
        lines.append(
            "They do NOT agree for "
            + ", ".join(
                f"{r.variant} (binary {r['binary NDR Mpps']:.3f} vs MLRsearch {r['MLRsearch NDR Mpps']:.3f} Mpps, "
                f"{r['NDR apart %']:.1f}% apart, more than the {r['tolerance %']:.1f}% the trial spread and brackets allow)"
                for _, r in differ.iterrows()
            )
            + ": on this shared machine, one search per method is one sample; "
            "repeat the run before reading a difference into it."
        )
    return lines
