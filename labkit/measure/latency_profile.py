"""One-way latency of a data path: with no load, and under background load at fixed
fractions of the data path's own no-drop rate.

    prof = latency.profile(probe, gen, spec, received=lambda: rcv.stats()["rx_packets"],
                           loads=(0.5, 0.9), probes=2000, probe_rate=2000)
    prof.ndr_pps                      # the no-drop rate found (RFC 2544 binary search)
    prof.points                       # one LatencyPoint per load: percentiles, counts, CDF
    rs.add(variant, trial, 64, point.measures(), kind="latency", load_fraction=point.fraction)
    latency.summary(table)            # per variant and load: percentiles (µs) with min..max over trials

The probes come from `dataplanes.latency.LatencyProbe` (stamped by the sender's XDP
program, histogrammed by the sink's), whose sink must be the receiver's XDP program; the
load comes from a labkit traffic generator sending SPEC (`gen.send`) at fraction x NDR,
paced, for longer than the probes take. "No drop" is a loss ratio at most `ndr_loss`
(default 0.1%: on shared CPUs a strict zero is one stray interrupt away), found with
`loadsweep.search`; where the data path kept up with the generator at full speed, the
NDR is the generator's rate and the profile says so (`generator_limited`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from labkit.dataplanes.latency_probe import METHODS
from labkit.errors import InputError
from labkit.measure import loadsweep

#: the percentiles a point reports, as measure names
PERCENTILE_MEASURES = ("p50_ns", "p90_ns", "p99_ns", "p99.9_ns", "max_ns")


@dataclass
class LatencyPoint:
    """The probes' delay distribution at one background load."""

    fraction: float  # of the no-drop rate; 0: no background load
    load_pps: float  # the background rate the generator reached (0 without load)
    distribution: dict  # p50_ns .. max_ns, probes, sent, other, clock_back
    cdf: list = field(default_factory=list)  # [(ns, fraction of probes <= ns)]

    def measures(self) -> dict:
        """{measure: (value, unit)}: lat_p50_ns .. lat_max_ns, probes sent and received, load."""
        d = self.distribution
        out = {f"lat_{k}": (d[k], "ns") for k in PERCENTILE_MEASURES}
        out.update(
            {
                "lat_probes_sent": (d.get("sent", 0), "packets"),
                "lat_probes": (d["probes"], "packets"),
                "lat_load_pps": (self.load_pps, "pps"),
            }
        )
        return out


@dataclass
class Profile:
    ndr_pps: float
    generator_limited: bool
    points: list  # LatencyPoint, no load first
    notes: list = field(default_factory=list)
    probe_method: str = ""  # how the probes were sent (dataplanes.latency.METHODS)


def check(loads, probes: int, probe_rate: float, ndr_loss: float) -> None:
    """The profile's parameters, before anything runs."""
    if any(not isinstance(f, (int, float)) or not 0 < f <= 1 for f in loads):
        raise InputError(f"latency loads {list(loads)}: fractions of the no-drop rate in (0, 1], e.g. [0.5, 0.9]")
    if not isinstance(probes, int) or probes < 10:
        raise InputError(f"latency probes {probes!r}: at least 10 per point (percentiles need samples)")
    if not 0 < probe_rate <= 100_000:
        raise InputError(f"probe rate {probe_rate!r}: 0 < rate <= 100000 per second")
    if not 0 <= ndr_loss < 0.1:
        raise InputError(f"ndr_loss {ndr_loss!r}: a loss ratio in [0, 0.1), e.g. 0.001")


