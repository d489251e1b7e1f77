"""NDR and PDR by MLRsearch, FD.io CSIT's multiple loss ratio search, over a labkit trial.

`loadsweep.search` is RFC 2544's binary search, one threshold at a time. MLRsearch (PyPI
`MLRsearch`, the search CSIT runs) looks for several loss ratios in one search, starts
with short trials and lengthens them as its bounds close in, and bisects in logarithmic
load, so a relative width goal means the same at any rate. This module drives it with
the same trial callable as the rest of `measure`:

    trial = loadsweep.generator_trial(gen, spec, received=filt.dropped, seconds=0.5)
    found = mlr.search(trial, max_load_pps=top, final_trial_s=1.0, time_budget_s=60)
    found.ndr_pps, found.pdr_pps, found.ndr_bounds  # conditional throughputs, (lower, upper) loads
    found.trials                                     # every trial it ran, with its counts
    rows = found.rows(variant="xdp_native", size=64) + found.trial_rows(variant="xdp_native", size=64)

The trial must take `duration=` (seconds) beside the rate, and its Point must carry the
counts (`asked`, `sent`, `received`, `seconds`), as `loadsweep.generator_trial`'s do.

What MLRsearch is told of each trial (`measurement`):

- packets the generator was asked for but did not send (``unsent``: asked - sent) are
  the generator's shortfall, not the receiver's loss: MLRsearch's own MeasurementResult
  would count them as bad (its `loss_ratio` adds `unsent_count`, intended_count - offered_count),
  so its `intended_count` is set to what was *sent*, and `unsent` is kept in labkit's record
  of the trial (`MlrTrial.unsent`, measure `unsent_pkts`) beside `lost_pkts`;
- `offered_count` is what was sent, `loss_count` what was sent and not counted at the
  receiver's hook (``lost``); where the generator fell behind the intended *rate* (a
  receiver sharing the CPUs slows the sender: every packet leaves, late), the trial's own
  verdict (`loadsweep.generator_trial` counts a shortfall beyond `RATE_TOLERANCE` as loss)
  is passed on as that share of what was sent, so both searches judge a trial alike;
- a trial that sent nothing measured nothing: there MLRsearch's own rule stands (all asked
  packets unsent count against the load), so the search moves down instead of taking an
  empty trial as a pass;
- `offered_duration` and `duration_with_overheads` are the seconds the generator sent for
  (set-up around a trial is not evidence), and MLRsearch's warm-up trial is off.

A load becomes a bound when most of three final trials say so (`DURATION_SUM_TRIALS`, with
MLRsearch's exceed ratio 0.5): on two shared cores a single trial can be spoiled by other
work, and one such trial must not stop the search low. The time budget (`time_budget_s`)
ends the search where it stands: the bounds found so far are reported, with
`complete=False` (MLRsearch itself would raise and return nothing).
A goal whose max load is already a lower bound is `generator_limited`: the receiver kept
up with all that was offered, so its real rate is higher than this search can show.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

from labkit.errors import InputError

#: the kind of the result rows and of the trial rows in a tidy table
KIND, TRIAL_KIND = "mlrsearch", "mlrsearch_trial"
METHOD = "mlrsearch"
#: final trials whose seconds make a load a bound, by default: with exceed_ratio 0.5 the
#: majority of three decides, so one trial spoiled by the shared machine decides nothing
#: (CSIT's own setting is 21 s of 1 s trials for the same reason)
DURATION_SUM_TRIALS = 3


@dataclass(frozen=True)
class Settings:
    """The search's goals and limits, checked before any traffic (`validate`)."""

    ndr_loss: float = 0.0
    pdr_loss: float | None = 0.005  # None: NDR only
    final_trial_s: float = 1.0  # the longest trial, the one a bound rests on
    initial_trial_s: float | None = None  # the shortest (default: a fifth of the final, at most 0.2 s)
    width: float = 0.005  # relative width goal: upper bound - lower bound <= width x upper bound
    time_budget_s: float = 60.0  # the search ends here, with the bounds it has
    duration_sum_s: float | None = None  # trial seconds at a load to make it a bound (default: three final trials)
    exceed_ratio: float = 0.5  # the share of those seconds that may exceed the loss ratio (MLRsearch's default)

    @property
    def initial_s(self) -> float:
        return self.initial_trial_s if self.initial_trial_s is not None else min(0.2, self.final_trial_s / 5)

    @property
    def losses(self) -> list[float]:
        return [self.ndr_loss] + ([] if self.pdr_loss is None else [self.pdr_loss])

    def validate(self) -> "Settings":
        def number(name, low=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} {v!r}: expected a finite number")
            if low is not None and v <= low:
                raise InputError(f"{name} {v}: must be more than {low}")

        for name in ("ndr_loss", "final_trial_s", "width", "time_budget_s", "exceed_ratio"):
            number(name)
        if self.pdr_loss is not None:
            number("pdr_loss")
        if not 0 <= self.ndr_loss < 1:
            raise InputError(f"ndr_loss {self.ndr_loss}: a loss ratio in [0, 1), e.g. 0 (no drop)")
        if self.pdr_loss is not None and not self.ndr_loss < self.pdr_loss < 1:
            raise InputError(
                f"pdr_loss {self.pdr_loss}: a loss ratio above ndr_loss ({self.ndr_loss}) and below 1, "
                "e.g. 0.005 (0.5%); None searches the NDR only"
            )
        number("final_trial_s", 0)
        if self.initial_trial_s is not None:
            number("initial_trial_s", 0)
            if self.initial_trial_s > self.final_trial_s:
                raise InputError(
                    f"initial_trial_s {self.initial_trial_s}: at most final_trial_s ({self.final_trial_s})"
                )
        if not 0 < self.width < 1:
            raise InputError(f"width {self.width}: a relative width in (0, 1), e.g. 0.005 (0.5% of the rate)")
        if self.time_budget_s < self.final_trial_s:
            raise InputError(
                f"time_budget_s {self.time_budget_s}: at least one final trial "
                f"({self.final_trial_s} s); the search needs several"
            )
        if self.duration_sum_s is not None:
            number("duration_sum_s")
            if self.duration_sum_s < self.final_trial_s:
                raise InputError(f"duration_sum_s {self.duration_sum_s}: at least final_trial_s ({self.final_trial_s})")
        if not 0 <= self.exceed_ratio < 1:
            raise InputError(f"exceed_ratio {self.exceed_ratio}: a ratio in [0, 1), e.g. 0.5")
        self.goals()  # MLRsearch's own checks, as InputError
        return self

    def goals(self) -> list:
        """MLRsearch SearchGoals: one per loss ratio."""
        from MLRsearch import SearchGoal

        try:
            return [
                SearchGoal(
                    loss_ratio=lr,
                    exceed_ratio=self.exceed_ratio,
                    relative_width=self.width,
                    initial_trial_duration=self.initial_s,
                    final_trial_duration=self.final_trial_s,
                    duration_sum=self.duration_sum_s or DURATION_SUM_TRIALS * self.final_trial_s,
                    fail_fast=False,
                )
                for lr in self.losses
            ]
        except ValueError as exc:
            raise InputError(f"MLRsearch refused these settings: {exc}") from None


