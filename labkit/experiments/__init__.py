"""One module per experiment. Each composes the core (topology, bpf, traffic, measure,
results) into ``run(data_dir=None, **params) -> Result``, and its notebook is a thin caller.

What every experiment shares lives here:

- `check_run_shape`: the parameter checks all experiments have in common;
- `smoke_clamp`: a smoke run's limits, declared by each experiment as data (``SMOKE``);
- `trial_loop`: every size x trial x variant, the variants in an order rotated per trial
  (drift on a shared machine spreads over all of them), a progress bar, and the
  generator-limited mark set across the variants of one trial;
- `Result`: what ``run`` returns, the same for every experiment;
- `View`: how an experiment appears in the comparison and on the index page.

An experiment module declares ``EXPERIMENT`` (its data/ directory), ``NOTEBOOK`` (the
notebook that runs it) and ``VIEW``; `declared()` finds every such module, so adding an
experiment is one module here and one notebook, and the reporting layer reads the
declarations instead of knowing the experiments.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from labkit import measure, progress, results
from labkit.errors import InputError
from labkit.packets import check_size


def check_run_shape(variants: list, known: list, trials: int, sizes: list | None = None,
                    count: int | None = None, count_name: str = "count") -> None:
    """The checks every experiment's parameters share: variants known and each named
    once, trials, packet sizes and packets per trial in range. Raised before the kernel is
    touched, saying what to change."""
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        raise InputError(f"variants {unknown or variants}: choose from {known}")
    if len(set(variants)) != len(variants):
        raise InputError(f"variants {variants}: each at most once")
    if not isinstance(trials, int) or trials < 1:
        raise InputError(f"trials {trials!r}: at least 1")
    if sizes is not None:
        if not sizes:
            raise InputError("sizes is empty: give at least one frame size, e.g. [64]")
        for s in sizes:
            check_size(s)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise InputError(f"{count_name} {count!r}: send at least one packet per trial")


def smoke_clamp(params, limits: dict) -> None:
    """Cut PARAMS down to a smoke run: for each name in LIMITS, a list keeps at most that
    many items (0 empties it), a number is lowered to at most that value."""
    for name, limit in limits.items():
        value = getattr(params, name)
        if isinstance(value, list):
            setattr(params, name, value[:limit])
        elif value is not None:
            setattr(params, name, min(value, limit))


# ---------------------------------------------------------------- the trial loop
def rotated(variants: list, trial: int) -> list:
    """VARIANTS in the order trial number TRIAL runs them: rotated by one per trial."""
    k = trial % len(variants)
    return list(variants[k:]) + list(variants[:k])


def trial_loop(variants: list, trials: int, measure_one: Callable, record: Callable, *, sizes=(None,),
               label: str = "trials", show: bool = True) -> None:
    """For every size, trial and variant (rotated per trial): ``measure_one(variant, size,
    trial)`` returns a measure.Measurement (or a tuple starting with one). When every
    variant of a trial is measured, those that kept up with the generator at full speed
    are marked generator-limited, and ``record(variant, size, trial, what_measure_one_returned)``
    is called for each, in the order they ran."""
    with progress.bar(len(sizes) * trials * len(variants), f"{label} trials", show) as bar:
        for size in sizes:
            for trial in range(trials):
                done = []
                for variant in rotated(variants, trial):
                    done.append((variant, measure_one(variant, size, trial)))
                    bar.update()
                measure.mark_generator_limited([r[0] if isinstance(r, tuple) else r for _, r in done])
                for variant, r in done:
                    record(variant, size, trial, r)


# ---------------------------------------------------------------- what a run returns
@dataclass
class Result:
    """One run of an experiment.

    ``table`` is the tidy table (one row per trial, variant, size and measure; its ``kind``
    column says which part of the run a row belongs to); ``headline()`` the table a reader
    looks at first; ``part(kind)`` one part: rows of the table of that kind ('trial',
    'sweep', 'search', 'udp', 'tcp', ...) or a table the experiment keeps beside it
    ('costs', 'resources', 'checks', 'flows'; also readable as ``result.costs`` etc.)."""

    experiment: str
    table: object
    interpretation: str
    caveats: list
    run_dir: object
    params: object
    parts: dict = field(default_factory=dict)
    headline_of: Callable | None = field(default=None, repr=False)  # table -> the headline DataFrame

    def headline(self):
        if self.headline_of is not None:
            return self.headline_of(self.table)
        return results.wide(results.summarize(self.table))

    @property
    def kinds(self) -> list:
        """The names `part` accepts."""
        in_table = list(dict.fromkeys(self.table["kind"].dropna())) if "kind" in self.table.columns else []
        return in_table + [k for k in self.parts if k not in in_table]

    def part(self, kind: str):
        if kind in self.parts:
            return self.parts[kind]
        if "kind" in self.table.columns and kind in set(self.table["kind"].dropna()):
            return self.table[self.table["kind"] == kind]
        if "kind" in self.table.columns and kind in PART_KINDS:
            return self.table.iloc[0:0]  # a part this run did not measure: no rows
        raise KeyError(f"{self.experiment} has no part {kind!r}: choose from {self.kinds}")

    @property
    def trials(self):
        """The side-by-side trial rows."""
        return self.part("trial")

    def __getattr__(self, name):
        parts = self.__dict__.get("parts") or {}
        if name in parts:
            return parts[name]
        raise AttributeError(f"{type(self).__name__} of {self.__dict__.get('experiment', '?')} has no {name!r}")


#: parts that may have no rows in a run (a sweep or search turned off)
PART_KINDS = ("trial", "sweep", "search", "cpu_at_load", "test_run", "idle", "udp", "tcp", "prog", "check")


# ---------------------------------------------------------------- how an experiment is shown
@dataclass(frozen=True)
class View:
    """How an experiment appears in the comparison and on the index page: its packet rate
    and CPU time per packet at the headline frame size, from the rows SELECT keeps, the
    variants that are no contenders (EXCLUDE), and the published references its numbers
    stand beside: (reference, variants to compare with it, 'pps' or 'Mbit/s')."""

    experiment: str
    title: str
    notebook: str  # the notebook that produces its runs
    cpu: str = "cpu_ns_per_pkt"
    cpu_label: str = "NET_RX softirq CPU per packet"
    rate: str = "processed_pps"
    select: tuple = ()  # (column, allowed values) pairs a row must match; None allows an empty cell
    exclude: tuple = ()  # variants that are not contenders (baselines)
    references: tuple = ()  # (references.Reference, (variant, ...), "pps" | "Mbit/s")

    def rows(self, table):
        """The rows of TABLE this view describes."""
        t = table
        for col, allowed in self.select:
            if col in t.columns:
                keep = t[col].isin([a for a in allowed if a is not None])
                if None in allowed:
                    keep |= t[col].isna() | (t[col].astype(str) == "")
                t = t[keep]
        if self.exclude:
            t = t[~t["variant"].isin(self.exclude)]
        return t


def arguments(params_class, namespace: dict) -> dict:
    """The fields of PARAMS_CLASS found in NAMESPACE (a notebook's ``globals()`` after its
    parameters cell), so a notebook passes every parameter it declares without listing
    them twice: ``xdp_drop.run(**experiments.arguments(xdp_drop.Params, globals()))``."""
    import dataclasses

    return {f.name: namespace[f.name] for f in dataclasses.fields(params_class) if f.name in namespace}


# ---------------------------------------------------------------- the declared experiments
def declared() -> list:
    """Every module (or package) under labkit.experiments that declares EXPERIMENT and
    NOTEBOOK, in notebook order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(mod, "EXPERIMENT", None), str) and isinstance(getattr(mod, "NOTEBOOK", None), str):
            found.append(mod)
    return sorted(found, key=lambda m: (m.NOTEBOOK, m.EXPERIMENT))


def views() -> list:
    """The View of every experiment that declares one, in notebook order."""
    return [m.VIEW for m in declared() if isinstance(getattr(m, "VIEW", None), View)]


def view(experiment: str) -> View:
    for v in views():
        if v.experiment == experiment:
            return v
    raise InputError(f"no experiment {experiment!r} declares a view: choose from {[v.experiment for v in views()]}")


def notebook_experiments() -> dict:
    """{notebook: (experiment, ...)}: the data/ directories each notebook writes."""
    out: dict = {}
    for m in declared():
        out[m.NOTEBOOK] = out.get(m.NOTEBOOK, ()) + (m.EXPERIMENT,)
    return out
