"""HDR histograms of one-way delays: every probe's delay (ns) of one latency point recorded
into an HdrHistogram (the `hdrh` package), kept with the run as its base64 encoding, so
that percentiles can be recomputed and points merged (trials, runs) long after the run.

    h = hdr.of(samples_ns)                 # an HdrHistogram of every sample
    text = hdr.encode(h)                   # base64 (HdrHistogram's compressed V2 format), one table cell
    hdr.histogram(row)                     # back from a table row (its COLUMN), a dict, the text or a histogram
    hdr.merge([row_a, row_b])              # one histogram holding the samples of all
    hdr.percentiles(h, (50, 99))           # {50: ns, 99: ns}, read by hdrh
    hdr.distribution(h)                    # p50_ns .. p99.9_ns, max_ns and probes, as latency rows name them
    hdr.steps(h)                           # [(percentile, ns)] for a percentile plot (recorded levels)
    hdr.by_point(table)                    # {(variant, load): histogram merged over trials}

Range and resolution: 1 ns to one hour at 3 significant digits. Every delay below 2048 ns
is kept exactly (one counter per nanosecond); above, each value lands in a bucket at most
1/1024 of it wide, so a percentile is within 0.1% of the sample it names. The probes'
delays run from about 100 ns (a probe crossing one veth on an idle machine) to seconds (a
probe queued behind a flood); an hour leaves that range with room, and a delay outside it
is refused (`record`), never dropped silently. The histogram holds 33,792 counters; a
point of a few thousand probes encodes to one or two kilobytes.

A table stores a point's histogram in a row of its own: measure MEASURE (its value the
number of samples) with the encoding in column COLUMN, the point's other rows beside it.
"""

from __future__ import annotations

import math

from hdrh.histogram import HdrHistogram

from labkit.errors import InputError

LOWEST_NS, HIGHEST_NS, SIGNIFICANT = 1, 3_600 * 10**9, 3
COLUMN, MEASURE = "hdr", "lat_hdr"
#: the percentiles a latency point reports (as rows lat_p50_ns .. lat_p99.9_ns), then its maximum
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new() -> HdrHistogram:
    """An empty histogram with this module's range and resolution."""
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT)


def record(h: HdrHistogram, ns, count: int = 1) -> None:
    """One delay of NS nanoseconds (COUNT times) into H; a delay outside the range is an error."""
    if not 0 <= ns <= HIGHEST_NS or not h.record_value(int(ns), count):
        raise InputError(f"delay {ns!r} ns is outside the histogram's range 0..{HIGHEST_NS} ns")


def of(samples) -> HdrHistogram:
    """A histogram of every delay in SAMPLES (ns)."""
    h = new()
    for ns in samples:
        record(h, ns)
    return h


def encode(h: HdrHistogram) -> str:
    """H as base64 text (HdrHistogram's compressed V2 encoding, readable by every HdrHistogram)."""
    return h.encode().decode("ascii")


def histogram(item) -> HdrHistogram:
    """A histogram from ITEM: an HdrHistogram (itself), its encoding (text or bytes), or a
    row (a mapping or pandas Series) holding the encoding in COLUMN."""
    if isinstance(item, HdrHistogram):
        return item
    if not isinstance(item, (str, bytes)):
        try:
            item = item[COLUMN]
        except (KeyError, IndexError, TypeError):
            raise InputError(
                f"{type(item).__name__} holds no {COLUMN!r} column: pass a row of measure "
                f"{MEASURE!r}, an encoded histogram or a histogram"
            ) from None
    if not isinstance(item, (str, bytes)) or not item:
        raise InputError(f"no encoded histogram here ({item!r}): only rows of measure {MEASURE!r} carry one")
    try:
        return HdrHistogram.decode(item.encode("ascii") if isinstance(item, str) else item)
    except Exception as exc:  # hdrh raises base64, zlib and its own cookie errors
        raise InputError(f"not an encoded HdrHistogram ({str(item)[:24]}...): {exc}") from exc


def merge(items) -> HdrHistogram:
    """One histogram holding the samples of every histogram in ITEMS (anything `histogram`
    takes); empty for no items. The inputs are left as they were."""
    hs = [histogram(i) for i in items]
    if not hs:
        return new()
    out = HdrHistogram.decode(
        hs[0].encode()
    )  # a copy that keeps the first's minimum (adding into an empty one loses it)
    for h in hs[1:]:
        out.add(h)
    return out


def percentiles(item, qs=PERCENTILES) -> dict:
    """{q: delay in ns} for each percentile in QS of ITEM (anything `histogram` takes); NaN
    for a histogram without samples. Each value is the highest delay equivalent to the
    sample at that rank (within the resolution above)."""
    h = histogram(item)
    if not h.get_total_count():
        return {q: math.nan for q in qs}
    found = h.get_percentile_to_value_dict(list(qs))
    return {q: float(found[q]) for q in qs}


def distribution(item) -> dict:
    """{'p50_ns', 'p90_ns', 'p99_ns', 'p99.9_ns', 'max_ns', 'probes'} of ITEM: the names the
    latency rows use (NaN without samples)."""
    h = histogram(item)
    out = {f"p{q:g}_ns": v for q, v in percentiles(h).items()}
    out["max_ns"] = float(h.get_max_value()) if h.get_total_count() else math.nan
    out["probes"] = int(h.get_total_count())
    return out


def steps(item) -> list[tuple[float, float]]:
    """[(percentile level, delay ns)] at every recorded value of ITEM, in order: the
    fraction of samples at or below each delay, as hdrh's recorded iterator reads it."""
    return [(float(v.percentile_level_iterated_to), float(v.value_iterated_to)) for v in histogram(item)]


def by_point(table, load_column: str = "load_fraction") -> dict:
    """{(variant, load): the histogram of every trial's samples at that point} from the rows
    of measure MEASURE in TABLE (none: {}; runs recorded before histograms have none)."""
    if table is None or COLUMN not in getattr(table, "columns", ()) or load_column not in table.columns:
        return {}
    rows = table[(table["measure"] == MEASURE) & table[COLUMN].notna()]
    return {(v, float(f)): merge(g[COLUMN]) for (v, f), g in rows.groupby(["variant", load_column], sort=False)}