@dataclass
class MlrTrial:
    """One trial MLRsearch asked for, as it ran."""

    load_pps: float  # the intended load MLRsearch asked for
    duration_s: float  # the intended duration
    asked: int  # packets the generator was asked to send
    sent: int  # packets it sent
    received: int  # packets counted at the receiver's hook
    seconds: float  # how long the generator sent
    offered_pps: float
    received_pps: float
    loss_ratio: float  # the trial's own verdict (a rate shortfall beyond tolerance counts, see module doc)
    wall_s: float  # the whole trial, set-up and settling included

    @property
    def unsent(self) -> int:
        """Asked for and never sent: the generator's shortfall, not loss."""
        return max(0, self.asked - self.sent)

    @property
    def lost(self) -> int:
        """Sent and not counted at the receiver's hook."""
        return max(0, self.sent - self.received)

    @property
    def judged_lost(self) -> int:
        """The loss count MLRsearch is given: LOST, or the trial's loss ratio of what was sent
        where the generator fell behind the intended rate, whichever is more."""
        if not self.sent:
            return 0
        if math.isnan(self.loss_ratio):
            return self.sent
        return min(self.sent, max(self.lost, math.ceil(self.loss_ratio * self.sent - 1e-6)))

    def measures(self) -> dict:
        return {
            "offered_pps": (self.offered_pps, "pps"),
            "received_pps": (self.received_pps, "pps"),
            "loss_ratio": (self.loss_ratio, "ratio"),
            "asked_pkts": (self.asked, "packets"),
            "sent_pkts": (self.sent, "packets"),
            "received_pkts": (self.received, "packets"),
            "unsent_pkts": (self.unsent, "packets"),
            "lost_pkts": (self.lost, "packets"),
            "mlr_loss_pkts": (self.judged_lost, "packets"),
            "elapsed_s": (self.seconds, "s"),
        }