def profile(
    probe,
    gen,
    spec,
    received,
    *,
    loads=(0.5, 0.9),
    probes: int = 2000,
    probe_rate: float = 2000.0,
    ndr_loss: float = 0.001,
    ndr_seconds: float = 0.5,
    ndr_iterations: int = 8,
    ndr_pps: float | None = None,
) -> Profile:
    """The NDR of what RECEIVED() counts (unless NDR_PPS is given), then PROBES probes at
    PROBE_RATE with no load and with SPEC sent at each fraction of LOADS of that rate."""
    check(loads, probes, probe_rate, ndr_loss)
    notes, limited = [], False
    if ndr_pps is None:
        trial = loadsweep.generator_trial(gen, spec, received, seconds=ndr_seconds)
        found = loadsweep.search(trial, loss_threshold=ndr_loss, max_iterations=ndr_iterations, resolution=0.05)
        ndr_pps, limited = found.rate, bool(found.generator_limited[0])
    probe_s = probes / probe_rate
    points = []
    with probe.peer_ready():
        probe.reset()
        probe.send(probes, probe_rate)
        time.sleep(0.05)  # the last probes arrive
        points.append(LatencyPoint(0.0, 0.0, probe.distribution(), probe.cdf()))
        for f in loads:
            rate = f * ndr_pps
            if not rate > 0:
                notes.append(f"no load point at {f:.0%}: the no-drop rate found was 0")
                continue
            load = dataclasses.replace(spec, rate_pps=rate, count=max(spec.cpus, int(rate * (probe_s + 0.6))))
            d = probe.under_load(lambda: gen.send(load), probes, probe_rate)
            offered = d.pop("load", None)
            time.sleep(0.05)
            points.append(LatencyPoint(float(f), float(getattr(offered, "pps", float("nan"))), d, probe.cdf()))
    return Profile(float(ndr_pps), limited, points, notes, getattr(probe, "method", ""))


#: the kind of the rows a profile is recorded as, and the column that holds a point's load
KIND, LOAD = "latency", "load_fraction"


def load_label(fraction) -> str:
    return "no load" if not fraction else f"{fraction:.0%} NDR"


def sent_by(lat) -> str:
    """How the probes behind SUMMARY were sent, in words for an interpretation ('' where
    its rows do not say)."""
    if lat is None or "probe_method" not in getattr(lat, "columns", ()):
        return ""
    methods = sorted({m for ms in lat["probe_method"].dropna() for m in str(ms).split(", ") if m})
    return " or ".join(METHODS.get(m, m) for m in methods)


def summary(table):
    """Per variant and load of one run's TABLE (its rows of kind 'latency'): each
    percentile's mean over trials with min and max (µs), the background load and no-drop
    rate (Mpps), probes received, trials. The one reading of latency rows, whichever
    experiment recorded them."""
    import pandas as pd

    cols = ["variant", LOAD, "load", "ndr_mpps", "load_mpps", "probes", "trials"]
    if "kind" not in table.columns or LOAD not in table.columns:
        return pd.DataFrame(columns=cols)
    t = table[table["kind"] == KIND]
    if t.empty:
        return pd.DataFrame(columns=cols)
    ndr = t[t["measure"] == "ndr_pps"].groupby("variant")["value"].mean()
    out = []
    for (v, f), g in t[t[LOAD].notna()].groupby(["variant", LOAD], sort=False):
        row = {
            "variant": v,
            LOAD: float(f),
            "load": load_label(f),
            "ndr_mpps": ndr.get(v, float("nan")) / 1e6,
            "load_mpps": g[g["measure"] == "lat_load_pps"]["value"].mean() / 1e6,
            "probes": g[g["measure"] == "lat_probes"]["value"].sum(),
            "trials": g["trial"].nunique(),
        }
        if "probe_method" in g.columns:  # rows recorded before probes could be sent two ways lack it
            row["probe_method"] = ", ".join(sorted(set(g["probe_method"].dropna())))
        for q in PERCENTILE_MEASURES:
            q = q[:-3]  # p50_ns -> p50
            vals = g[g["measure"] == f"lat_{q}_ns"]["value"].dropna() / 1e3
            row[f"{q}_us"], row[f"{q}_us_min"], row[f"{q}_us_max"] = vals.mean(), vals.min(), vals.max()
        out.append(row)
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(out).sort_values(["variant", LOAD]).reset_index(drop=True)
