"""HDR histograms of latency samples (labkit.measure.hdr) for real: delays of probes sent
across a veth (bpf/latency.c's sink keeps every one), recorded into HdrHistograms; the
encoding stored in a run's table and read back gives the same histogram; merging two
points gives the histogram of all their samples; percentiles agree with numpy's within
the histogram's resolution; the range covers 100 ns to seconds; bad input refused.

The probes go the way this machine allows (live frames, or AF_PACKET stamped at tc egress
where they are refused: run the file with LABKIT_REFUSE=live_frames for the other path)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import needs_root

from labkit import bpf, results
from labkit.dataplanes import latency_probe
from labkit.errors import InputError
from labkit.measure import hdr


def probe_samples(pair, counts: list[int], rate_pps: float = 4000) -> list[list[int]]:
    """The delays (ns) of COUNTS[i] probes sent across PAIR, one list per batch."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    out = []
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        with bpf.attach_xdp(rcv, probe.sink(), "native"), probe.peer_ready():
            for n in counts:
                probe.reset()
                assert probe.send(n, rate_pps=rate_pps) == n
                time.sleep(0.05)  # the last probes arrive
                out.append(probe.samples())
                assert probe.counts()["probes"] == n == len(out[-1])
    assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")
    return out


@needs_root
def test_a_histogram_of_real_probes_survives_the_results_table(pair, tmp_path):
    (samples,) = probe_samples(pair, [500])
    assert all(0 < ns < 10**9 for ns in samples), "one-way delays across a veth: above 0, below a second"
    h = hdr.of(samples)
    assert h.get_total_count() == 500
    text = hdr.encode(h)
    assert isinstance(text, str) and text.isascii()
    rs = results.ResultSet("hdr_test", {}, data_dir=tmp_path)
    rs.add("veth", 0, 64, {hdr.MEASURE: (500, "probes")}, kind="latency", load_fraction=0.0, **{hdr.COLUMN: text})
    rs.add("veth", 0, 64, {"lat_p50_ns": (hdr.percentiles(h)[50.0], "ns")}, kind="latency", load_fraction=0.0)
    table = results.load_run(rs.save()).table
    row = table[table["measure"] == hdr.MEASURE].iloc[0]
    back = hdr.histogram(row)
    assert list(back.counts) == list(h.counts) and back.get_total_count() == 500
    assert back.get_max_value() == h.get_max_value() and back.get_min_value() == h.get_min_value()
    assert hdr.percentiles(back) == hdr.percentiles(h) == hdr.percentiles(text)
    assert list(hdr.by_point(table)) == [("veth", 0.0)]
    with pytest.raises(InputError, match="only rows of measure"):
        hdr.histogram(table[table["measure"] == "lat_p50_ns"].iloc[0])  # a row that carries none


@needs_root
def test_merging_two_points_gives_the_histogram_of_all_their_samples(pair):
    a, b = probe_samples(pair, [300, 400])
    ha, hb = hdr.of(a), hdr.of(b)
    before = list(ha.counts)
    merged = hdr.merge([hdr.encode(ha), {hdr.COLUMN: hdr.encode(hb)}])
    every = hdr.of(a + b)
    assert list(merged.counts) == list(every.counts) and merged.get_total_count() == 700
    assert (merged.get_min_value(), merged.get_max_value()) == (every.get_min_value(), every.get_max_value())
    assert hdr.distribution(merged) == hdr.distribution(every)
    assert list(ha.counts) == before, "the inputs are left as they were"
    assert hdr.merge([]).get_total_count() == 0


@needs_root
def test_percentiles_agree_with_numpy_within_the_histograms_resolution(pair):
    (samples,) = probe_samples(pair, [1000])
    h = hdr.of(samples)
    got = hdr.percentiles(h, (50, 90, 99, 99.9))
    for q, v in got.items():
        # numpy's percentile lies between two neighbouring samples (methods "lower" and "higher");
        # hdrh names one sample of that rank, read to the histogram's resolution (at most 1/1024 above it)
        lower = float(np.percentile(samples, q, method="lower"))
        higher = float(np.percentile(samples, q, method="higher"))
        assert h.get_lowest_equivalent_value(int(lower)) <= v <= h.get_highest_equivalent_value(int(higher)), (q, v)
        assert lower <= v <= higher * (1 + 2**-10) + 1, (q, v, lower, higher)
    assert hdr.distribution(h)["max_ns"] == h.get_highest_equivalent_value(max(samples)) >= max(samples)
    levels = hdr.steps(h)
    assert levels[-1][0] == 100.0 and all(p0 <= p1 and v0 < v1 for (p0, v0), (p1, v1) in zip(levels, levels[1:]))


def test_the_range_covers_100_ns_to_seconds_at_a_tenth_of_a_percent():
    values = [100, 101, 2047, 2048, 12_345, 987_654, 5 * 10**9, 3_600 * 10**9]
    h = hdr.of(values)
    for v in values:
        assert h.get_lowest_equivalent_value(v) <= v <= h.get_highest_equivalent_value(v)
        assert h.get_highest_equivalent_value(v) - h.get_lowest_equivalent_value(v) + 1 <= max(1, v / 1024)
    assert [h.get_highest_equivalent_value(v) for v in (100, 101, 2047)] == [100, 101, 2047], "exact below 2048 ns"
    with pytest.raises(InputError, match="outside the histogram's range"):
        hdr.of([3_601 * 10**9])
    with pytest.raises(InputError, match="outside the histogram's range"):
        hdr.of([-1])


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(InputError, match="no 'hdr' column"):
        hdr.histogram({"measure": "lat_p50_ns"})
    with pytest.raises(InputError, match="not an encoded HdrHistogram"):
        hdr.histogram("bm90IGEgaGlzdG9ncmFt")
    with pytest.raises(InputError, match="no encoded histogram"):
        hdr.histogram({hdr.COLUMN: float("nan")})
    empty = hdr.percentiles(hdr.new())
    assert all(v != v for v in empty.values()) and hdr.distribution(hdr.new())["probes"] == 0


def test_the_percentile_plot_draws_each_variant_and_load_on_csits_axes(tmp_path):
    from labkit.reporting import plots

    rs = results.ResultSet("hdr_test", {}, data_dir=tmp_path)
    for variant, base in (("a", 1_000), ("b", 5_000)):
        for trial in (0, 1):
            for f in (0.0, 0.5):
                h = hdr.of([base + i * (1 + 10 * f) for i in range(200)])
                rs.add(
                    variant,
                    trial,
                    64,
                    {hdr.MEASURE: (200, "probes")},
                    kind="latency",
                    load_fraction=f,
                    **{hdr.COLUMN: hdr.encode(h)},
                )
    table = results.load_run(rs.save()).table
    merged = hdr.by_point(table)
    assert sorted(merged) == [("a", 0.0), ("a", 0.5), ("b", 0.0), ("b", 0.5)]
    assert all(h.get_total_count() == 400 for h in merged.values()), "two trials merged per point"
    fig = plots.latency_percentiles(table)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    for ax in panels:
        assert [line.get_label() for line in ax.get_lines()] == ["no load", "50% of its PDR"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        x, y = ax.get_lines()[0].get_data()
        assert x[0] == 1 and max(x) <= 1e5 and list(y) == sorted(y), "from 0% rightwards, never falling"
    top = max(max(line.get_ydata()) for line in panels[0].get_lines())
    assert top * 1e3 == hdr.distribution(merged[("a", 0.5)])["max_ns"], "µs, up to the slowest probe"
    empty = plots.latency_percentiles({})
    assert "no latency histograms" in empty.axes[0].texts[0].get_text()