def measurement(t: MlrTrial):
    """What MLRsearch is told of trial T (its MeasurementResult): unsent packets are not
    loss (see the module's docstring)."""
    from MLRsearch import MeasurementResult

    if not t.sent:  # nothing measured: MLRsearch's own rule, everything asked counts as bad
        return MeasurementResult(
            intended_duration=t.duration_s,
            intended_load=t.load_pps,
            offered_count=0,
            loss_count=0,
            intended_count=max(1, t.asked),
            offered_duration=t.duration_s,
        )
    secs = t.seconds if t.seconds and t.seconds > 0 else t.duration_s
    return MeasurementResult(
        intended_duration=t.duration_s,
        intended_load=t.load_pps,
        offered_count=t.sent,
        loss_count=t.judged_lost,
        intended_count=t.sent,
        offered_duration=secs,
        # what MLRsearch adds up to settle a bound: the intended duration, so that one trial slowed
        # by a busy CPU weighs as one trial, not more (three final trials decide, by majority)
        duration_with_overheads=t.duration_s,
    )


def from_point(load: float, duration: float, p, wall_s: float) -> MlrTrial:
    """An MlrTrial from a loadsweep.Point that carries its counts."""
    missing = [k for k in ("asked", "sent", "received", "seconds") if getattr(p, k, None) is None]
    if missing:
        raise InputError(
            f"the trial's Point has no {', '.join(missing)}: MLRsearch needs counts "
            "(loadsweep.generator_trial's trials carry them)"
        )
    return MlrTrial(
        float(load),
        float(duration),
        int(p.asked),
        int(p.sent),
        int(p.received),
        float(p.seconds),
        float(p.offered_pps),
        float(p.received_pps),
        float(p.loss_ratio),
        float(wall_s),
    )


class _Measurer:
    """MLRsearch's AbstractMeasurer over a labkit trial (subclassed at first use, so this
    module imports without MLRsearch)."""

    def __init__(self, trial, on_trial=None):
        self.trial, self.on_trial, self.trials = trial, on_trial, []

    def measure(self, intended_duration: float, intended_load: float):
        t0 = time.monotonic()
        p = self.trial(intended_load, duration=intended_duration)
        t = from_point(intended_load, intended_duration, p, time.monotonic() - t0)
        self.trials.append(t)
        if self.on_trial:
            self.on_trial(t)
        return measurement(t)


