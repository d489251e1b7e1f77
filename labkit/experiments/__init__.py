"""One module per experiment. Each composes the core (topology, bpf, traffic, measure,
results) into ``run(data_dir=None, **params) -> Result``, and its notebook is a thin caller.

What every experiment shares lives here:

- `check_run_shape`: the parameter checks all experiments have in common;
- `smoke_clamp`: a smoke run's limits, declared by each experiment as data (``SMOKE``);
- `trial_loop`: every size x trial x variant, the variants in an order rotated per trial
  (drift on a shared machine spreads over all of them), a progress bar, and the
  generator-limited mark set across the variants of one trial;
- `Result`: what ``run`` returns, the same for every experiment;
- `View`: how an experiment appears in the comparison and on the index page;
- `Feed`: whether a run's receiver got XDP frames or socket buffers, measured per trial, and
  `fed_by`: the one line an interpretation starts with (generator, feed, the backend that
  served each purpose, the parts that were skipped).

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


def check_run_shape(
    variants: list,
    known: list,
    trials: int,
    sizes: list | None = None,
    count: int | None = None,
    count_name: str = "count",
) -> None:
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


def trial_loop(
    variants: list,
    trials: int,
    measure_one: Callable,
    record: Callable,
    *,
    sizes=(None,),
    label: str = "trials",
    show: bool = True,
) -> None:
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

    def not_measured(self, part: str) -> str:
        """Why PART has nothing in this run, in one line: the reason the run recorded among
        its skipped parts (switched off, cannot run here, across hosts)."""
        try:
            why = (saved_metadata(self.run_dir).get("skipped_parts") or {}).get(part)
        except (OSError, TypeError, ValueError):
            why = None
        label = {"search": "NDR/PDR search", "cpu_at_load": "fixed-load CPU measurement"}.get(part, part)
        return f"no {label} in this run: {why or 'not measured (see the caveats)'}"

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


# ---------------------------------------------------------------- what fed a run
FEED_XDP, FEED_SKB = "XDP frames", "socket buffers"
FEED_WIRE = "frames from the wire (real interfaces: native XDP runs in the receiving driver)"
#: what the receiver's hook sees with each feed (said beside the numbers)
FEED_MEANS = {
    FEED_XDP: "the frames reach the receiving veth through its peer's ndo_xdp_xmit, so native XDP there runs on "
    "them before any skb is built (its fast path)",
    FEED_SKB: "the frames reach the receiving veth as skbs, so native XDP there runs its slow path (the skb is "
    "built first and converted for the program), not XDP's driver-level fast path",
}


class Feed:
    """What a run's receiver got from its generator, measured in every trial rather than
    assumed from the generator's name: frames a veth transmits through `ndo_xdp_xmit` (as
    the live-frames and XDP-loop generators send them) show in its own `ethtool -S`
    counter `tx_queue_N_xdp_xmit`; frames sent from a socket (trafgen, testpmd, pktgen) do
    not, and arrive as socket buffers. On real interfaces the receiver's driver builds
    what it hands on from the wire, whoever sent it."""

    def __init__(self, generator: str, real_interfaces: bool = False):
        self.generator = generator
        self.real_interfaces = real_interfaces
        self.seen: dict[str, int] = {}  # feed -> trials
        self.xdp_xmit = self.offered = 0

    def add(self, m, sender: str = "snd") -> str | None:
        """The feed of Measurement M (None where the sender's counters cannot say)."""
        if self.real_interfaces:
            kind = FEED_WIRE
        else:
            deltas = m.probes.get(sender) or {}
            xmit = [v for k, v in deltas.items() if k.startswith("ethtool:") and k.endswith("_xdp_xmit")]
            if not xmit or not m.offered.packets:
                return None
            self.xdp_xmit += sum(xmit)
            self.offered += m.offered.packets
            kind = FEED_XDP if sum(xmit) >= 0.5 * m.offered.packets else FEED_SKB
        self.seen[kind] = self.seen.get(kind, 0) + 1
        return kind

    @property
    def kind(self) -> str | None:
        """The feed of most trials (None: not measured)."""
        return max(self.seen, key=self.seen.get) if self.seen else None

    def metadata(self) -> dict:
        """What the run's metadata keeps under "feed"."""
        if not self.seen:
            return {
                "generator": self.generator,
                "receiver_got": "not measured",
                "how": "the sender's interface has no tx_queue_N_xdp_xmit counter (ethtool -S)",
            }
        how = f"the sending veth's tx_queue_N_xdp_xmit counted {self.xdp_xmit} of {self.offered} frames offered"
        if self.real_interfaces:
            how = "real interfaces"
        out = {"generator": self.generator, "receiver_got": self.kind, "how": how, "trials": dict(self.seen)}
        if self.kind in FEED_MEANS:
            out["means"] = FEED_MEANS[self.kind]
        return out


def table_feed(table) -> str | None:
    """The feed the trial rows of TABLE record (their ``feed`` column), or None."""
    if table is None or "feed" not in table.columns:
        return None
    t = table[table["kind"] == "trial"] if "kind" in table.columns else table
    found = t["feed"].dropna()
    found = found[found.astype(str) != ""]
    return found.mode().iloc[0] if len(found) else None


def _short_why(why: str, most: int = 90) -> str:
    """A choice's reason up to its first parenthesis (the full one stays in the metadata)."""
    why = why.split(" (", 1)[0].strip()
    return why if len(why) <= most else why[: most - 1].rstrip() + "…"


def saved_metadata(run_dir) -> dict:
    """The metadata a run saved with its table (results.ResultSet.save)."""
    import json
    from pathlib import Path

    return json.loads((Path(run_dir) / "metadata.json").read_text())


def fed_by(meta: dict | None, skipped: dict | None = None) -> str:
    """One line from a run's metadata: which generator fed it and as what, which backend
    served each purpose (the probes' `capabilities.summary_line`), and the parts SKIPPED
    ({part: why}; default the metadata's "skipped_parts")."""
    from labkit import capabilities

    meta = meta or {}
    feed = meta.get("feed") or {}
    line = (
        f"Fed by the {meta.get('generator') or feed.get('generator') or 'unrecorded'} generator; "
        f"the receiver got {feed.get('receiver_got', 'frames of an unrecorded form')}"
    )
    skipped = meta.get("skipped_parts", {}) if skipped is None else skipped
    fac = meta.get("facilities")
    if isinstance(fac, dict):
        # a choice kept in this process for a part this run did not measure is not this run's
        choices = {
            k: {**v, "why": _short_why(v.get("why", ""))}
            for k, v in (fac.get("choices") or {}).items()
            if not any(part in k for part in skipped)
        }
        used = capabilities.summary_line({**fac, "choices": choices})
        if used:
            line += f"; {used}"
    for part, why in skipped.items():
        line += f"; {part}: not measured ({why})"
    return line + "."


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
