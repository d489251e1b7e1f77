"""Comparisons across runs: every run in data/, from this machine or others, keyed by its
metadata (experiment, host, CPU, kernel, testbed, commit, parameters).

    runs = compare.runs()                      # one row per run in data/, what it is and where from
    ov = summary.overview()                    # per experiment (labkit.reporting.summary)
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
from dataclasses import dataclass
from pathlib import Path

from labkit import results
from labkit.errors import InputError
from labkit.experiments import View
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
    return (
        f"{meta.get('host', '?')} · {meta.get('cpu_model', '?')} ×{meta.get('cpus', '?')} · {meta.get('kernel', '?')}"
    )


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
        rows.append(
            {
                "experiment": path.parent.name,
                "run_id": path.name,
                "time_utc": meta.get("time_utc", ""),
                "machine": machine_of(meta),
                "testbed": testbed_of(meta),
                "host": meta.get("host"),
                "kernel": meta.get("kernel"),
                "cpu_model": meta.get("cpu_model"),
                "commit": (git.get("commit") or "?")[:10],
                "dirty": bool(git.get("dirty")),
                "smoke": bool(params.get("smoke")),
                "trials": trials,
                "format_version": meta.get("format_version", "?"),
                "requested": list(params.get("variants") or []),
                "measured": measured,
                "caveats": list(meta.get("caveats") or []),
                "unreadable": error,
                "path": path,
            }
        )
    cols = [
        "experiment",
        "run_id",
        "time_utc",
        "machine",
        "testbed",
        "host",
        "kernel",
        "cpu_model",
        "commit",
        "dirty",
        "smoke",
        "trials",
        "format_version",
        "requested",
        "measured",
        "caveats",
        "unreadable",
        "path",
    ]
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
        raise InputError(
            f"run {run!r}: {'no' if not hits else len(hits)} runs match in data/; give a run directory "
            f"or a unique run id (latest: {have})"
        )
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
    return [
        (v, next((f": {c}" for c in run["caveats"] if v in c), " (no reason recorded)"))
        for v in run["requested"]
        if v not in got and v not in view.exclude
    ]


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
            lines.append(
                f"  {r['variant']} {r['size']} {r['measure']}: {r['a_mean']:.4g} -> {r['b_mean']:.4g} "
                f"({r['change_pct']:+.1f}%)"
            )
        single = self.table[self.table["verdict"] == "one trial: spread unknown"]
        if len(single):
            lines.append(f"  {len(single)} measures have a single trial in one run: no verdict for them")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>" + self.table.to_html(
            index=False, float_format=lambda x: f"{x:.4g}"
        )


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
        row.update(
            {
                "unit": ua.get(key, ""),
                "a_mean": r["mean_a"],
                "a_min": r["min_a"],
                "a_max": r["max_a"],
                "a_trials": int(r["count_a"]),
                "b_mean": r["mean_b"],
                "b_min": r["min_b"],
                "b_max": r["max_b"],
                "b_trials": int(r["count_b"]),
                "ratio": r["mean_b"] / r["mean_a"] if r["mean_a"] else float("nan"),
                "change_pct": (r["mean_b"] / r["mean_a"] - 1) * 100 if r["mean_a"] else float("nan"),
                "beyond_spread": verdict == "beyond spread",
                "verdict": verdict,
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(
            columns=[
                "variant",
                "size",
                "measure",
                "unit",
                "a_mean",
                "b_mean",
                "ratio",
                "change_pct",
                "beyond_spread",
                "verdict",
            ]
        )
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
