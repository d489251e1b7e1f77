"""Comparisons across runs: every run in data/, from this machine or others, keyed by its
metadata (experiment, host, CPU, kernel, testbed, commit, parameters).

    runs = compare.runs()                      # one row per run in data/, what it is and where from
    ov = compare.overview()                    # per experiment: the run(s) to show, rates and CPU
    ov.summary, ov.missing, ov.warnings, ov.references, ov.interpretation
    ov.latency                                 # p50..max per run, variant and load, where a run measured it
    diff = compare.compare_runs(before, after) # two runs (paths or run ids), one call
    diff.table[diff.table["beyond_spread"]]    # differences larger than trial-to-trial spread
    print(diff)

A difference is called *beyond spread* when the two runs' ranges over trials (min..max)
do not overlap and each run has at least two trials of the measure; with one trial the
spread is unknown and the difference is never called beyond it. This is deliberately
conservative: on a shared 2-core machine a single trial proves little.

What is shown for each experiment is what the experiment declares in its module
(``VIEW``, an `labkit.experiments.View`): its packet rate, its CPU time per packet, the rows
they come from and the published references they stand beside; this module knows no
experiment by name (`labkit.experiments.views()` finds them). Which run is shown: per
experiment and machine (host, CPU model, kernel), the latest run that is not a smoke run
and has two or more trials, else the latest full run, else the latest smoke run, marked
as such.

Testbeds. Every run carries the testbed it was measured on, read from its metadata
(`testbeds.testbed_of`: this machine's namespace testbed, an inventory's hosts, a Dask
cluster's worker); runs are picked per machine *and* testbed, and every row of the
summary and of the latency table names its run and testbed, so two testbeds' numbers are
shown side by side and never averaged together. Latency (one-way, p50/p99 at no load and
under load) is shown for every experiment whose runs recorded rows of kind 'latency'
(`reporting.latency_view`), found in the data, not by name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from labkit import experiments, results
from labkit.errors import InputError
from labkit.experiments import View
from labkit.reporting import latency_view
from labkit.reporting.standing import reference_table
from labkit.reporting.testbeds import testbed_of

FLAG_WARNINGS = {
    "generator-limited": "generator-limited: the variant processed (nearly) all the generator offered, so its rate "
                         "is the generator's, a lower bound",
    "loss-before-hook": "loss before the hook: more than 1% of offered packets never reached the variant's counter",
    "offered-mismatch": "offered mismatch: the sender's link counter disagrees with the generator's count",
    "unexpected-verdict": "a program returned another verdict than its working path's",
}


# ---------------------------------------------------------------- the runs in data/
def _meta(path: Path) -> dict:
    try:
        return json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}


def machine_of(meta: dict) -> str:
    """A short label of where a run was measured: host, CPU model x count, kernel."""
    return f"{meta.get('host', '?')} · {meta.get('cpu_model', '?')} ×{meta.get('cpus', '?')} · {meta.get('kernel', '?')}"


def runs(data_dir: Path | None = None, experiment: str | None = None):
    """One row per run in data/ (newest last): experiment, run_id, time, machine, commit,
    smoke or full, format version, the variants requested and measured, caveats."""
    import pandas as pd

    rows = []
    for path in results.list_runs(experiment, data_dir):
        meta = _meta(path)
        params = meta.get("parameters") or {}
        git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
        try:
            table = results.load_run(path).table
            measured = list(dict.fromkeys(table["variant"].dropna()))
            trials = int(params.get("trials") or table["trial"].nunique())  # cost trials may differ
            error = ""
        except Exception as exc:  # a run this labkit cannot read is listed with the reason
            measured, trials, error = [], 0, f"{type(exc).__name__}: {exc}"
        rows.append({
            "experiment": path.parent.name, "run_id": path.name, "time_utc": meta.get("time_utc", ""),
            "machine": machine_of(meta), "testbed": testbed_of(meta), "host": meta.get("host"), "kernel": meta.get("kernel"),
            "cpu_model": meta.get("cpu_model"), "commit": (git.get("commit") or "?")[:10],
            "dirty": bool(git.get("dirty")), "smoke": bool(params.get("smoke")), "trials": trials,
            "format_version": meta.get("format_version", "?"),
            "requested": list(params.get("variants") or []), "measured": measured,
            "caveats": list(meta.get("caveats") or []), "unreadable": error, "path": path,
        })
    cols = ["experiment", "run_id", "time_utc", "machine", "testbed", "host", "kernel", "cpu_model", "commit", "dirty", "smoke", "trials",
            "format_version", "requested", "measured", "caveats", "unreadable", "path"]
    return pd.DataFrame(rows, columns=cols).sort_values(["experiment", "time_utc", "run_id"]).reset_index(drop=True)


def find_run(run, data_dir: Path | None = None) -> results.Run:
    """A run given as a results.Run, a run directory, or a run id (or its unique start,
    e.g. the prefix 'lk3a1d' or '20261125T170519Z') searched in data/."""
    if isinstance(run, results.Run):
        return run
    p = Path(run)
    if (p / "results.csv").exists():
        return results.load_run(p)
    hits = [q for q in results.list_runs(None, data_dir) if q.name == str(run) or str(run) in q.name]
    if len(hits) != 1:
        have = ", ".join(q.name for q in results.list_runs(None, data_dir)[-8:])
        raise InputError(f"run {run!r}: {'no' if not hits else len(hits)} runs match in data/; give a run directory "
                         f"or a unique run id (latest: {have})")
    return results.load_run(hits[0])


def pick(index, experiment: str, per_machine: bool = True):
    """The rows of INDEX (from `runs()`) to show for EXPERIMENT: per machine and testbed, the
    latest full run with two or more trials (a spread to show), else the latest full run,
    else the latest smoke run."""
    t = index[(index["experiment"] == experiment) & (index["unreadable"] == "")]
    if t.empty:
        return t
    keys = ["machine", "testbed"] if "testbed" in t.columns else ["machine"]
    groups = t.groupby(keys, sort=False) if per_machine else [(None, t)]
    chosen = []
    for _, g in groups:
        full = g[~g["smoke"]]
        spread = full[full["trials"] >= 2]
        chosen.append((spread if len(spread) else full if len(full) else g).iloc[-1])
    import pandas as pd

    return pd.DataFrame(chosen).reset_index(drop=True)


# ---------------------------------------------------------------- one experiment, some runs
def headline_size(table, view: View):
    sizes = table[table["measure"] == view.rate]["size"].dropna()
    return sizes.min() if len(sizes) else None


def run_label(row) -> str:
    return f"{row['run_id']}" + (" (smoke)" if row.get("smoke") else "")


def experiment_table(view: View, chosen, size=None):
    """Tidy rows of the CHOSEN runs (from `pick`) for VIEW's rate and CPU measures at the
    headline frame size, with `run` (a label) and `machine` columns."""
    import pandas as pd

    frames = []
    for _, row in chosen.iterrows():
        t = view.rows(results.load_run(row["path"]).table)
        at = size if size is not None else headline_size(t, view)
        if at is not None:
            t = t[t["size"] == at]
        t = t[t["measure"].isin([view.rate, view.cpu, "offered_pps", "processed_mbps"])].copy()
        t["run"], t["machine"], t["smoke"] = run_label(row), row["machine"], row["smoke"]
        t["testbed"] = row.get("testbed", "?")
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=results.COLUMNS + ["run"])


def by_run(table):
    """TABLE with its `size` column replaced by the run label, so a grouped bar plot draws
    one group per run (and the frame size goes into the label)."""
    t = table.copy()
    if len(t):
        t["size"] = [f"{r} · {int(s)} B" if s == s else r for r, s in zip(t["run"], t["size"])]
    return t


def flags_of(table, measure: str = "processed_pps") -> dict:
    """{variant: sorted flags raised in any trial} for MEASURE's rows."""
    t = table[table["measure"] == measure]
    out = {}
    for v, f in zip(t["variant"], t["flags"].fillna("")):
        out.setdefault(v, set()).update(x for x in str(f).split(";") if x)
    return {v: sorted(f) for v, f in out.items()}


