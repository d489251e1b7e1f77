"""The loop generator (labkit/traffic/xdploop.py, labkit/dataplanes/xdp_loop.py,
bpf/xdp_loop.c), for real: frames multiplied by a loop of native XDP programs on veths,
counted per flow by a native XDP sink at the receiver (bpf/xdp_gen.c's), by a UDP socket,
and by the sending veth's ndo_xdp_xmit counters. It needs no live frames, so these tests
run where live frames are refused, as with LABKIT_REFUSE=live_frames."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
from conftest import needs_root

from labkit import bpf, capabilities, traffic
from labkit.dataplanes import xdp_loop
from labkit.dataplanes.xdp_gen import GenSink, xmit_counters
from labkit.errors import InputError, MissingDependency
from labkit.traffic import TrafficSpec


def loop_links(host) -> list[str]:
    """The loop's veths still present in HOST's namespace."""
    with host.ipr() as ipr:
        names = [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]
    return [n for n in names if "-xl" in n]


def ports(sink: GenSink) -> dict:
    """{source port: frames} the sink counted of UDP frames."""
    return {key[2]: n for key, n in sink.flows().items() if key[4] == 17}


def nothing_left(topo) -> None:
    assert loop_links(topo.host("snd")) == []
    for host in ("snd", "rcv"):
        assert not bpf.xdp_state(topo.iface(host)).get("IFLA_XDP_ATTACHED")


# ---------------------------------------------------------------- pure
def test_it_comes_right_after_the_live_frames_generator():
    traffic.backends_status()
    assert traffic.PREFERENCE[:2] == ["xdp", "xdp_loop"]


# ---------------------------------------------------------------- real
@needs_root
def test_the_probe_tries_for_real_and_leaves_nothing(loop_here):
    from labkit import cleanup

    note = xdp_loop.devmap_broadcast_probe()
    assert f"{xdp_loop.PROBE_FRAMES} frames" in note
    # its namespaces are gone (other processes' live probes are theirs)
    assert not [n for n in cleanup.leftovers()["namespaces"] if "dmb" in n]


@needs_root
def test_auto_picks_the_loop_where_live_frames_are_refused(pair, refuse, loop_here):
    refuse("live_frames")
    with traffic.generator("auto", pair.iface("snd")) as gen:
        assert gen.name == "xdp_loop"
    assert capabilities.choices()["load generator"]["backend"] == "xdp_loop"
    nothing_left(pair)


@needs_root
@pytest.mark.parametrize("size", [64, 1500])
def test_count_asked_is_count_received_as_xdp_frames(pair, loop_here, size):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    count = 200_000
    with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"), traffic.generator("xdp_loop", snd) as gen:
        before = xmit_counters(snd)
        offered = gen.send(TrafficSpec.between(snd, rcv, size=size, count=count))
        xmit = xmit_counters(snd)[0] - before[0]
        got = sink.total()
    assert offered.packets == got["packets"] == xmit == count
    assert got["bytes"] == count * size
    assert any("got XDP frames, not socket buffers" in n for n in offered.notes), offered.notes
    nothing_left(pair)


@needs_root
def test_flows_walk_every_port_once_per_flows_frames(pair, loop_here):
    """The NAT's new-flow trial (count == flows: every port exactly once) and its sweeps
    (up to 65536 flows, the whole port range), in one loop that goes on between sends."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with traffic.generator("xdp_loop", snd) as gen:
        with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"):
            gen.send(TrafficSpec.between(snd, rcv, count=8000, flows=8000, sport=1024))
            seen = ports(sink)
        assert seen == {p: 1 for p in range(1024, 1024 + 8000)}
        with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"):
            gen.send(TrafficSpec.between(snd, rcv, count=3 * 65536, flows=65536, sport=0))
            seen = ports(sink)
        assert seen == {p: 3 for p in range(65536)}
        with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"):  # paced: steps leave no gap
            gen.send(TrafficSpec.between(snd, rcv, count=20_000, flows=10_000, sport=2000, rate_pps=100_000))
            seen = ports(sink)
        assert seen == {p: 2 for p in range(2000, 12_000)}
    nothing_left(pair)


