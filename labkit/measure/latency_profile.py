"""One-way latency of a data path, the way FD.io CSIT measures it: with no load, and under
background load at fixed fractions of the data path's own PDR (the highest rate it forwards
losing at most 0.5%), every probe's delay kept in an HDR histogram.

    prof = latency_profile.profile(probe, gen, spec, received=lambda: rcv.stats()["rx_packets"],
                                   loads=(0.1, 0.5, 0.9), probes=2000, probe_rate=2000)
    prof.pdr_pps, prof.ndr_pps        # the rates MLRsearch found (`labkit.measure.mlr`)
    prof.points                       # one LatencyPoint per load: its HdrHistogram, counts, percentiles
    record(rs, variant, trial, size, prof)   # its rows, one point's histogram encoded in each 'lat_hdr' row
    summary(table)                    # per variant and load: percentiles (µs) with min..max over trials,
                                      # and p50/p99 of the histogram merged over trials

The probes come from `dataplanes.latency_probe.LatencyProbe` (stamped by the sender, every
delay kept by the sink's XDP program, which must be the receiver's); the load comes from a
labkit traffic generator sending SPEC (`gen.send`) at fraction x PDR, paced, for longer
than the probes take. The PDR (loss at most `pdr_loss`, 0.5% as in CSIT) and the NDR (loss
at most `ndr_loss`) come from one MLRsearch over the generator's rates up to its full speed;
where the data path kept up with the generator at full speed, the PDR is the generator's
rate and the profile says so (`generator_limited`). Every point's samples go into an
HdrHistogram (`labkit.measure.hdr`), from which its percentiles are read and which the
table keeps, encoded, so percentiles can be recomputed and trials or runs merged later.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from labkit.dataplanes.latency_probe import METHODS, header
from labkit.errors import InputError
from labkit.measure import hdr, loadsweep, mlr

#: the percentiles a point reports, as measure names
PERCENTILE_MEASURES = ("p50_ns", "p90_ns", "p99_ns", "p99.9_ns", "max_ns")
PDR_LOSS = 0.005  # CSIT's PDR: at most 0.5% lost
#: the search's relative width goal: the loads are fractions of the PDR, which need no finer bound
SEARCH_WIDTH = 0.05


@dataclass
class LatencyPoint:
    """The probes' delays at one background load."""

    fraction: float  # of the PDR; 0: no background load
    load_pps: float  # the background rate the generator reached (0 without load)
    histogram: object  # hdrh HdrHistogram of every probe's delay (ns)
    counts: dict = field(default_factory=dict)  # probes, sent, other, clock_back, max_ns (the sink's)

    @property
    def distribution(self) -> dict:
        """p50_ns .. p99.9_ns and max_ns (the sink's exact maximum), probes, sent, other, clock_back.
        A percentile is the highest delay its histogram bucket holds, which can lie above the
        exact maximum when both share a bucket: it is capped there."""
        d = hdr.distribution(self.histogram)
        if self.counts.get("max_ns") and d["probes"]:
            d["max_ns"] = float(self.counts["max_ns"])
            d.update({k: min(v, d["max_ns"]) for k, v in d.items() if k.startswith("p")})
        return {**d, **{k: self.counts[k] for k in ("sent", "other", "clock_back") if k in self.counts}}

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

    def cdf(self) -> list[tuple[float, float]]:
        """[(delay ns, fraction of probes at or below it)], read from the histogram."""
        return [(ns, level / 100) for level, ns in hdr.steps(self.histogram)]


@dataclass
class Profile:
    pdr_pps: float
    generator_limited: bool
    points: list  # LatencyPoint, no load first
    notes: list = field(default_factory=list)
    probe_method: str = ""  # how the probes were sent (dataplanes.latency_probe.METHODS)
    ndr_pps: float = math.nan  # the NDR the same search found (NaN: given a PDR, none searched)
    search_s: float = 0.0  # the search's time (0: given)


def check(loads, probes: int, probe_rate: float, ndr_loss: float, pdr_loss: float = PDR_LOSS) -> None:
    """The profile's parameters, before anything runs."""
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in loads):
        raise InputError(f"latency loads {list(loads)}: fractions of the PDR in (0, 1], e.g. [0.1, 0.5, 0.9]")
    if not isinstance(probes, int) or not 10 <= probes <= header().SAMPLES:
        raise InputError(
            f"latency probes {probes!r}: 10 .. {header().SAMPLES} per point (percentiles need "
            "samples; the sink keeps that many)"
        )
    if not 0 < probe_rate <= 100_000:
        raise InputError(f"probe rate {probe_rate!r}: 0 < rate <= 100000 per second")
    if not 0 <= ndr_loss < 0.1:
        raise InputError(f"ndr_loss {ndr_loss!r}: a loss ratio in [0, 0.1), e.g. 0.001")
    if not ndr_loss < pdr_loss < 0.1:
        raise InputError(f"pdr_loss {pdr_loss!r}: a loss ratio above ndr_loss ({ndr_loss}) and below 0.1, e.g. 0.005")


