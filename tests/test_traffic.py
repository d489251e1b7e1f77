"""Generators send the count asked, the measurement's offered/processed figures agree with
the kernel's counters, and bad traffic parameters are refused before anything is sent."""

import pytest
from conftest import needs_root
from udp_sink import UdpSink

from labkit import measure, traffic
from labkit.dataplanes import softirq_clock
from labkit.dataplanes.drop_filter import DropFilter
from labkit.errors import InputError, MissingDependency
from labkit.traffic.pktgen import KernelPktgen

pytestmark = needs_root


@pytest.mark.parametrize("size", [64, 1500])
def test_trafgen_sends_the_count_asked(pair, size):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    tx0, rx0 = snd.stats()["tx_packets"], rcv.stats()["rx_packets"]
    with UdpSink(pair.host("rcv")) as sink:
        offered = traffic.generator("trafgen", snd).send(
            traffic.TrafficSpec.between(snd, rcv, size=size, count=3000, flows=4)
        )
        assert offered.packets == 3000 and offered.pps > 0
        assert offered.bytes == 3000 * size
        assert sink.drain() == 3000
    assert snd.stats()["tx_packets"] - tx0 >= 3000
    assert rcv.stats()["rx_packets"] - rx0 >= 3000


def test_trafgen_flows_vary_the_source_port(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    seen = set()
    with UdpSink(pair.host("rcv")) as sink:
        traffic.generator("trafgen", snd).send(traffic.TrafficSpec.between(snd, rcv, count=64, flows=8, sport=1024))
        import time

        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(seen) < 8:
            try:
                _, (addr, port) = sink.sock.recvfrom(2048)
                seen.add(port)
            except BlockingIOError:
                time.sleep(0.01)
    assert seen == set(range(1024, 1032))


def test_trafgen_sends_every_source_port_once_per_flows_frames(pair):
    """65,536 flows (every UDP source port, 0 included) in 65,536 frames from one CPU: a UDP
    socket at the receiver (which drops a datagram whose checksum is wrong) gets each port
    exactly once, so each frame is a new flow, as the NAT's new-flow trial and its sweep need."""
    import collections
    import socket

    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with UdpSink(pair.host("rcv")) as sink:
        sink.sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: hold them all
        offered = traffic.generator("trafgen", snd).send(
            traffic.TrafficSpec.between(snd, rcv, count=65536, flows=65536, sport=0, cpus=1)
        )
        ports = collections.Counter(_source_ports(sink.sock))
    assert offered.packets == 65536
    assert len(ports) == 65536 and set(ports.values()) == {1}, (
        f"{sum(ports.values())} datagrams, {len(ports)} ports, most repeated {ports.most_common(3)}"
    )


def _source_ports(sock, quiet_s: float = 0.5) -> list[int]:
    """The source port of every datagram SOCK (non-blocking) holds, until none comes for QUIET_S."""
    import time

    ports, last = [], time.monotonic()
    while time.monotonic() - last < quiet_s:
        try:
            ports.append(sock.recvfrom(2048)[1][1])
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    return ports


def test_measurement_agrees_with_kernel_counters(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = traffic.generator("trafgen", snd)
    spec = traffic.TrafficSpec.between(snd, rcv, count=20_000)
    with DropFilter() as f, softirq_clock.SoftirqClock() as clock:
        f.drop_proto("udp")
        with f.attach_xdp(rcv, "generic"):
            m = measure.run_trial(
                lambda: gen.send(spec),
                f.dropped,
                size=64,
                clock=clock,
                probes={"snd": measure.link_probe(snd), "rcv": measure.link_probe(rcv)},
                offered_probe=("snd", "tx_packets"),
            )
        assert m.processed == 20_000 == f.counters()["drop_proto"]["packets"]
    assert m.offered.packets == 20_000
    assert m.probes["snd"]["tx_packets"] >= 20_000
    assert m.lost == 0 and m.loss_ratio == 0
    assert m.processed_pps > 0 and m.cpu_ns_per_pkt > 0 and m.net_rx_s > 0
    assert measure.OFFERED_MISMATCH not in m.flags and measure.LOSS_BEFORE_HOOK not in m.flags


def test_loss_before_the_hook_is_flagged_with_where(pair):
    """Packets the hook under test does not count (a port-9 rule, traffic to port 10) are
    reported as lost before it, and flagged."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = traffic.generator("trafgen", snd)
    spec = traffic.TrafficSpec.between(snd, rcv, count=5000, dport=10)
    with DropFilter() as f:
        f.drop_port(9)
        with f.attach_xdp(rcv, "generic"):
            m = measure.run_trial(lambda: gen.send(spec), f.dropped, size=64)
    assert m.processed == 0 and m.lost == 5000
    assert measure.LOSS_BEFORE_HOOK in m.flags


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(size=59), "below 60"),
        (dict(size=1515), "above the link's MTU"),
        (dict(count=0), "at least one packet"),
        (dict(flows=0), "at least one flow"),
        (dict(dst_mac="02:00:00:00:00"), "malformed"),
        (dict(dst_ip="10.11.0.300"), "malformed"),
        (dict(rate_pps=-5), "positive rate"),
    ],
)
def test_bad_traffic_parameters(change, message):
    spec = traffic.TrafficSpec("02:00:00:00:00:01", "02:00:00:00:00:02", "10.11.0.1", "10.11.0.2")
    for k, v in change.items():
        setattr(spec, k, v)
    with pytest.raises(InputError, match=message):
        spec.validate()


def test_unknown_generator_and_too_many_trafgen_flows(pair):
    with pytest.raises(InputError, match="choose one of"):
        traffic.generator("nosuch", pair.iface("snd"))
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with pytest.raises(InputError, match="run past port 65535"):
        traffic.generator("trafgen", snd).send(traffic.TrafficSpec.between(snd, rcv, count=10, flows=1000, sport=65000))


def test_kernel_pktgen_says_clearly_when_missing(pair):
    ok, why = KernelPktgen.available()
    if ok:
        snd, rcv = pair.iface("snd"), pair.iface("rcv")
        offered = traffic.generator("pktgen", snd).send(traffic.TrafficSpec.between(snd, rcv, count=1000))
        assert offered.packets == 1000
    else:
        assert "pktgen" in why and "trafgen" in why
        with pytest.raises(MissingDependency, match="CONFIG_NET_PKTGEN"):
            traffic.generator("pktgen", pair.iface("snd"))
