"""Results over time: each experiment's headline ratios over every stored run of one
testbed, in time order, grouped by jumpavg into runs of one level, with every change named.

A headline is a ratio of two variants measured in the same run (`HEADLINES`): 01's CPU per
packet of XDP native against iptables raw's, 03's rate of the XDP NAT against iptables
NAT's, 02's rate of XDP redirect against the Linux bridge's, and a few beside them. A ratio
within one run cancels much of what a shared machine changes between runs (the generator,
the other load), so it is what a series can follow. Each run gives one ratio per trial (the
two variants of one trial, at the experiment's headline frame size, from the rows its
`View` selects); the run's value is their mean, and jumpavg receives the trials, so it sees
each run's spread.

Runs are never mixed across testbeds: a series holds the runs of one testbed
(`testbeds.testbed_of`, the label the index keeps testbeds apart by) on one machine (host,
CPU model and count), and smoke runs (one short trial) apart from full ones. Kernel and
labkit commit are what a series follows, not what splits it: each run names its commit,
kernel and machine, and a change is said at the run where it starts.

jumpavg (``jumpavg.classify``, the grouping CSIT's trending uses) splits a series into the
groups whose description takes the fewest bits (minimum description length, each group a
normal distribution) and calls a group whose average falls a regression and one whose
average rises a progression; it assumes higher is better, so for a ratio of CPU time
(lower is better) the two words trade places here. One group is "no change"; a series of
one run is one group.

    series = trend.collect()             # every series in data/, classified
    for s in series: print("\\n".join(s.lines()))
    trend.table(series).to_csv("trend.csv", index=False)
    trend.main(experiment="xdp_drop", csv="trend.csv")   # `labkit trend`
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from labkit import experiments, results
from labkit.errors import InputError
from labkit.reporting.testbeds import testbed_of

CSV_COLUMNS = [
    "testbed",
    "machine",
    "runs",
    "experiment",
    "headline",
    "better",
    "run",
    "time",
    "commit",
    "dirty",
    "kernel",
    "value",
    "min",
    "max",
    "trials",
    "group",
    "verdict",
    "note",
]


@dataclass(frozen=True)
class Headline:
    """VARIANT's MEASURE divided by AGAINST's, trial by trial, in one run of EXPERIMENT.
    MEASURE is "rate" or "cpu": the experiment's View says which measure that is."""

    experiment: str
    measure: str  # "rate" (higher is better) or "cpu" (lower is better)
    variant: str
    against: str

    @property
    def lower_is_better(self) -> bool:
        return self.measure == "cpu"

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.against} {'CPU' if self.measure == 'cpu' else 'rate'}"

    def label(self) -> str:
        """'01 xdp_native/iptables_raw CPU': the notebook's number, then the ratio."""
        try:
            number = _view(self.experiment).notebook.split("-", 1)[0]
        except InputError:
            number = self.experiment
        return f"{number} {self.name}"


#: the headlines followed over time, per experiment (variant names as in each experiment's VARIANTS)
HEADLINES = (
    Headline("xdp_drop", "cpu", "xdp_native", "iptables_raw"),
    Headline("xdp_drop", "rate", "xdp_native", "iptables_raw"),
    Headline("l2fwd", "rate", "xdp_redirect", "bridge"),
    Headline("l2fwd", "cpu", "xdp_redirect", "bridge"),
    Headline("nat", "rate", "xdp_nat", "iptables"),
    Headline("nat", "cpu", "xdp_nat", "iptables"),
)


@lru_cache(maxsize=None)
def _view(experiment: str) -> experiments.View:
    return experiments.view(experiment)


def ratios(headline: Headline, table) -> tuple[list[float], str]:
    """([ratio per trial], why there are none) of HEADLINE in one run's TABLE: the rows its
    experiment's View selects, at the headline frame size, the two variants' means per trial."""
    from labkit.reporting.compare import headline_size

    view = _view(headline.experiment)
    measure = view.cpu if headline.measure == "cpu" else view.rate
    t = view.rows(table)
    size = headline_size(t, view)
    if size is not None:
        t = t[t["size"] == size]
    t = t[(t["measure"] == measure) & t["variant"].isin([headline.variant, headline.against])]
    per_trial = t.groupby(["trial", "variant"])["value"].mean().unstack()
    missing = [v for v in (headline.variant, headline.against) if v not in per_trial.columns]
    if missing:
        return [], f"no {measure} of {' or '.join(missing)} in this run"
    out = [
        float(a / b)
        for a, b in zip(per_trial[headline.variant], per_trial[headline.against])
        if b and math.isfinite(a) and math.isfinite(b) and b > 0
    ]
    return out, "" if out else f"no trial measured {measure} of both {headline.variant} and {headline.against}"


