"""Offered-load sweeps, NDR/PDR search and CPU cost at fixed loads, for any receiver.

Everything here is driven by one callable, a *trial*: send at a target rate and say what
happened.

    trial(rate_pps | None) -> Point(offered_pps, received_pps, loss_ratio, cpu={...})

`None` means "as fast as the generator can". `generator_trial(...)` builds one from a
labkit traffic generator, a TrafficSpec and a counter of what the receiver under test
processed (a BPF map, an iptables rule, a socket); experiments may write their own. Its
trials also take `duration=` (seconds) and their Points carry the counts (asked, sent,
received), which `labkit.measure.mlr` (NDR/PDR by MLRsearch) needs.

    trial = loadsweep.generator_trial(gen, spec, received=lambda: filt.dropped(), seconds=1.0)
    rows  = loadsweep.sweep(trial, variant="xdp_native", size=64, steps=8)          # the curve
    found = loadsweep.search(trial, loss_threshold=0.0)                             # NDR
    found = loadsweep.search(trial, loss_threshold=0.005)                           # PDR 0.5%
    rows += found.rows(variant="xdp_native", size=64)
    rows += loadsweep.cpu_at_loads(trial, [0.5e6, 1e6, 2e6], variant="xdp_native", size=64)
    loadsweep.add_to(resultset, rows)                 # labkit.results.ResultSet

Rows are tidy dicts: variant, trial, size, measure, value, unit, plus `target_pps` (None at
full speed) and `step`/`threshold` where they apply; `add_to` files them in a ResultSet.
Measures: offered_pps, received_pps, loss_ratio, and every key of Point.cpu (e.g.
busy_fraction of the receiving CPUs, cpu_ns_per_pkt).

The search is RFC 2544's binary search, as FD.io CSIT runs it per packet size: the
highest offered rate whose loss ratio is at most the threshold (0: NDR; e.g. 0.005: PDR),
between `lo` and the generator's maximum, to a relative resolution. A rate that passes at
the generator's maximum is reported with `generator_limited=True`: the receiver's real
NDR is higher than this generator can show. Repeat whole searches (`trials`) and report
the spread: on two shared cores one search is one sample.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from labkit.errors import InputError


@dataclass
class Point:
    """One trial at one offered load."""

    offered_pps: float
    received_pps: float
    loss_ratio: float  # packets offered but not counted by the receiver / offered
    cpu: dict = field(default_factory=dict)  # name -> value, e.g. busy_fraction, cpu_ns_per_pkt
    target_pps: float | None = None
    notes: list = field(default_factory=list)
    asked: int | None = None  # packets the generator was asked for (None: not counted)
    sent: int | None = None  # packets it sent
    received: int | None = None  # packets counted at the receiver's hook
    seconds: float | None = None  # how long it sent

    def measures(self) -> dict:
        """{name: (value, unit)} as labkit.results.ResultSet.add takes them."""
        out = {
            "offered_pps": (self.offered_pps, "pps"),
            "received_pps": (self.received_pps, "pps"),
            "loss_ratio": (self.loss_ratio, "ratio"),
        }
        for k, v in self.cpu.items():
            out[k] = (v, CPU_UNITS.get(k, ""))
        return out


CPU_UNITS = {
    "busy_fraction": "fraction",
    "cpu_ns_per_pkt": "ns",
    "busy_s": "s",
    "generator_cpu_s": "s",
    "net_rx_cores": "cores",
}
Trial = Callable[[float | None], Point]


def point(offered_packets: int, received_packets: int, seconds: float, target_pps=None, **cpu) -> Point:
    """A Point from counts: loss is what was offered and not received (never negative)."""
    if seconds <= 0:
        raise InputError("a trial must last a positive time")
    lost = max(0, offered_packets - received_packets)
    return Point(
        offered_packets / seconds,
        received_packets / seconds,
        lost / offered_packets if offered_packets else float("nan"),
        dict(cpu),
        target_pps,
        asked=offered_packets,
        sent=offered_packets,
        received=received_packets,
        seconds=seconds,
    )


# ---------------------------------------------------------------- a trial from a generator
#: how far below its target a paced generator may stay before the shortfall counts as loss
RATE_TOLERANCE = 0.05


def generator_trial(
    gen,
    spec,
    received: Callable[[], int],
    *,
    seconds: float = 1.0,
    max_count: int | None = None,
    receiving_cpus: list[int] | None = None,
    settle_s: float = 0.1,
    clock=None,
) -> Trial:
    """A trial that sends SPEC with generator GEN at the asked rate for about SECONDS (or the
    call's own `duration=`) and reads RECEIVED() (the count at the receiver's hook) before
    and after; its Point carries the counts (asked, sent, received) beside the rates.

    At a target rate the count is rate x seconds; at full speed (None) it is enough for
    about SECONDS at the last full speed seen (`max_count`, default spec.count, the first
    time).

    Loss: packets sent and never counted at the hook, and, at a target rate, the shortfall
    of the rate reached below the target beyond RATE_TOLERANCE. On a testbed where
    generator and receiver share a CPU, a receiver that cannot keep up slows the generator
    down instead of dropping (its work runs in the sender's context); a fixed-rate hardware
    tester cannot be slowed, so it would see that shortfall as loss.

    CPU: busy fraction of RECEIVING_CPUS (default all) over the trial, from /proc/stat;
    with CLOCK (softirq_clock.SoftirqClock), the receive path's cores busy (`net_rx_cores`) and
    its time per received packet (`cpu_ns_per_pkt`), else all busy time per packet."""
    from labkit import measure

    if seconds <= 0:
        raise InputError(f"seconds {seconds}: a trial must last a positive time")
    spec.validate()
    last_full = {"pps": None}

    def trial(rate: float | None, duration: float | None = None) -> Point:
        secs = seconds if duration is None else duration
        if secs <= 0:
            raise InputError(f"duration {secs}: a trial must last a positive time")
        if rate is not None:
            if rate <= 0:
                raise InputError(f"rate {rate}: a positive rate, or None for full speed")
            count = max(spec.cpus, int(round(rate * secs)))
        elif last_full["pps"]:
            count = max(10_000, int(last_full["pps"] * secs))
        else:
            count = max_count or spec.count
        s = dataclasses.replace(spec, rate_pps=rate, count=count)
        t0 = time.monotonic()
        m = measure.run_trial(lambda: gen.send(s), received, size=spec.size, settle_s=settle_s, clock=clock)
        wall = time.monotonic() - t0
        got = m.processed_pps
        loss = m.loss_ratio
        if rate is None:
            last_full["pps"] = m.offered_pps
        else:
            shortfall = max(0.0, 1 - got / rate)
            if shortfall > RATE_TOLERANCE:
                loss = max(loss, shortfall)
        cpus = receiving_cpus if receiving_cpus is not None else list(range(len(m.cpu.per_cpu_busy)))
        busy = sum(m.cpu.per_cpu_busy[i] for i in cpus if i < len(m.cpu.per_cpu_busy))
        cpu = {
            "busy_fraction": busy / (wall * len(cpus)) if cpus and wall > 0 else float("nan"),
            "generator_cpu_s": m.generator_cpu_s,
        }
        if clock is not None:
            cpu.update(
                net_rx_cores=m.receiver_cpu_s / wall if wall > 0 else float("nan"), cpu_ns_per_pkt=m.cpu_ns_per_pkt
            )
        else:
            cpu["cpu_ns_per_pkt"] = m.system_cpu_ns_per_pkt
        return Point(
            m.offered_pps,
            got,
            loss,
            cpu,
            rate,
            list(m.offered.notes),
            count,
            m.offered.packets,
            m.processed,
            m.elapsed_s,
        )

    return trial


# ---------------------------------------------------------------- sweep
def sweep_rates(max_pps: float, steps: int = 8, low_fraction: float = 0.1) -> list[float]:
    """STEPS target rates from low_fraction x max to max, evenly spaced."""
    if steps < 1:
        raise InputError(f"steps {steps}: at least one")
    if not 0 < low_fraction <= 1:
        raise InputError(f"low_fraction {low_fraction}: in (0, 1]")
    if steps == 1:
        return [max_pps]
    return [max_pps * (low_fraction + (1 - low_fraction) * i / (steps - 1)) for i in range(steps)]


def sweep(
    trial: Trial,
    *,
    variant: str,
    size: int,
    rates: list[float] | None = None,
    steps: int = 8,
    low_fraction: float = 0.1,
    trials: int = 1,
    include_max: bool = True,
) -> list[dict]:
    """Received rate and loss against offered rate, from low load to the generator's maximum.

    Without RATES, one full-speed trial finds the maximum first and STEPS rates below it
    are swept (targets, rounded; the offered rate actually reached is what is recorded).
    INCLUDE_MAX adds full-speed points. Each rate is tried TRIALS times, in interleaved
    order (all rates, then all rates again) so slow drifts of the machine spread evenly."""
    if trials < 1:
        raise InputError(f"trials {trials}: at least one")
    rows: list[dict] = []
    if rates is None:
        top = trial(None)
        rows += point_rows(top, variant, size, trial=0, step=steps if include_max else -1)
        rates = sweep_rates(top.offered_pps, steps, low_fraction)
        if include_max:
            rates = rates[:-1]  # the full-speed trials stand for the top of the curve
    if any(r is None or r <= 0 for r in rates):
        raise InputError("rates: positive numbers (pps)")
    for t in range(trials):
        for i, rate in enumerate(rates):
            rows += point_rows(trial(rate), variant, size, trial=t, step=i)
        if include_max and t > 0:
            rows += point_rows(trial(None), variant, size, trial=t, step=len(rates))
    return rows


def point_rows(p: Point, variant: str, size: int, trial: int, **extra) -> list[dict]:
    return [
        {
            "variant": variant,
            "trial": trial,
            "size": size,
            "measure": name,
            "value": float(value),
            "unit": unit,
            "target_pps": p.target_pps,
            **extra,
        }
        for name, (value, unit) in p.measures().items()
    ]


# ---------------------------------------------------------------- NDR / PDR
@dataclass
class SearchResult:
    """The outcome of one or more binary searches."""

    loss_threshold: float
    rates: list[float]  # the rate found, one per search (trial)
    generator_limited: list[bool]
    steps: list[list[Point]]  # every trial each search ran

    @property
    def rate(self) -> float:
        """The median of the searches' results."""
        r = sorted(self.rates)
        n = len(r)
        return (r[(n - 1) // 2] + r[n // 2]) / 2 if n else float("nan")

    def rows(self, *, variant: str, size: int) -> list[dict]:
        name = "ndr_pps" if self.loss_threshold == 0 else "pdr_pps"
        out = []
        for i, (rate, lim) in enumerate(zip(self.rates, self.generator_limited)):
            out.append(
                {
                    "variant": variant,
                    "trial": i,
                    "size": size,
                    "measure": name,
                    "value": float(rate),
                    "unit": "pps",
                    "threshold": self.loss_threshold,
                    "generator_limited": lim,
                    "iterations": len(self.steps[i]),
                }
            )
        return out


def search(
    trial: Trial,
    *,
    loss_threshold: float = 0.0,
    lo: float | None = None,
    hi: float | None = None,
    resolution: float = 0.02,
    max_iterations: int = 12,
    trials: int = 1,
) -> SearchResult:
    """The highest offered rate with loss ratio <= LOSS_THRESHOLD (binary search).

    HI defaults to the generator's maximum (a full-speed trial); LO to 1% of it. A rate
    passes when the loss ratio measured at it is at most the threshold. The search stops
    when hi - lo <= RESOLUTION x hi or after MAX_ITERATIONS trials. The rate reported is
    the offered rate measured at the highest passing trial (0 if none passed)."""
    if not 0 <= loss_threshold < 1:
        raise InputError(f"loss_threshold {loss_threshold}: a ratio in [0, 1), e.g. 0 (NDR) or 0.005 (PDR 0.5%)")
    if not 0 < resolution < 1:
        raise InputError(f"resolution {resolution}: a fraction in (0, 1), e.g. 0.02")
    if max_iterations < 1 or trials < 1:
        raise InputError("max_iterations and trials: at least one")
    if lo is not None and hi is not None and not 0 < lo < hi:
        raise InputError(f"lo {lo} and hi {hi}: need 0 < lo < hi")
    rates, limited, steps = [], [], []
    for _ in range(trials):
        tried: list[Point] = []
        top_rate = hi
        if top_rate is None:
            top = trial(None)
            tried.append(top)
            if top.loss_ratio <= loss_threshold:  # the receiver keeps up with the generator
                rates.append(top.offered_pps)
                limited.append(True)
                steps.append(tried)
                continue
            top_rate = top.offered_pps
        low = lo if lo is not None else top_rate * 0.01
        high = top_rate
        best = 0.0
        if hi is not None:  # try the upper bound itself first
            p = trial(high)
            tried.append(p)
            if p.loss_ratio <= loss_threshold:
                rates.append(p.offered_pps)
                limited.append(False)
                steps.append(tried)
                continue
        while len(tried) < max_iterations and high - low > resolution * high:
            mid = (low + high) / 2
            p = trial(mid)
            tried.append(p)
            if p.loss_ratio <= loss_threshold and not math.isnan(p.loss_ratio):
                low, best = mid, max(best, p.offered_pps)
            else:
                high = mid
        rates.append(best)
        limited.append(False)
        steps.append(tried)
    return SearchResult(loss_threshold, rates, limited, steps)


# ---------------------------------------------------------------- CPU at fixed loads
def cpu_at_loads(trial: Trial, loads: list[float], *, variant: str, size: int, trials: int = 1) -> list[dict]:
    """Trials at fixed offered loads (pps): the CPU cost of each variant at the same load,
    as in the XDP paper's CPU-vs-load figure (busy_fraction of the receiving CPUs)."""
    if not loads or any(l is None or l <= 0 for l in loads):
        raise InputError("loads: one or more positive rates in pps, e.g. [0.5e6, 1e6, 2e6]")
    rows = []
    for t in range(trials):
        for i, load in enumerate(loads):
            rows += point_rows(trial(load), variant, size, trial=t, step=i, load_pps=load)
    return rows


def add_to(resultset, rows: list[dict]) -> None:
    """File tidy ROWS in a labkit.results.ResultSet (extra keys become columns)."""
    core = {"variant", "trial", "size", "measure", "value", "unit"}
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in core}
        resultset.add(r["variant"], r["trial"], r["size"], {r["measure"]: (r["value"], r["unit"])}, **extra)
