"""The overview of every experiment's chosen runs side by side (`labkit.reporting.compare`
finds and picks the runs): rates and CPU per packet with spread, what is missing, the
warnings that matter, the published references, and a few sentences computed from it.

    ov = summary.overview()
    ov.summary, ov.missing, ov.warnings, ov.references, ov.interpretation
    ov.latency                                 # p50..max per run, variant and load, where a run measured it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labkit import experiments, results
from labkit.experiments import View
from labkit.reporting import latency_view
from labkit.reporting.compare import by_run, experiment_table, flag_warnings, flags_of, not_run, pick, run_label, runs
from labkit.reporting.standing import reference_table


@dataclass
class Overview:
    index: object  # runs(): every run in data/
    chosen: dict  # experiment -> pick() rows
    tables: dict  # experiment -> experiment_table()
    summary: object  # one row per experiment, run, variant
    views: dict = field(default_factory=dict)  # experiment -> the View it declares
    missing: list = field(default_factory=list)  # what could not be shown, and why
    warnings: list = field(default_factory=list)  # (experiment, run, text)
    references: object = None
    interpretation: str = ""
    latency: object = None  # reporting.latency_view.for_runs of every experiment's chosen runs

    def plot_table(self, experiment: str):
        """Tidy rows of EXPERIMENT's chosen runs, one plot group per run."""
        return by_run(self.tables.get(experiment, _empty()))

    @property
    def experiments(self) -> list:
        return [e for e in self.tables if len(self.tables[e])]


def _empty():
    import pandas as pd

    return pd.DataFrame(columns=results.COLUMNS + ["run"])


def overview(data_dir: Path | None = None, include_smoke: bool = True, per_machine: bool = True) -> Overview:
    """Every experiment's chosen runs side by side: rates and CPU per packet with spread,
    what is missing, the warnings that matter, and the published references."""
    import pandas as pd

    index = runs(data_dir)
    if not include_smoke:
        index = index[~index["smoke"]]
    chosen, tables, missing, warnings, rows, lat = {}, {}, [], [], [], []
    views = {v.experiment: v for v in experiments.views()}
    for view in views.values():
        pick_ = pick(index, view.experiment, per_machine)
        chosen[view.experiment] = pick_
        if pick_.empty:
            missing.append(
                f"{view.title}: no run of '{view.experiment}' in data/ — run notebooks/{view.notebook}.ipynb "
                f"(labkit run {view.notebook})"
            )
            tables[view.experiment] = _empty()
            continue
        table = experiment_table(view, pick_)
        tables[view.experiment] = table
        for _, run in pick_.iterrows():
            label = run_label(run)
            t = table[table["run"] == label]
            if run["smoke"]:
                missing.append(
                    f"{view.title}: only a smoke run from {run['machine']} ({run['run_id']}): "
                    f"one trial of few packets, so no spread; run {view.notebook} with default parameters"
                )
            missing += [
                f"{view.title}: variant {v} did not run in {run['run_id']}{why}" for v, why in not_run(view, run, t)
            ]
            warnings += [(view.experiment, run["run_id"], w) for w in list(run["caveats"]) + flag_warnings(t)]
            rows += summary_rows(view, t, run)
        lat.append(latency_view.for_runs(view, pick_, run_label))
    summary = pd.DataFrame(rows)
    refs = reference_table(tables, views.values())
    ov = Overview(
        index,
        chosen,
        tables,
        summary,
        views,
        missing,
        warnings,
        refs,
        latency=pd.concat([x for x in lat if len(x)], ignore_index=True)
        if any(len(x) for x in lat)
        else latency_view.summary(pd.DataFrame()),
    )
    ov.interpretation = interpret(ov)
    return ov