@dataclass
class Point:
    """One run's value of one headline."""

    run_id: str
    time_utc: str
    commit: str
    dirty: bool
    kernel: str
    trials: list  # the ratio of each trial
    why: str = ""  # why the run has no value ('' when it has)
    group: int = 0  # jumpavg's group, from 1 (0: not classified, no value)
    verdict: str = ""  # the group's: "baseline", "regression", "progression", "no change"

    @property
    def value(self) -> float:
        return sum(self.trials) / len(self.trials) if self.trials else float("nan")

    def where(self) -> str:
        """'run X (commit abc, kernel K, TIME)'."""
        dirty = " with uncommitted changes" if self.dirty else ""
        return f"run {self.run_id} (commit {self.commit}{dirty}, kernel {self.kernel}, {self.time_utc})"


@dataclass
class Series:
    """One headline over the runs of one testbed and machine (smoke or full runs), oldest first."""

    testbed: str
    machine: str  # host, CPU model and count: the kernel may change along a series
    smoke: bool
    headline: Headline
    points: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # [(first point index, points, average, verdict)]

    @property
    def where(self) -> str:
        return f"{self.testbed} ({self.machine}), {'smoke' if self.smoke else 'full'} runs"

    @property
    def measured(self) -> list:
        return [p for p in self.points if p.trials]

    def classify(self) -> Series:
        """Group the measured points with jumpavg and give each group its verdict in this
        headline's direction (jumpavg's words assume higher is better)."""
        import jumpavg

        measured = self.measured
        self.groups = []
        if not measured:
            return self
        swap = {"regression": "progression", "progression": "regression"} if self.headline.lower_is_better else {}
        start = 0
        for n, group in enumerate(jumpavg.classify([p.trials for p in measured])):
            verdict = "baseline" if n == 0 else swap.get(group.comment, group.comment)
            verdict = "no change" if verdict == "normal" else verdict
            for p in measured[start : start + len(group)]:
                p.group, p.verdict = n + 1, verdict
            self.groups.append((start, len(group), group.stats.avg, verdict))
            start += len(group)
        return self

    @property
    def changes(self) -> list:
        """[(verdict, first point of the new group, average before, average after)]."""
        measured, out = self.measured, []
        for (_, _, before, _), (start, _, after, verdict) in zip(self.groups, self.groups[1:]):
            out.append((verdict, measured[start], before, after))
        return out

    def lines(self) -> list[str]:
        """One line per change (or one saying there was none), then what was not measured."""
        label, measured = self.headline.label(), self.measured
        if not measured:
            out = [f"{label}: not measured in any of {len(self.points)} runs"]
        elif len(measured) == 1:
            out = [f"{label}: no change (one run so far): {measured[0].value:.3g} at {measured[0].where()}"]
        elif len(self.groups) == 1:
            out = [
                f"{label}: no change over {len(measured)} runs: {self.groups[0][2]:.3g} "
                f"(from {measured[0].run_id} to {measured[-1].run_id})"
            ]
        else:
            out = [
                f"{label}: {verdict} at {p.where()}: {before:.3g} -> {after:.3g}"
                for verdict, p, before, after in self.changes
            ]
        gaps = [p for p in self.points if not p.trials]
        if gaps and measured:
            out.append(
                f"{label}: not measured in {len(gaps)} of {len(self.points)} runs ({gaps[-1].run_id}: {gaps[-1].why})"
            )
        return out

    def rows(self) -> list[dict]:
        """The CSV's rows: one per run."""
        common = {
            "testbed": self.testbed,
            "machine": self.machine,
            "runs": "smoke" if self.smoke else "full",
            "experiment": self.headline.experiment,
            "headline": self.headline.name,
            "better": "lower" if self.headline.lower_is_better else "higher",
        }
        return [
            {
                **common,
                "run": p.run_id,
                "time": p.time_utc,
                "commit": p.commit,
                "dirty": p.dirty,
                "kernel": p.kernel,
                "value": p.value,
                "min": min(p.trials, default=float("nan")),
                "max": max(p.trials, default=float("nan")),
                "trials": len(p.trials),
                "group": p.group or "",
                "verdict": p.verdict,
                "note": p.why,
            }
            for p in self.points
        ]


def machine(meta: dict) -> str:
    """Host, CPU model and count of a run's metadata (its kernel left out: a series follows it)."""
    return f"{meta.get('host', '?')} · {meta.get('cpu_model', '?')} ×{meta.get('cpus', '?')}"


