"""Latency probes for real: bpf/latency.c stamps probes as the sender's program sends them
and histograms their one-way delay at the sink's XDP hook; the bucket layout in Python
is the one the program uses; percentiles and the CDF read from the histogram; probes
under background load; bad input refused; nothing left attached.

The tests on real veths run twice (`sent_by`): with live frames (skipped where the
capability probe says they are refused) and with AF_PACKET probes stamped at tc egress,
reached as labkit reaches it on a machine that refuses live frames (LABKIT_REFUSE)."""

from __future__ import annotations

import os
import struct
import time

import pytest

from labkit import bpf, capabilities, traffic
from labkit.dataplanes import latency_probe
from labkit.errors import InputError, MissingDependency

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


@pytest.fixture(params=[latency_probe.LIVE_FRAMES, latency_probe.AF_PACKET])
def sent_by(request, monkeypatch):
    """How the probes of the test are sent: live frames where the probe allows them (else
    skipped, naming why), or AF_PACKET + tc with live frames refused through LABKIT_REFUSE."""
    capabilities.forget()
    if request.param == latency_probe.AF_PACKET:
        refused = {n for n in os.environ.get(capabilities.ENV, "").split(",") if n}
        monkeypatch.setenv(capabilities.ENV, ",".join(sorted(refused | {"live_frames"})))
    else:
        live = capabilities.probe("live_frames")
        if not live.ok:
            pytest.skip(f"live frames refused here: {live.reason}")
    yield request.param
    capabilities.forget()


def load_generator(snd, method: str):
    """Background load that needs what METHOD needs: the in-kernel generator beside live
    frames, trafgen where they are refused."""
    return (
        traffic.generator("xdp", snd, peer="none")
        if method == latency_probe.LIVE_FRAMES
        else traffic.generator("trafgen", snd)
    )


def qdisc_kinds(iface) -> set:
    with iface.host.ipr() as ipr:
        return {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(iface.ifindex)}


# ---------------------------------------------------------------- the histogram's layout
def test_buckets_are_log_linear_and_contiguous():
    assert [latency_probe.bucket_bounds(i) for i in range(9)][:8] == [(i, i + 1) for i in range(8)]
    prev_high = 0
    for i in range(latency_probe.BUCKETS):
        lo, hi = latency_probe.bucket_bounds(i)
        assert lo == prev_high, f"bucket {i} starts at {lo}, the previous ended at {prev_high}"
        if lo >= 8:
            assert (hi - lo) * 8 <= lo, "each bucket is at most 1/8 of its lower bound wide"
        prev_high = hi
    for ns in (0, 1, 7, 8, 9, 15, 16, 1000, 12_345, 10**6, 3 * 10**9):
        lo, hi = latency_probe.bucket_bounds(latency_probe.bucket_of(ns))
        assert lo <= ns < hi


def test_percentiles_and_cdf_from_a_histogram():
    hist = [0] * latency_probe.BUCKETS
    b1, b2 = latency_probe.bucket_of(10_000), latency_probe.bucket_of(1_000_000)
    hist[b1], hist[b2] = 990, 10
    d = latency_probe.percentiles(hist, max_ns=1_050_000)
    lo1, hi1 = latency_probe.bucket_bounds(b1)
    lo2, hi2 = latency_probe.bucket_bounds(b2)
    assert lo1 <= d["p50_ns"] < hi1 and lo1 <= d["p90_ns"] < hi1 and lo1 <= d["p99_ns"] < hi1
    assert lo2 <= d["p99.9_ns"] < hi2 and d["max_ns"] == 1_050_000 and d["probes"] == 1000
    c = latency_probe.cdf(hist)
    assert c == [(float(hi1), 0.99), (float(hi2), 1.0)]
    empty = latency_probe.percentiles([0] * latency_probe.BUCKETS)
    assert empty["probes"] == 0 and empty["p50_ns"] != empty["p50_ns"]  # NaN