def summary_rows(view: View, t, run) -> list:
    rows = []
    variants = list(dict.fromkeys(t[t["measure"] == view.rate]["variant"]))
    flags = flags_of(t)
    for v in variants:
        r = t[(t["variant"] == v) & (t["measure"] == view.rate)]["value"].dropna()
        c = t[(t["variant"] == v) & (t["measure"] == view.cpu)]["value"].dropna()
        o = t[(t["variant"] == v) & (t["measure"] == "offered_pps")]["value"].dropna()
        rows.append(
            {
                "experiment": view.title,
                "run": run_label(run),
                "machine": run["machine"],
                "testbed": run.get("testbed", "?"),
                "variant": v,
                "size": t["size"].dropna().iloc[0] if t["size"].notna().any() else None,
                "offered Mpps": o.mean() / 1e6 if len(o) else float("nan"),
                "Mpps": r.mean() / 1e6,
                "Mpps min": r.min() / 1e6,
                "Mpps max": r.max() / 1e6,
                "CPU ns/pkt": c.mean() if len(c) else float("nan"),
                "CPU min": c.min() if len(c) else float("nan"),
                "CPU max": c.max() if len(c) else float("nan"),
                "trials": len(r),
                "flags": ", ".join(flags.get(v, [])),
            }
        )
    return rows


def run_counts(index):
    """Per experiment: how many runs data/ holds (full and smoke), from how many machines,
    the latest run and the format versions."""
    import pandas as pd

    if index is None or not len(index):
        return pd.DataFrame(columns=["experiment", "runs", "full runs", "machines", "latest", "format versions"])
    rows = []
    for exp, g in index.groupby("experiment"):
        rows.append(
            {
                "experiment": exp,
                "runs": len(g),
                "full runs": int((~g["smoke"]).sum()),
                "machines": g["machine"].nunique(),
                "latest": g.iloc[-1]["run_id"],
                "format versions": ", ".join(sorted({str(v) for v in g["format_version"]})),
                "unreadable": int((g["unreadable"] != "").sum()),
            }
        )
    return pd.DataFrame(rows)


def interpret(ov: Overview) -> str:
    """A few sentences computed from the overview."""
    lines = []
    if ov.summary is None or not len(ov.summary):
        return "No experiment runs in data/ yet: " + "; ".join(ov.missing)
    for title, g in ov.summary.groupby("experiment", sort=False):
        for run, r in g.groupby("run", sort=False):
            r = r.sort_values("Mpps", ascending=False)
            best, worst = r.iloc[0], r.iloc[-1]
            where = f", {best['testbed']}" if "testbed" in r.columns else ""
            text = (
                f"{title} ({run}{where}): {best['variant']} processed the most, {best['Mpps']:.3f} Mpps "
                f"(trials {best['Mpps min']:.3f}–{best['Mpps max']:.3f})"
            )
            if len(r) > 1 and worst["Mpps"] > 0:
                text += f", {best['Mpps'] / worst['Mpps']:.2f}× {worst['variant']}"
            cpu = r.dropna(subset=["CPU ns/pkt"])
            cpu = cpu[cpu["CPU ns/pkt"] > 0].sort_values("CPU ns/pkt")
            if len(cpu) > 1:
                text += (
                    f"; cheapest per packet {cpu.iloc[0]['variant']} {cpu.iloc[0]['CPU ns/pkt']:.0f} ns, "
                    f"dearest {cpu.iloc[-1]['variant']} {cpu.iloc[-1]['CPU ns/pkt']:.0f} ns"
                )
            limited = r[r["flags"].str.contains("generator-limited", na=False)]["variant"].tolist()
            if limited:
                text += f"; generator-limited (rate is a lower bound): {', '.join(limited)}"
            lines.append(text + ".")
    lines += latency_view.interpret(ov.latency)
    refs = ov.references
    for _, x in refs.iterrows() if refs is not None else ():
        if x["measured"] == x["measured"] and "pps" in x["unit"]:
            lines.append(
                f"Against {x['reference']} ({x['published'] / 1e6:.1f} Mpps per core, bare metal): "
                f"{x['counterpart here']} {x['measured'] / 1e6:.2f} Mpps here "
                f"({x['measured / published'] * 100:.1f}%)"
                + (
                    f", {x['per-core equivalent'] / 1e6:.1f} Mpps per core judged by CPU time"
                    if x["per-core equivalent"] == x["per-core equivalent"]
                    else ""
                )
                + "."
            )
    if ov.missing:
        lines.append("Missing: " + "; ".join(ov.missing))
    return "\n".join(lines)