def search(
    gen, spec, received, *, ndr_loss: float, pdr_loss: float = PDR_LOSS, trial_s: float = 0.5, budget_s: float = 10.0
) -> mlr.MlrResult:
    """NDR and PDR of what RECEIVED() counts, by MLRsearch between the generator's full speed
    (one trial finds it) and a thousandth of it: trials from a fifth of TRIAL_S up to TRIAL_S,
    a bound within SEARCH_WIDTH, ended after BUDGET_S with the bounds it has."""
    trial = loadsweep.generator_trial(gen, spec, received, seconds=trial_s)
    top = trial(None)
    return mlr.search(
        trial,
        max_load_pps=max(top.offered_pps, 1.0),
        ndr_loss=ndr_loss,
        pdr_loss=pdr_loss,
        final_trial_s=trial_s,
        initial_trial_s=trial_s / 5,
        width=SEARCH_WIDTH,
        time_budget_s=max(budget_s, trial_s),
    )


def best_lower_bound(found: mlr.MlrResult, loss: float) -> float:
    """Where a search ran out of time without a conditional throughput: its relevant lower
    bound for LOSS, else the highest load one of its trials passed at (loss at most LOSS),
    else 0."""
    lower = found.bounds.get(loss, (None, None))[0]
    if lower is not None:
        return float(lower)
    return max((t.load_pps for t in found.trials if t.loss_ratio <= loss), default=0.0)


def profile(
    probe,
    gen,
    spec,
    received,
    *,
    loads=(0.1, 0.5, 0.9),
    probes: int = 2000,
    probe_rate: float = 2000.0,
    ndr_loss: float = 0.001,
    pdr_loss: float = PDR_LOSS,
    search_trial_s: float = 0.5,
    search_budget_s: float = 10.0,
    pdr_pps: float | None = None,
    searched: Profile | None = None,
) -> Profile:
    """The PDR of what RECEIVED() counts (unless PDR_PPS is given, or SEARCHED: an earlier
    profile of the same path, whose PDR and generator limit are taken over), then PROBES
    probes at PROBE_RATE with no load and with SPEC sent at each fraction of LOADS of that
    rate."""
    check(loads, probes, probe_rate, ndr_loss, pdr_loss)
    notes, limited, ndr, took = [], False, math.nan, 0.0
    if searched is not None:
        pdr_pps, limited = searched.pdr_pps, searched.generator_limited
    if pdr_pps is None:
        found = search(
            gen, spec, received, ndr_loss=ndr_loss, pdr_loss=pdr_loss, trial_s=search_trial_s, budget_s=search_budget_s
        )
        pdr_pps, ndr, took = found.pdr_pps, found.ndr_pps, found.search_s
        limited = found.generator_limited(pdr_loss)
        if not found.complete:
            pdr_pps = pdr_pps if not math.isnan(pdr_pps) else best_lower_bound(found, pdr_loss)
            notes.append(
                f"the PDR search ended at its time budget ({search_budget_s:g} s) before its bounds were "
                f"within {SEARCH_WIDTH:.0%}: the loads are fractions of its best lower bound ({pdr_pps:.0f} pps)"
            )
        if math.isnan(pdr_pps):
            pdr_pps = 0.0
    probe_s = probes / probe_rate
    points = []
    with probe.peer_ready():
        probe.reset()
        probe.send(probes, probe_rate)
        time.sleep(0.05)  # the last probes arrive
        points.append(_point(0.0, 0.0, probe.readings()))
        for f in loads:
            rate = f * pdr_pps
            if not rate > 0:
                notes.append(f"no latency point at {f:.0%} of the PDR: the PDR found was 0")
                continue
            load = dataclasses.replace(spec, rate_pps=rate, count=max(spec.cpus, int(rate * (probe_s + 0.6))))
            r = probe.under_load(lambda: gen.send(load), probes, probe_rate)
            offered = r.pop("load", None)
            time.sleep(0.05)
            r = {**r, **probe.readings()}  # the probes that arrived after the load stopped
            points.append(_point(float(f), float(getattr(offered, "pps", math.nan)), r))
    return Profile(float(pdr_pps), limited, points, notes, getattr(probe, "method", ""), float(ndr), took)


def _point(fraction: float, load_pps: float, readings: dict) -> LatencyPoint:
    samples = readings.pop("samples")
    return LatencyPoint(fraction, load_pps, hdr.of(samples), readings)


#: the kind of the rows a profile is recorded as, and the column that holds a point's load
KIND, LOAD = "latency", "load_fraction"