# ---------------------------------------------------------------- the programs, on crafted frames
def test_sink_histograms_probes_and_counts_the_rest(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        sink = probe.sink()
        frame = bytearray(probe.frame)
        stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 5_000_000  # sent 5 ms ago (bpf_ktime_get_ns's clock)
        frame[latency_probe._F["LAT_STAMP"] : latency_probe._F["LAT_STAMP"] + 8] = struct.pack("=Q", stamp)
        assert bpf.test_run(sink, bytes(frame)).action == "XDP_DROP"
        hist = probe.histogram()
        (idx,) = [i for i, n in enumerate(hist) if n]
        lo, hi = latency_probe.bucket_bounds(idx)
        assert hi > 5_000_000 and lo < 5_000_000 + 10**9, "the delay lands in the bucket Python expects"
        assert probe.counts()["max_ns"] >= 5_000_000
        future = bytearray(frame)
        future[latency_probe._F["LAT_STAMP"] : latency_probe._F["LAT_STAMP"] + 8] = struct.pack("=Q", 2**63)
        bpf.test_run(sink, bytes(future))
        other = bytearray(frame)
        other[latency_probe.PAYLOAD : latency_probe.PAYLOAD + 4] = b"\0\0\0\0"  # not a probe: no magic
        bpf.test_run(sink, bytes(other))
        c = probe.counts()
        assert (c["probes"], c["clock_back"], c["other"]) == (1, 1, 1)
        probe.reset()
        assert probe.counts()["probes"] == 0 and sum(probe.histogram()) == 0


def test_probe_program_stamps_and_transmits(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        # a context naming another interface (loopback): the probe program leaves the packet alone
        res = bpf.test_run(probe.fn, probe.frame, ctx=bpf.XdpMd(ingress_ifindex=1))
        assert res.action == "XDP_PASS" and probe.counts()["sent"] == 0
    with latency_probe.LatencyProbe.on_loopback() as lo_probe:
        # the same program loaded for loopback, run on loopback: restored, stamped, transmitted
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        res = bpf.test_run(lo_probe.fn, b"\xff" * len(lo_probe.frame), ctx=bpf.XdpMd(ingress_ifindex=1))
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        assert res.action == "XDP_TX" and lo_probe.counts()["sent"] == 1
        out = res.data_out
        assert out[: latency_probe.PAYLOAD + 4] == lo_probe.frame[: latency_probe.PAYLOAD + 4], (
            "headers restored from the template"
        )
        stamp = struct.unpack_from("=Q", out, latency_probe._F["LAT_STAMP"])[0]
        assert t0 <= stamp <= t1, "stamped with the kernel's monotonic clock during the run"


def test_tc_stamp_program_stamps_probes_and_passes_everything(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    seq_at = latency_probe.PAYLOAD + 4
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        stamp = probe.program.function("lat_stamp", "tc")
        stamps = []
        for i in range(2):
            t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            res = bpf.test_run(stamp, probe.frame)
            t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            out = res.data_out
            assert res.retval == 0, "TC_ACT_OK: the probe goes on"
            assert (
                out[:seq_at] == probe.frame[:seq_at]
                and out[latency_probe._F["LAT_STAMP"] + 8 :] == probe.frame[latency_probe._F["LAT_STAMP"] + 8 :]
            ), "only the sequence number and the stamp change"
            stamps.append(struct.unpack_from("=IQ", out, seq_at))
            assert t0 <= stamps[-1][1] <= t1, "stamped with the kernel's monotonic clock as it passed"
        assert stamps[1][0] == stamps[0][0] + 1 or stamps[1][0] == 0, "a sequence number per probe (per CPU)"
        assert probe.counts()["sent"] == 2
        other = bytearray(probe.frame)
        other[latency_probe.PAYLOAD : latency_probe.PAYLOAD + 4] = b"\0\0\0\0"  # not a probe: no magic
        res = bpf.test_run(stamp, bytes(other))
        assert res.retval == 0 and res.data_out == bytes(other), "other packets pass untouched"
        assert probe.counts()["sent"] == 2


# ---------------------------------------------------------------- probes on real veths
def test_probes_cross_a_veth_and_are_histogrammed(pair, sent_by):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        assert probe.method == sent_by
        with bpf.attach_xdp(rcv, probe.sink(), "native"), probe.peer_ready():
            assert probe.send(500, rate_pps=2000) == 500
            time.sleep(0.1)
            d = probe.distribution()
            c = probe.cdf()
    assert d["sent"] == 500 and d["probes"] == 500 and d["clock_back"] == 0
    assert 0 < d["p50_ns"] <= d["p90_ns"] <= d["p99_ns"] <= d["p99.9_ns"]
    assert d["max_ns"] >= latency_probe.bucket_bounds(latency_probe.bucket_of(int(d["p99.9_ns"])))[0]
    assert c[-1][1] == 1.0 and all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(c, c[1:]))
    assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")
    assert "clsact" not in qdisc_kinds(snd), "the stamping program is taken off after the probes"


def test_probes_under_background_load(pair, sent_by):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = load_generator(snd, sent_by)
    load = traffic.TrafficSpec.between(snd, rcv, size=64, count=100_000, rate_pps=100_000)
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        # the sink is native XDP on the peer: the generator's frames are delivered to it
        with bpf.attach_xdp(rcv, probe.sink(), "native"), probe.peer_ready():
            d = probe.under_load(lambda: gen.send(load), count=300, rate_pps=1000)
    gen.close()
    assert d["probes"] == d["sent"] == 300 and d["clock_back"] == 0 and d["p50_ns"] > 0
    assert d["load"].packets == 100_000
    assert d["other"] >= 50_000, "the background frames reached the sink while it ran"
    assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")
    assert "clsact" not in qdisc_kinds(snd)


def test_peer_ready_attaches_only_while_inside_and_only_for_xdp_frames(pair, sent_by):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        with probe.peer_ready():
            want = "xdp" if sent_by == latency_probe.LIVE_FRAMES else None  # AF_PACKET's skbs need no NAPI peer
            assert bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED") == want
        assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")


def test_where_live_frames_are_refused_probes_go_by_af_packet_stamped_at_tc_egress(pair, monkeypatch):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    capabilities.forget()
    monkeypatch.setenv(capabilities.ENV, "live_frames")
    try:
        with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
            assert probe.method == latency_probe.AF_PACKET
            choice = capabilities.choices()[latency_probe.PURPOSE]
            assert choice["backend"] == latency_probe.AF_PACKET and "live frames refused" in choice["why"]
            with bpf.attach_xdp(rcv, probe.sink(), "native"):
                # the load's thread looks at the sender while the probes run: the stamper is on its egress
                d = probe.under_load(
                    lambda: _wait_for(lambda: "clsact" in qdisc_kinds(snd), 20), count=1000, rate_pps=1000, warmup_s=0
                )
            assert d["load"], "lat_stamp sat on the sender's egress while the probes were sent"
            assert d["probes"] == d["sent"] == 1000 and d["clock_back"] == 0 and d["other"] == 0
            assert 0 < d["p50_ns"] <= d["p99_ns"] <= d["max_ns"]
            assert "clsact" not in qdisc_kinds(snd), "and taken off after"
            with pytest.raises(MissingDependency, match="live-frames mode"):
                latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address, method=latency_probe.LIVE_FRAMES)
    finally:
        capabilities.forget()


def _wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_bad_input_is_refused(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with pytest.raises(InputError, match="probe size"):
        latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address, size=60)
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        with pytest.raises(InputError, match="probe rate"):
            probe.send(10, rate_pps=1e6)
        with pytest.raises(InputError, match="probe count"):
            probe.send(0)
    with pytest.raises(InputError, match="probe method"):
        latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address, method="raw_socket")