@needs_root
def test_rewritten_frames_reach_a_socket_with_valid_checksums(pair, loop_here):
    """An XDP_PASS receiver (attached by the generator): a UDP socket receives every
    datagram, from every source port, and the stack counts no checksum error."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    host, count = pair.host("rcv"), 500
    with host.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        sock.bind(("10.11.0.2", 9))
        sock.settimeout(5)
        with traffic.generator("xdp_loop", snd, vary=("sport", "src_ip")) as gen:
            spec = TrafficSpec.between(snd, rcv, count=count, flows=count, rate_pps=50_000)
            spec.src_ip = "10.11.1.0"  # sources 10.11.1.0 .. 10.11.2.243: never the receiver's own
            offered = gen.send(spec)
        senders = set()
        for _ in range(count):
            senders.add(sock.recvfrom(2048)[1])
        snmp = host.read("/proc/net/snmp")
    finally:
        sock.close()
    udp = [l.split() for l in snmp.splitlines() if l.startswith("Udp:")]
    stats = dict(zip(udp[0][1:], map(int, udp[1][1:])))
    assert len(senders) == count and stats["InCsumErrors"] == 0
    assert any("XDP_PASS" in n for n in offered.notes)  # the receiver's caveat is recorded
    nothing_left(pair)


@needs_root
def test_rate_is_paced_not_sent_in_one_burst(pair, loop_here):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    rate, seconds = 100_000, 1.0
    with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"), traffic.generator("xdp_loop", snd) as gen:
        t0 = time.monotonic()
        offered = gen.send(TrafficSpec.between(snd, rcv, count=int(rate * seconds), rate_pps=rate))
        wall = time.monotonic() - t0
        got = sink.total()["packets"]
    assert got == offered.packets == rate * seconds
    # the schedule sets a floor on the time and a ceiling on the rate; how closely a rate
    # is held is measured by `make bench`, never asserted here
    assert offered.pps <= rate * 1.01 and wall >= seconds * 0.95


@needs_root
def test_a_send_is_bounded_by_its_time_limit(pair, loop_here):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"), traffic.generator("xdp_loop", snd) as gen:
        offered = gen.send(TrafficSpec.between(snd, rcv, count=50_000_000, rate_pps=100_000, timeout_s=0.3))
        time.sleep(0.1)
        got = sink.total()["packets"]
        time.sleep(0.1)
        assert sink.total()["packets"] == got  # the loop has died out
    assert 0 < offered.packets < 50_000_000 and any("time limit" in n for n in offered.notes)
    assert got - offered.packets in range(0, 3)  # a frame or two may race the stop
    nothing_left(pair)


@needs_root
def test_nothing_is_left_after_ctrl_c_or_an_error(pair, loop_here):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    main = threading.main_thread().ident
    with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"):
        timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            with traffic.generator("xdp_loop", snd) as gen:
                timer.start()
                gen.send(TrafficSpec.between(snd, rcv, count=50_000_000, rate_pps=100_000))
        timer.join()
        assert loop_links(snd.host) == []
        got = sink.total()["packets"]
        assert 0 < got < 50_000_000
    with pytest.raises(InputError, match="flows"):
        with traffic.generator("xdp_loop", snd, peer="xdp_pass") as gen:
            gen.send(TrafficSpec.between(snd, rcv, count=1000, flows=0))
    with pytest.raises(InputError, match="copies"):
        with traffic.generator("xdp_loop", snd, copies=2) as gen:
            gen.send(TrafficSpec.between(snd, rcv, count=1000, flows=10))
    nothing_left(pair)


@needs_root
def test_bad_options_are_refused_before_the_kernel_is_touched(pair, loop_here):
    snd = pair.iface("snd")
    for options, message in (
        ({"speed": 1}, "unknown option"),
        ({"seed": 0}, "seed"),
        ({"copies": 99}, "copies"),
        ({"peer": "x"}, "peer"),
    ):
        with pytest.raises(InputError, match=message):
            traffic.generator("xdp_loop", snd, **options)
        assert loop_links(snd.host) == []


@needs_root
def test_refused_facility_makes_the_backend_unavailable(pair, refuse):
    refuse("devmap_broadcast")
    with pytest.raises(MissingDependency, match="devmap broadcast.*refused here"):
        traffic.generator("xdp_loop", pair.iface("snd"))