def flag_warnings(table) -> list[str]:
    """'variant: what the flag means' for every flag raised in TABLE's rate rows."""
    return [f"{v}: {FLAG_WARNINGS.get(f, f)}" for v, flags in flags_of(table).items() for f in flags]


def not_run(view: View, run, table) -> list[tuple[str, str]]:
    """[(variant, why)] for each variant RUN asked for with no VIEW rate in TABLE: why is ': '
    and the first caveat that names it, else ' (no reason recorded)'."""
    got = set(table[table["measure"] == view.rate]["variant"])
    return [(v, next((f": {c}" for c in run["caveats"] if v in c), " (no reason recorded)"))
            for v in run["requested"] if v not in got and v not in view.exclude]


# ---------------------------------------------------------------- the overview
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
            missing.append(f"{view.title}: no run of '{view.experiment}' in data/ — run notebooks/{view.notebook}.ipynb "
                           f"(labkit run {view.notebook})")
            tables[view.experiment] = _empty()
            continue
        table = experiment_table(view, pick_)
        tables[view.experiment] = table
        for _, run in pick_.iterrows():
            label = run_label(run)
            t = table[table["run"] == label]
            if run["smoke"]:
                missing.append(f"{view.title}: only a smoke run from {run['machine']} ({run['run_id']}): "
                               f"one trial of few packets, so no spread; run {view.notebook} with default parameters")
            missing += [f"{view.title}: variant {v} did not run in {run['run_id']}{why}"
                        for v, why in not_run(view, run, t)]
            warnings += [(view.experiment, run["run_id"], w) for w in list(run["caveats"]) + flag_warnings(t)]
            rows += _summary_rows(view, t, run)
        lat.append(latency_view.for_runs(view, pick_, run_label))
    summary = pd.DataFrame(rows)
    refs = reference_table(tables, views.values())
    ov = Overview(index, chosen, tables, summary, views, missing, warnings, refs,
                  latency=pd.concat([x for x in lat if len(x)], ignore_index=True) if any(len(x) for x in lat)
                  else latency_view.summary(pd.DataFrame()))
    ov.interpretation = interpret(ov)
    return ov