@dataclass
class MlrResult:
    """What one MLRsearch found: per loss ratio, the conditional throughput and its bounds."""

    settings: Settings
    max_load_pps: float
    min_load_pps: float
    throughput: dict  # loss ratio -> conditional throughput (pps; nan: min load was not a lower bound)
    bounds: dict  # loss ratio -> (relevant lower bound, relevant upper bound) loads, None where missing
    trials: list = field(default_factory=list)  # MlrTrial, in the order run
    complete: bool = True  # False: the time budget ended the search first
    search_s: float = 0.0
    log: list = field(default_factory=list)  # MLRsearch's own debug lines

    @property
    def ndr_pps(self) -> float:
        return self.throughput[self.settings.ndr_loss]

    @property
    def pdr_pps(self) -> float:
        return self.throughput.get(self.settings.pdr_loss, math.nan)

    @property
    def ndr_bounds(self) -> tuple:
        return self.bounds[self.settings.ndr_loss]

    @property
    def pdr_bounds(self) -> tuple:
        return self.bounds.get(self.settings.pdr_loss, (None, None))

    def generator_limited(self, loss: float) -> bool:
        """The max load was a lower bound: the receiver kept up with all of it (not merely: the
        time budget ended before a failing load was confirmed)."""
        lower, upper = self.bounds[loss]
        return lower is not None and upper is None and lower >= self.max_load_pps * (1 - 1e-6)

    def rows(self, *, variant: str, size: int) -> list[dict]:
        """One tidy row per loss ratio (measure ndr_pps / pdr_pps, as loadsweep's search rows,
        kind and method "mlrsearch"), with its bounds, the settings and the search's time."""
        s = self.settings
        out = []
        for loss in s.losses:
            lower, upper = self.bounds[loss]
            out.append(
                {
                    "variant": variant,
                    "trial": 0,
                    "size": size,
                    "measure": "ndr_pps" if loss == s.ndr_loss else "pdr_pps",
                    "value": float(self.throughput[loss]),
                    "unit": "pps",
                    "threshold": loss,
                    "generator_limited": self.generator_limited(loss),
                    "iterations": len(self.trials),
                    "kind": KIND,
                    "method": METHOD,
                    "lower_pps": _nan(lower),
                    "upper_pps": _nan(upper),
                    "complete": self.complete,
                    "search_s": self.search_s,
                    "width": s.width,
                    "final_trial_s": s.final_trial_s,
                    "time_budget_s": s.time_budget_s,
                    "max_load_pps": self.max_load_pps,
                }
            )
        return out

    def trial_rows(self, *, variant: str, size: int) -> list[dict]:
        """Every trial as tidy rows (kind "mlrsearch_trial"; target_pps the intended load,
        duration_s the intended duration, step the order run)."""
        return [
            {
                "variant": variant,
                "trial": 0,
                "size": size,
                "measure": name,
                "value": float(value),
                "unit": unit,
                "target_pps": t.load_pps,
                "duration_s": t.duration_s,
                "step": i,
                "kind": TRIAL_KIND,
                "method": METHOD,
            }
            for i, t in enumerate(self.trials)
            for name, (value, unit) in t.measures().items()
        ]


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def check(trial, max_load_pps: float, min_load_pps: float | None) -> float:
    """Check the trial and the load range before any traffic; the min load to use."""
    if not callable(trial):
        raise InputError(f"trial {trial!r}: a callable rate -> Point (loadsweep.generator_trial makes one)")
    try:
        inspect.signature(trial).bind(1.0, duration=1.0)
    except TypeError:
        raise InputError(
            "the trial must take a duration: trial(rate, duration=seconds) (loadsweep.generator_trial's trials do)"
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin): the first trial will say
    for name, v in (("max_load_pps", max_load_pps), ("min_load_pps", min_load_pps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise InputError(f"{name} {v!r}: a positive rate in packets per second")
    low = min_load_pps if min_load_pps is not None else max_load_pps / 100
    if not low < max_load_pps:
        raise InputError(f"min_load_pps {low} must be below max_load_pps {max_load_pps}")
    return float(low)


def search(
    trial,
    *,
    max_load_pps: float,
    min_load_pps: float | None = None,
    ndr_loss: float = 0.0,
    pdr_loss: float | None = 0.005,
    final_trial_s: float = 1.0,
    initial_trial_s: float | None = None,
    width: float = 0.005,
    time_budget_s: float = 60.0,
    duration_sum_s: float | None = None,
    exceed_ratio: float = 0.5,
    on_trial=None,
) -> MlrResult:
    """NDR (loss ratio NDR_LOSS) and PDR (PDR_LOSS) by MLRsearch between MIN_LOAD_PPS
    (default 1% of the max, as loadsweep.search's `lo`) and MAX_LOAD_PPS (the generator's maximum, as for
    loadsweep.search's `hi`). Trials run from INITIAL_TRIAL_S up to FINAL_TRIAL_S; a load
    is a bound once DURATION_SUM_S of trials (default three final trials) say so, with at most
    EXCEED_RATIO of that time over the loss ratio. The search stops when each goal's bounds
    are within WIDTH (relative) or after TIME_BUDGET_S. ON_TRIAL(MlrTrial) is called after
    each trial (a progress bar). Every value is checked before any traffic (InputError)."""
    settings = Settings(
        ndr_loss, pdr_loss, final_trial_s, initial_trial_s, width, time_budget_s, duration_sum_s, exceed_ratio
    ).validate()
    low = check(trial, max_load_pps, min_load_pps)
    from MLRsearch import AbstractMeasurer, Config, MultipleLossRatioSearch

    goals = settings.goals()
    try:
        config = Config(
            goals=goals,
            min_load=low,
            max_load=float(max_load_pps),
            search_duration_max=settings.time_budget_s,
            warmup_duration=None,
        )
    except ValueError as exc:
        raise InputError(f"MLRsearch refused the load range {low}..{max_load_pps} pps: {exc}") from None
    measurer = type("Measurer", (_Measurer, AbstractMeasurer), {})(trial, on_trial)
    searcher, log = MultipleLossRatioSearch(config=config), []
    t0, complete = time.monotonic(), True
    try:
        found = searcher.search(measurer=measurer, debug=log.append)
    except RuntimeError as exc:
        if "too long" not in str(exc):
            raise
        complete = False  # the budget ran out: the bounds so far, as MLRsearch's search() reads them at its end
        found = {g: _goal_result(searcher, g) for g in goals}
    throughput, bounds = {}, {}
    for goal in goals:
        result = found[goal]
        ct = result.conditional_throughput
        throughput[goal.loss_ratio] = float(ct) if ct is not None else math.nan
        lower, upper = result.relevant_lower_bound, result.relevant_upper_bound
        bounds[goal.loss_ratio] = (None if lower is None else float(lower), None if upper is None else float(upper))
    return MlrResult(
        settings, float(max_load_pps), low, throughput, bounds, measurer.trials, complete, time.monotonic() - t0, log
    )


def _goal_result(searcher, goal):
    from MLRsearch import GoalResult

    target = searcher.scaling.goal_to_final_target[goal]
    return GoalResult.from_bounds(bounds=searcher.database.get_relevant_bounds(target=target))
