"""Latency probes for real: bpf/latency.c stamps probes as the sender's program sends them
and keeps every probe's one-way delay at the sink's XDP hook, which Python reads back
exactly; percentiles and the CDF read from their HDR histogram; probes under background
load; a profile at fractions of the PDR; bad input refused; nothing left attached.

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
from labkit.measure import hdr

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


# ---------------------------------------------------------------- the programs, on crafted frames
def test_sink_keeps_every_probes_delay_and_counts_the_rest(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        sink = probe.sink()
        frame = bytearray(probe.frame)
        stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 5_000_000  # sent 5 ms ago (bpf_ktime_get_ns's clock)
        frame[latency_probe._F["LAT_STAMP"] : latency_probe._F["LAT_STAMP"] + 8] = struct.pack("=Q", stamp)
        assert bpf.test_run(sink, bytes(frame)).action == "XDP_DROP"
        later = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        (delay,) = probe.samples()
        assert 5_000_000 <= delay <= later - stamp, "the delay kept is the sink's clock minus the stamp"
        assert probe.counts()["max_ns"] == delay
        frame[latency_probe._F["LAT_STAMP"] : latency_probe._F["LAT_STAMP"] + 8] = struct.pack("=Q", later)
        bpf.test_run(sink, bytes(frame))
        assert probe.samples()[0] == delay and len(probe.samples()) == 2, "in arrival order, the first kept"
        future = bytearray(frame)
        future[latency_probe._F["LAT_STAMP"] : latency_probe._F["LAT_STAMP"] + 8] = struct.pack("=Q", 2**63)
        bpf.test_run(sink, bytes(future))
        other = bytearray(frame)
        other[latency_probe.PAYLOAD : latency_probe.PAYLOAD + 4] = b"\0\0\0\0"  # not a probe: no magic
        bpf.test_run(sink, bytes(other))
        c = probe.counts()
        assert (c["probes"], c["clock_back"], c["other"]) == (2, 1, 1) and len(probe.samples()) == 2
        probe.reset()
        assert probe.counts()["probes"] == 0 and probe.samples() == []


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
def test_probes_cross_a_veth_and_every_delay_is_read(pair, sent_by):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe:
        assert probe.method == sent_by
        with bpf.attach_xdp(rcv, probe.sink(), "native"), probe.peer_ready():
            assert probe.send(500, rate_pps=2000) == 500
            time.sleep(0.1)
            r = probe.readings()
    assert r["sent"] == 500 and r["probes"] == 500 and r["clock_back"] == 0 and len(r["samples"]) == 500
    assert max(r["samples"]) == r["max_ns"] and min(r["samples"]) > 0
    d = hdr.distribution(hdr.of(r["samples"]))
    assert 0 < d["p50_ns"] <= d["p90_ns"] <= d["p99_ns"] <= d["p99.9_ns"] <= d["max_ns"] and d["probes"] == 500
    c = [level for level, _ in hdr.steps(hdr.of(r["samples"]))]
    assert c[-1] == 100.0 and c == sorted(c)
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
    assert d["probes"] == d["sent"] == len(d["samples"]) == 300 and d["clock_back"] == 0 and min(d["samples"]) > 0
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
            q = hdr.distribution(hdr.of(d["samples"]))
            assert 0 < q["p50_ns"] <= q["p99_ns"] <= q["max_ns"] and q["probes"] == 1000
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
        with pytest.raises(InputError, match="the delays the sink keeps"):
            probe.send(latency_probe.SAMPLES + 1)
    with pytest.raises(InputError, match="probe method"):
        latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address, method="raw_socket")


# ---------------------------------------------------------------- a profile: PDR, no load, fractions of it
def test_profile_over_a_veth_at_no_load_and_fractions_of_its_pdr(pair, sent_by, tmp_path):
    from labkit import results
    from labkit.measure import latency_profile as profiles

    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = load_generator(snd, sent_by)
    spec = traffic.TrafficSpec.between(snd, rcv, size=64, count=50_000)
    with pytest.raises(InputError, match="fractions of the PDR"):
        profiles.check([0.5, 1.5], 100, 1000.0, 0.001)
    with pytest.raises(InputError, match="latency probes"):
        profiles.check([0.5], latency_probe.SAMPLES + 1, 1000.0, 0.001)
    with (
        latency_probe.LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address) as probe,
        bpf.attach_xdp(rcv, probe.sink(), "native"),
    ):
        prof = profiles.profile(
            probe,
            gen,
            spec,
            lambda: rcv.stats()["rx_packets"],
            loads=[0.1, 0.5],
            probes=200,
            probe_rate=1000,
            search_trial_s=0.2,
            search_budget_s=8,
        )
    gen.close()
    assert prof.pdr_pps > 0 and prof.ndr_pps <= prof.pdr_pps and prof.search_s > 0
    assert [p.fraction for p in prof.points] == [0.0, 0.1, 0.5] and prof.probe_method == sent_by
    idle, _, loaded = prof.points
    assert idle.distribution["probes"] == 200 and loaded.distribution["probes"] >= 190
    assert idle.load_pps == 0 and loaded.load_pps > 0.1 * prof.pdr_pps and loaded.counts["other"] > 0
    m = loaded.measures()
    assert m["lat_p50_ns"][0] <= m["lat_p99_ns"][0] <= m["lat_max_ns"][0] and m["lat_probes"][0] >= 190
    assert loaded.histogram.get_total_count() == m["lat_probes"][0] and loaded.cdf()[-1][1] == 1.0
    assert not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")
    # its rows: the PDR, each point's measures and its histogram, read back from a saved run
    rs = results.ResultSet("latency_test", {}, data_dir=tmp_path)
    profiles.record(rs, "veth", 0, 64, prof)
    table = results.load_run(rs.save()).table
    lat = profiles.summary(table)
    assert list(lat["load"]) == ["no load", "10% PDR", "50% PDR"] and (lat["rate"] == "PDR").all()
    assert lat["pdr_mpps"].iloc[0] * 1e6 == pytest.approx(prof.pdr_pps)
    for pt, (_, row) in zip(prof.points, lat.iterrows()):
        want = hdr.percentiles(pt.histogram, (50.0, 99.0))
        assert row["p50_us_all"] * 1e3 == want[50.0] and row["p99_us_all"] * 1e3 == want[99.0]
    assert "10% PDR" in profiles.histogram_lines(lat)[0]


def test_a_search_out_of_time_gives_its_best_lower_bound():
    from labkit.measure import latency_profile as profiles
    from labkit.measure import mlr

    def trial(load, loss):
        return mlr.MlrTrial(
            load,
            0.1,
            int(load / 10),
            int(load / 10),
            int(load / 10 * (1 - loss)),
            0.1,
            load,
            load * (1 - loss),
            loss,
            0.3,
        )

    nan = float("nan")
    found = mlr.MlrResult(
        mlr.Settings(),
        1e6,
        1e3,
        {0.0: nan, 0.005: nan},
        {0.0: (None, 1e6), 0.005: (None, 1e6)},
        [trial(1e6, 0.2), trial(4e5, 0.001), trial(6e5, 0.01)],
        complete=False,
    )
    assert profiles.best_lower_bound(found, 0.005) == 4e5, "the highest load a trial passed at"
    found.bounds[0.005] = (5e5, 6e5)
    assert profiles.best_lower_bound(found, 0.005) == 5e5, "the search's own lower bound first"
    found.bounds[0.005], found.trials = (None, 1e6), [trial(1e6, 0.2)]
    assert profiles.best_lower_bound(found, 0.005) == 0.0