def record(rs, variant: str, trial: int, size, prof: Profile, flags=(), **extra) -> None:
    """PROF's rows into RS (a results.ResultSet), of kind KIND: the PDR and NDR (no load
    fraction), then per point its measures and one row of measure hdr.MEASURE whose column
    hdr.COLUMN holds the point's histogram, encoded; its notes as caveats."""
    if prof.probe_method:
        extra = {"probe_method": prof.probe_method, **extra}
    flags = list(flags)  # FLAGS: on every row (e.g. that the numbers are functional checks only)
    rates = {"pdr_pps": (prof.pdr_pps, "pps")}
    if not math.isnan(prof.ndr_pps):  # given a PDR, no NDR was searched
        rates["ndr_pps"] = (prof.ndr_pps, "pps")
    limited = ["generator-limited"] if prof.generator_limited else []
    rs.add(variant, trial, size, rates, flags + limited, kind=KIND, **{LOAD: None}, **extra)
    for pt in prof.points:
        rs.add(variant, trial, size, pt.measures(), flags, kind=KIND, **{LOAD: pt.fraction}, **extra)
        rs.add(
            variant,
            trial,
            size,
            {hdr.MEASURE: (pt.histogram.get_total_count(), "probes")},
            flags,
            kind=KIND,
            **{LOAD: pt.fraction, hdr.COLUMN: hdr.encode(pt.histogram)},
            **extra,
        )
    for note in prof.notes:
        rs.caveat(note, variant)


def cdf_rows(variant: str, trial: int, prof: Profile) -> list[dict]:
    """The CDF points of PROF's points, for `reporting.plots.latency_cdf`."""
    return [
        {"variant": variant, "trial": trial, LOAD: pt.fraction, "delay_us": ns / 1e3, "fraction": f}
        for pt in prof.points
        for ns, f in pt.cdf()
    ]


def load_label(fraction) -> str:
    return "no load" if not fraction else f"{fraction:.0%} PDR"


def sent_by(lat) -> str:
    """How the probes behind SUMMARY were sent, in words for an interpretation ('' where
    its rows do not say)."""
    if lat is None or "probe_method" not in getattr(lat, "columns", ()):
        return ""
    methods = sorted({m for ms in lat["probe_method"].dropna() for m in str(ms).split(", ") if m})
    return " or ".join(METHODS.get(m, m) for m in methods)


def rate_of(t, variant: str) -> float:
    """The mean over trials of the rate VARIANT's loads are fractions of, in T (its rows with
    no load fraction): the PDR, or the NDR in runs recorded before the PDR was."""
    rows = t[t["variant"] == variant]
    for measure in ("pdr_pps", "ndr_pps"):
        v = rows[rows["measure"] == measure]["value"].dropna()
        if len(v):
            return float(v.mean())
    return math.nan


def summary(table):
    """Per variant and load of one run's TABLE (its rows of kind 'latency'): each
    percentile's mean over trials with min and max (µs), p50 and p99 of the histogram of
    every trial's probes merged (`p50_us_all`, `p99_us_all`; NaN in runs recorded before
    histograms), the background load and the rate it is a fraction of (PDR, Mpps; column
    `rate`: 'PDR', or 'NDR' in older runs), probes received, trials. The one reading of
    latency rows, whichever experiment recorded them."""
    import pandas as pd

    cols = ["variant", LOAD, "load", "pdr_mpps", "load_mpps", "probes", "trials"]
    if "kind" not in table.columns or LOAD not in table.columns:
        return pd.DataFrame(columns=cols)
    t = table[table["kind"] == KIND]
    if t.empty:
        return pd.DataFrame(columns=cols)
    merged = hdr.by_point(t, LOAD)
    old = "pdr_pps" not in set(t["measure"])  # runs recorded before the PDR: loads were fractions of the NDR
    out = []
    for (v, f), g in t[t[LOAD].notna()].groupby(["variant", LOAD], sort=False):
        row = {
            "variant": v,
            LOAD: float(f),
            "load": "no load" if not f else f"{f:.0%} {'NDR' if old else 'PDR'}",
            "rate": "NDR" if old else "PDR",
            "pdr_mpps": rate_of(t, v) / 1e6,
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
        h = merged.get((v, float(f)))
        found = hdr.percentiles(h, (50.0, 99.0)) if h is not None else {50.0: math.nan, 99.0: math.nan}
        row["p50_us_all"], row["p99_us_all"] = found[50.0] / 1e3, found[99.0] / 1e3
        out.append(row)
    if not out:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(out).sort_values(["variant", LOAD]).reset_index(drop=True)


def histogram_lines(lat) -> list[str]:
    """Per variant, p50 and p99 (µs) at each load from the histogram of every trial's probes
    together (SUMMARY's p50_us_all and p99_us_all); [] where the run recorded no histograms."""
    if lat is None or not len(lat) or "p50_us_all" not in lat.columns or lat["p50_us_all"].isna().all():
        return []
    parts = []
    for v, g in lat.groupby("variant", sort=False):
        points = [
            f"{r.load} {r.p50_us_all:.1f}/{r.p99_us_all:.1f}"
            for r in g.sort_values(LOAD).itertuples()
            if r.p50_us_all == r.p50_us_all
        ]
        parts.append(f"{v}: {', '.join(points)}")
    return [
        "p50/p99 in µs, read from the HDR histogram of every trial's probes at each point: " + "; ".join(parts) + "."
    ]