def _summary_rows(view: View, t, run) -> list:
    rows = []
    variants = list(dict.fromkeys(t[t["measure"] == view.rate]["variant"]))
    flags = flags_of(t)
    for v in variants:
        r = t[(t["variant"] == v) & (t["measure"] == view.rate)]["value"].dropna()
        c = t[(t["variant"] == v) & (t["measure"] == view.cpu)]["value"].dropna()
        o = t[(t["variant"] == v) & (t["measure"] == "offered_pps")]["value"].dropna()
        rows.append({
            "experiment": view.title, "run": run_label(run), "machine": run["machine"],
            "testbed": run.get("testbed", "?"), "variant": v,
            "size": t["size"].dropna().iloc[0] if t["size"].notna().any() else None,
            "offered Mpps": o.mean() / 1e6 if len(o) else float("nan"),
            "Mpps": r.mean() / 1e6, "Mpps min": r.min() / 1e6, "Mpps max": r.max() / 1e6,
            "CPU ns/pkt": c.mean() if len(c) else float("nan"),
            "CPU min": c.min() if len(c) else float("nan"), "CPU max": c.max() if len(c) else float("nan"),
            "trials": len(r), "flags": ", ".join(flags.get(v, [])),
        })
    return rows


def run_counts(index):
    """Per experiment: how many runs data/ holds (full and smoke), from how many machines,
    the latest run and the format versions."""
    import pandas as pd

    if index is None or not len(index):
        return pd.DataFrame(columns=["experiment", "runs", "full runs", "machines", "latest", "format versions"])
    rows = []
    for exp, g in index.groupby("experiment"):
        rows.append({"experiment": exp, "runs": len(g), "full runs": int((~g["smoke"]).sum()),
                     "machines": g["machine"].nunique(), "latest": g.iloc[-1]["run_id"],
                     "format versions": ", ".join(sorted({str(v) for v in g["format_version"]})),
                     "unreadable": int((g["unreadable"] != "").sum())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- comparing two runs
@dataclass
class RunComparison:
    a: results.Run
    b: results.Run
    table: object  # one row per variant, size, measure present in both
    metadata: object  # the metadata that differs between the runs

    @property
    def beyond(self):
        """The rows whose difference is larger than the trial-to-trial spread."""
        return self.table[self.table["beyond_spread"]]

    def __str__(self) -> str:
        a, b = self.a.path.name, self.b.path.name
        lines = [f"{b} vs {a}: {len(self.table)} measures compared, {len(self.beyond)} beyond trial-to-trial spread"]
        for _, m in self.metadata.iterrows():
            lines.append(f"  differs: {m['field']}: {m['a']} -> {m['b']}")
        for _, r in self.beyond.iterrows():
            lines.append(f"  {r['variant']} {r['size']} {r['measure']}: {r['a_mean']:.4g} -> {r['b_mean']:.4g} "
                         f"({r['change_pct']:+.1f}%)")
        single = self.table[self.table["verdict"] == "one trial: spread unknown"]
        if len(single):
            lines.append(f"  {len(single)} measures have a single trial in one run: no verdict for them")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>" + self.table.to_html(index=False, float_format=lambda x: f"{x:.4g}")


COMPARED_UNITS = ("pps", "ns/packet", "Mbit/s", "ratio", "ns/kB", "cores", "fraction", "pass")
METADATA_FIELDS = ("host", "cpu_model", "cpus", "kernel", "format_version")


def compare_runs(a, b, measures=None, data_dir: Path | None = None) -> RunComparison:
    """Compare run B with run A (paths, run ids or results.Run): for every variant, size
    and measure both have, the mean, min..max and trials of each, B/A, and whether the
    difference is beyond the trial-to-trial spread (ranges do not overlap, two or more
    trials each). MEASURES limits the measures (default: rates, CPU per packet, ratios)."""
    import pandas as pd

    ra, rb = find_run(a, data_dir), find_run(b, data_dir)
    ea, eb = ra.metadata.get("experiment") or ra.path.parent.name, rb.metadata.get("experiment") or rb.path.parent.name
    if ea != eb:
        raise InputError(f"runs of different experiments ({ea} vs {eb}): compare runs of one experiment")

    extra = [c for c in ("kind", "scenario") if c in ra.table.columns or c in rb.table.columns]
    keys = ["variant", "size", "measure"] + extra

    def stats(run):
        t = run.table
        t = t[t["measure"].isin(measures)] if measures is not None else t[t["unit"].isin(COMPARED_UNITS)]
        t = t.assign(size=t["size"].fillna(-1), **{k: (t[k].fillna("") if k in t.columns else "") for k in extra})
        g = t.groupby(keys)
        return g["value"].agg(["mean", "min", "max", "count"]), g["unit"].first()

    sa, ua = stats(ra)
    sb, _ = stats(rb)
    both = pd.merge(sa, sb, left_index=True, right_index=True, how="inner", suffixes=("_a", "_b"))
    rows = []
    for key, r in both.iterrows():
        overlap = not (r["max_a"] < r["min_b"] or r["max_b"] < r["min_a"])
        enough = r["count_a"] >= 2 and r["count_b"] >= 2
        verdict = "one trial: spread unknown" if not enough else ("within spread" if overlap else "beyond spread")
        row = dict(zip(keys, key))
        if row["size"] == -1:
            row["size"] = None
        row.update({"unit": ua.get(key, ""), "a_mean": r["mean_a"], "a_min": r["min_a"], "a_max": r["max_a"],
                    "a_trials": int(r["count_a"]), "b_mean": r["mean_b"], "b_min": r["min_b"], "b_max": r["max_b"],
                    "b_trials": int(r["count_b"]),
                    "ratio": r["mean_b"] / r["mean_a"] if r["mean_a"] else float("nan"),
                    "change_pct": (r["mean_b"] / r["mean_a"] - 1) * 100 if r["mean_a"] else float("nan"),
                    "beyond_spread": verdict == "beyond spread", "verdict": verdict})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["variant", "size", "measure", "unit", "a_mean", "b_mean", "ratio", "change_pct",
                                      "beyond_spread", "verdict"])
    return RunComparison(ra, rb, table, metadata_diff(ra.metadata, rb.metadata))


def metadata_diff(a: dict, b: dict):
    """The metadata fields (machine, kernel, commit, parameters) that differ between two runs."""
    import pandas as pd

    rows = []
    for f in METADATA_FIELDS:
        if a.get(f) != b.get(f):
            rows.append({"field": f, "a": a.get(f), "b": b.get(f)})
    ga, gb = a.get("git") or {}, b.get("git") or {}
    if isinstance(ga, dict) and isinstance(gb, dict) and ga.get("commit") != gb.get("commit"):
        rows.append({"field": "commit", "a": str(ga.get("commit"))[:10], "b": str(gb.get("commit"))[:10]})
    pa, pb = a.get("parameters") or {}, b.get("parameters") or {}
    for k in sorted(set(pa) | set(pb)):
        if pa.get(k) != pb.get(k):
            rows.append({"field": f"parameters.{k}", "a": pa.get(k), "b": pb.get(k)})
    return pd.DataFrame(rows, columns=["field", "a", "b"])


def latest_pair(experiment: str, data_dir: Path | None = None, machine: str | None = None):
    """The two latest full (not smoke) runs of EXPERIMENT, on one machine (the latest
    run's, or MACHINE) and testbed, oldest first; None when there are fewer than two."""
    t = runs(data_dir, experiment)
    t = t[(~t["smoke"]) & (t["unreadable"] == "")]
    if len(t) and machine is None:
        machine = t.iloc[-1]["machine"]
    t = t[t["machine"] == machine]
    if len(t):  # and on the latest run's testbed: two testbeds are never a before/after
        t = t[t["testbed"] == t.iloc[-1]["testbed"]]
    if len(t) < 2:
        return None
    return t.iloc[-2]["path"], t.iloc[-1]["path"]


# ---------------------------------------------------------------- words
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
            text = (f"{title} ({run}{where}): {best['variant']} processed the most, {best['Mpps']:.3f} Mpps "
                    f"(trials {best['Mpps min']:.3f}–{best['Mpps max']:.3f})")
            if len(r) > 1 and worst["Mpps"] > 0:
                text += f", {best['Mpps'] / worst['Mpps']:.2f}× {worst['variant']}"
            cpu = r.dropna(subset=["CPU ns/pkt"])
            cpu = cpu[cpu["CPU ns/pkt"] > 0].sort_values("CPU ns/pkt")
            if len(cpu) > 1:
                text += (f"; cheapest per packet {cpu.iloc[0]['variant']} {cpu.iloc[0]['CPU ns/pkt']:.0f} ns, "
                         f"dearest {cpu.iloc[-1]['variant']} {cpu.iloc[-1]['CPU ns/pkt']:.0f} ns")
            limited = r[r["flags"].str.contains("generator-limited", na=False)]["variant"].tolist()
            if limited:
                text += f"; generator-limited (rate is a lower bound): {', '.join(limited)}"
            lines.append(text + ".")
    lines += latency_view.interpret(ov.latency)
    refs = ov.references
    for _, x in (refs.iterrows() if refs is not None else ()):
        if x["measured"] == x["measured"] and "pps" in x["unit"]:
            lines.append(f"Against {x['reference']} ({x['published'] / 1e6:.1f} Mpps per core, bare metal): "
                         f"{x['counterpart here']} {x['measured'] / 1e6:.2f} Mpps here "
                         f"({x['measured / published'] * 100:.1f}%)"
                         + (f", {x['per-core equivalent'] / 1e6:.1f} Mpps per core judged by CPU time"
                            if x["per-core equivalent"] == x["per-core equivalent"] else "") + ".")
    if ov.missing:
        lines.append("Missing: " + "; ".join(ov.missing))
    return "\n".join(lines)
