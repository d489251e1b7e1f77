"""NDR/PDR by MLRsearch (labkit/measure/mlr.py) over labkit's trial callable.

Real trials throughout: a generator (`auto`: the in-kernel one where live frames are
allowed) into the drop experiment's receiver on a namespace pair. One module-scoped
receiver serves every real test; both searches run on it once, and each test reads what
it checks from that run."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import pytest
from conftest import needs_root

from labkit import traffic
from labkit.errors import InputError
from labkit.experiments.xdp_drop_receiver import drop_receiver
from labkit.measure import loadsweep, mlr
from labkit.testbed import topology
from labkit.traffic import TrafficSpec

#: the variant searched: the kernel stack's UDP drop, whose no-drop rate on this testbed
#: lies well below the generator's maximum (a native XDP drop keeps up with it: no search)
VARIANT = "stack"
TRIAL_S = 0.2  # the binary search's points and MLRsearch's final trials
WIDTH = 0.1


def refuse_traffic(rate, duration=None):
    pytest.fail("traffic started before the parameters were checked")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_load_pps=0), "max_load_pps 0: a positive rate"),
        (dict(max_load_pps=1e6, min_load_pps=2e6), "must be below max_load_pps"),
        (dict(max_load_pps=1e6, ndr_loss=-0.1), "ndr_loss -0.1: a loss ratio in"),
        (dict(max_load_pps=1e6, pdr_loss=0.0), "pdr_loss 0.0: a loss ratio above ndr_loss"),
        (dict(max_load_pps=1e6, pdr_loss=1.5), "pdr_loss 1.5"),
        (dict(max_load_pps=1e6, final_trial_s=0), "final_trial_s 0: must be more than 0"),
        (dict(max_load_pps=1e6, initial_trial_s=2.0, final_trial_s=1.0), "initial_trial_s 2.0: at most final_trial_s"),
        (dict(max_load_pps=1e6, width=1.0), "width 1.0: a relative width in (0, 1)"),
        (dict(max_load_pps=1e6, time_budget_s=0.5, final_trial_s=1.0), "time_budget_s 0.5: at least one final trial"),
        (dict(max_load_pps=1e6, duration_sum_s=0.5), "duration_sum_s 0.5: at least final_trial_s"),
        (dict(max_load_pps=1e6, exceed_ratio=1.0), "exceed_ratio 1.0"),
        (dict(max_load_pps=float("nan")), "max_load_pps nan"),
        (dict(max_load_pps=1e6, width="narrow"), "width 'narrow': expected a finite number"),
    ],
)
def test_bad_parameters_refused_before_any_traffic(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mlr.search(refuse_traffic, **kwargs)


def test_a_trial_without_a_duration_is_refused():
    with pytest.raises(InputError, match="must take a duration"):
        mlr.search(lambda rate: pytest.fail("traffic started"), max_load_pps=1e6)
    with pytest.raises(InputError, match="a callable"):
        mlr.search("fast", max_load_pps=1e6)


class ShortSender:
    """A real generator that sends half of what it is asked for: the unsent half is the
    generator's shortfall, which must not count as the receiver's loss."""

    def __init__(self, gen):
        self.gen, self.name = gen, gen.name

    def send(self, spec):
        return self.gen.send(dataclasses.replace(spec, count=max(1, spec.count // 2)))


@pytest.fixture(scope="module")
def receiver():
    """The drop experiment's receiver with VARIANT set up on a namespace pair, a generator
    on the sender, and the generator's maximum into it: (generator, spec, counter, top)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with topology.Topology(topology.pair()) as topo:
        snd, rcv = topo.iface("snd"), topo.iface("rcv")
        with drop_receiver(rcv, "udp") as r, traffic.generator("auto", snd) as gen:
            spec = TrafficSpec.between(snd, rcv, size=64, count=100_000)
            r.use("xdp_native")  # the generator's maximum: into a receiver that keeps up
            top = loadsweep.generator_trial(gen, spec, r.processed, seconds=TRIAL_S, settle_s=0.05)(None).offered_pps
            r.use(VARIANT)
            yield gen, spec, r.processed, top
            r.off()