# ---------------------------------------------------------------- a profile: NDR, no load, fractions of it
def test_profile_over_a_veth_at_no_load_and_half_its_no_drop_rate(pair, sent_by):
    from labkit.measure import latency_profile as profiles

    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = load_generator(snd, sent_by)
    spec = traffic.TrafficSpec.between(snd, rcv, size=64, count=50_000)
    with pytest.raises(InputError, match="fractions of the no-drop rate"):
        profiles.check([0.5, 1.5], 100, 1000.0, 0.001)
    with (
        latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe,
        bpf.attach_xdp(rcv, probe.sink(), "native"),
    ):
        prof = profiles.profile(
            probe,
            gen,
            spec,
            lambda: rcv.stats()["rx_packets"],
            loads=[0.5],
            probes=200,
            probe_rate=1000,
            ndr_seconds=0.2,
            ndr_iterations=4,
        )
    gen.close()
    assert prof.ndr_pps > 0 and [p.fraction for p in prof.points] == [0.0, 0.5] and prof.probe_method == sent_by
    idle, loaded = prof.points
    assert idle.distribution["probes"] == 200 and loaded.distribution["probes"] == 200
    assert idle.load_pps == 0 and loaded.load_pps > 0.3 * prof.ndr_pps
    m = loaded.measures()
    assert m["lat_p50_ns"][0] <= m["lat_p99_ns"][0] <= m["lat_max_ns"][0] and m["lat_probes"][0] == 200
    assert loaded.cdf[-1][1] == 1.0
    assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")