def _point(headline: Headline, run: results.Run) -> Point:
    meta = run.metadata
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    trials, why = ratios(headline, run.table)
    return Point(
        run.path.name,
        str(meta.get("time_utc") or ""),
        str(git.get("commit") or "?")[:10],
        bool(git.get("dirty")),
        str(meta.get("kernel") or "?"),
        trials,
        why,
    )


def check_experiment(experiment: str | None) -> None:
    known = list(dict.fromkeys(h.experiment for h in HEADLINES))
    if experiment is not None and experiment not in known:
        raise InputError(f"experiment {experiment!r} has no headline followed over time: choose from {known}")


def collect(data_dir: Path | None = None, experiment: str | None = None) -> list[Series]:
    """Every headline's series in DATA_DIR (default labkit's data/), per testbed, machine
    and kind of run, each classified; runs whose files cannot be read are left out."""
    check_experiment(experiment)
    out: dict = {}
    for exp in dict.fromkeys(h.experiment for h in HEADLINES if experiment in (None, h.experiment)):
        loaded = []
        for path in results.list_runs(exp, data_dir):
            try:
                loaded.append(results.load_run(path))
            except Exception:  # a run this labkit cannot read is not a point of any series
                continue
        loaded.sort(key=lambda r: (str(r.metadata.get("time_utc") or ""), r.path.name))
        for run in loaded:
            smoke = bool((run.metadata.get("parameters") or {}).get("smoke"))
            for h in (h for h in HEADLINES if h.experiment == exp):
                key = (testbed_of(run.metadata), machine(run.metadata), smoke, h)
                out.setdefault(key, Series(*key)).points.append(_point(h, run))
    return [s.classify() for s in out.values()]


def table(series: list[Series]):
    """One row per series and run (`CSV_COLUMNS`)."""
    import pandas as pd

    return pd.DataFrame([r for s in series for r in s.rows()], columns=CSV_COLUMNS)


def write_csv(series: list[Series], path) -> Path:
    path = Path(path)
    table(series).to_csv(path, index=False)
    return path


def check_csv_path(path) -> Path:
    """PATH as a CSV file to write, refused before anything is read when it cannot be one."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--csv {path}: is a directory; give a file name, e.g. {p / 'trend.csv'}")
    if not p.parent.is_dir():
        raise InputError(f"--csv {path}: folder {p.parent} does not exist; create it or write elsewhere")
    return p


def by_testbed(series: list[Series]) -> dict:
    """{(testbed, machine, smoke): [series in HEADLINES order]}."""
    out: dict = {}
    for s in sorted(series, key=lambda s: HEADLINES.index(s.headline)):
        out.setdefault((s.testbed, s.machine, s.smoke), []).append(s)
    return out


def absent(group: list[Series], experiment: str | None = None) -> list[str]:
    """A line for each headline (of EXPERIMENT, or all) with no run in GROUP (one testbed's series)."""
    have = {s.headline for s in group}
    return [
        f"{h.label()}: no run of {h.experiment} here (labkit run {_view(h.experiment).notebook})"
        for h in HEADLINES
        if h not in have and experiment in (None, h.experiment)
    ]


def main(
    experiment: str | None = None, testbed: str | None = None, csv=None, data_dir: Path | None = None, out=print
) -> int:
    """`labkit trend`: the change lines per testbed and headline; CSV with every point."""
    from labkit import DATA_DIR

    check_experiment(experiment)
    target = check_csv_path(csv) if csv else None
    data_dir = Path(data_dir or DATA_DIR)
    series = collect(data_dir, experiment)
    if testbed:
        kept = [s for s in series if testbed.lower() in f"{s.testbed} {s.machine}".lower()]
        if not kept:
            have = sorted({s.testbed for s in series})
            raise InputError(
                f"--testbed {testbed!r} matches no testbed with runs in {data_dir}: "
                f"choose from {have or 'none (no runs yet)'}"
            )
        series = kept
    if not series:
        out(
            f"no runs with a headline in {data_dir} (experiments {sorted({h.experiment for h in HEADLINES})}): "
            "run `labkit report` first"
        )
    for (bed, host, smoke), group in by_testbed(series).items():
        out(f"{bed} ({host}), {'smoke' if smoke else 'full'} runs:")
        for line in [line for s in group for line in s.lines()] + absent(group, experiment):
            out("  " + line)
    if target:
        write_csv(series, target)
        out(f"{len(table(series))} rows written to {target}")
    return 0