@pytest.fixture(scope="module")
def both(receiver):
    """The binary search's NDR and MLRsearch's NDR/PDR on the same receiver, one after the other."""
    gen, spec, counter, top = receiver
    trial = loadsweep.generator_trial(gen, spec, counter, seconds=TRIAL_S, settle_s=0.05)
    binary = loadsweep.search(trial, loss_threshold=0.0, hi=top, resolution=WIDTH, max_iterations=8)
    found = mlr.search(trial, max_load_pps=top, final_trial_s=TRIAL_S, width=WIDTH, time_budget_s=20.0)
    return binary, found, top


@needs_root
def test_unsent_packets_are_not_counted_as_lost(receiver):
    gen, spec, counter, top = receiver
    trial = loadsweep.generator_trial(ShortSender(gen), spec, counter, seconds=TRIAL_S, settle_s=0.05)
    rate = 20_000.0  # far below what the stack drops here: nothing should be lost
    t0 = time.monotonic()
    t = mlr.from_point(rate, TRIAL_S, trial(rate, duration=TRIAL_S), time.monotonic() - t0)
    assert t.asked == round(rate * TRIAL_S) and 0 < t.sent < t.asked
    assert t.unsent == t.asked - t.sent >= 0.4 * t.asked
    assert t.lost == max(0, t.sent - t.received) and t.lost <= 0.01 * t.sent
    told = mlr.measurement(t)
    assert told.offered_count == t.sent and told.unsent_count == 0 and told.loss_count == t.judged_lost
    # what MLRsearch is told is the trial's own verdict on the packets sent: those not received, or
    # a pacing shortfall of what was sent (a short paced run here can fall a few % behind its
    # target); the unsent half is in neither
    assert told.loss_count == max(t.lost, math.ceil(t.loss_ratio * t.sent - 1e-6))
    assert told.loss_ratio <= max(t.lost / t.sent, t.loss_ratio) + 1 / t.sent
    # MLRsearch's own reading of the same counts (intended = asked) would call half of them bad
    from MLRsearch import MeasurementResult

    theirs = MeasurementResult(
        intended_duration=TRIAL_S, intended_load=rate, offered_count=t.sent, loss_count=t.lost, intended_count=t.asked
    )
    assert theirs.loss_ratio >= 0.4 and told.loss_ratio < theirs.loss_ratio - 0.2
    rows = mlr.MlrResult(mlr.Settings(), top, top / 1000, {0.0: 0.0}, {0.0: (None, None)}, [t]).trial_rows(
        variant=VARIANT, size=64
    )
    got = {r["measure"]: r["value"] for r in rows}
    assert got["unsent_pkts"] == t.unsent and got["lost_pkts"] == t.lost and got["mlr_loss_pkts"] == t.judged_lost


@needs_root
def test_ndr_at_most_pdr_at_most_max_load(both):
    _, found, top = both
    assert 0 < found.ndr_pps <= found.pdr_pps <= top
    for loss in (0.0, 0.005):
        lower, upper = found.bounds[loss]
        assert lower is not None and lower <= top
        assert upper is None or lower < upper <= top
        if upper is not None and found.complete:  # it stopped because the bounds met its width goal
            assert (upper - lower) / upper <= WIDTH * 1.001
    assert found.trials and all(t.load_pps <= top * (1 + 1e-9) and t.duration_s <= TRIAL_S + 1e-9 for t in found.trials)
    assert all(t.asked == max(1, round(t.load_pps * t.duration_s)) for t in found.trials)
    rows = found.rows(variant=VARIANT, size=64)
    assert [r["measure"] for r in rows] == ["ndr_pps", "pdr_pps"]
    assert all(r["kind"] == "mlrsearch" and r["method"] == "mlrsearch" and r["unit"] == "pps" for r in rows)
    assert rows[0]["value"] == found.ndr_pps and rows[0]["threshold"] == 0.0 and rows[1]["threshold"] == 0.005
    trial_rows = found.trial_rows(variant=VARIANT, size=64)
    assert len(trial_rows) == len(found.trials) * len(found.trials[0].measures())


@needs_root
def test_binary_search_and_mlrsearch_ndr_agree_within_a_factor_of_three(both):
    """On two shared cores one search is one sample: the stack's no-drop rate here is where
    the receive path, running in the sender's context, slows the generator 5% below its
    target, and other work on the machine moves that point. In nine runs of both searches
    on one receiver (with others' tests running), binary / MLRsearch ranged 0.52 to 1.32,
    and each method's own NDR moved between runs by 3x. So the bound is loose: a factor of
    three. It still fails on what a broken adapter does: durations or counts off by a factor
    (rates 5x or more off), a rate shortfall or unsent packets judged otherwise than the
    binary search judges them (an NDR stuck at the max or the min load, 1% of the max),
    loss ratios inverted."""
    binary, found, top = both
    a, b = binary.rate, found.ndr_pps
    assert a > 0 and b > 0 and not math.isnan(b)
    assert 1 / 3 <= a / b <= 3.0, (a, b, top)
    assert a < 0.95 * top and b < 0.95 * top  # a real search, not both generator-limited
    assert b > 1.5 * found.min_load_pps  # and not stuck at the bottom of its range


@needs_root
def test_time_budget_ends_the_search_with_the_bounds_so_far(receiver):
    gen, spec, counter, top = receiver
    trial = loadsweep.generator_trial(gen, spec, counter, seconds=0.1, settle_s=0.05)
    found = mlr.search(trial, max_load_pps=top, final_trial_s=0.1, width=0.001, time_budget_s=0.1)
    assert not found.complete and found.trials
    assert all(r["complete"] is False for r in found.rows(variant=VARIANT, size=64))
    lower, upper = found.ndr_bounds
    assert lower is None or upper is None or lower < upper


@needs_root
def test_side_by_side_says_whether_the_ndrs_agree(both):
    """The drop experiment's side-by-side table over these two real searches: the NDRs agree
    when they differ by no more than the trial spread (none here: no side-by-side trials)
    plus both searches' final brackets, and the sentence says which it is."""
    import pandas as pd

    from labkit.experiments import xdp_drop_mlr

    binary, found, top = both
    rows = [
        dict(r, kind="search", **c)
        for r, c in zip(binary.rows(variant=VARIANT, size=64), xdp_drop_mlr.binary_columns(binary, 1.0))
    ]
    table = pd.DataFrame(rows + found.rows(variant=VARIANT, size=64) + found.trial_rows(variant=VARIANT, size=64))
    got = xdp_drop_mlr.side_by_side(table).set_index("variant").loc[VARIANT]
    a, b = binary.rate, found.ndr_pps
    assert got["binary NDR Mpps"] == pytest.approx(a / 1e6, abs=1e-4)
    assert got["MLRsearch NDR Mpps"] == pytest.approx(b / 1e6, abs=1e-4)
    upper = rows[0]["upper_pps"]
    assert math.isnan(upper) or upper > rows[0]["lower_pps"] == a  # the binary search's bracket
    lower, high = found.ndr_bounds
    tolerance = (0 if math.isnan(upper) else upper - a) + (0 if high is None else high - lower)
    assert got["NDRs agree"] == (abs(a - b) <= tolerance)
    text = "\n".join(xdp_drop_mlr.interpret(table))
    assert ("agree within the trial spread" in text) == (abs(a - b) <= tolerance)
    assert ("do NOT agree" in text) == (abs(a - b) > tolerance)
