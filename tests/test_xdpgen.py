"""The in-kernel generator (labkit/traffic/xdpgen.py, bpf/xdp_gen.c), for real: frames out of
a veth into a receiver whose XDP counters, iptables rules and UDP sockets count them."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from conftest import needs_root

from labkit import bpf, capabilities, packets, traffic
from labkit.errors import InputError, MissingDependency
from labkit.testbed import netfilter
from labkit.testbed.topology import Interface
from labkit.traffic import TrafficSpec, xdpgen


# ---------------------------------------------------------------- pure
def test_line_rate_and_speeds():
    assert xdpgen.line_rate_pps("10G", 60) == pytest.approx(14.88e6, rel=1e-3)  # 64 bytes with FCS
    assert xdpgen.line_rate_pps(1e9, 1500) == pytest.approx(1e9 / (1524 * 8))
    assert xdpgen.parse_speed("25Gbit") == 25e9
    with pytest.raises(InputError, match="link speed"):
        xdpgen.parse_speed("fast")


def test_refused_live_frames_name_the_reason_and_the_fallbacks(monkeypatch):
    monkeypatch.setenv("LABKIT_REFUSE", "live_frames")
    ok, why = xdpgen.XdpGenerator.available()
    assert not ok and "LABKIT_REFUSE" in why and "live-frames" in why
    assert "trafgen" in why and "testpmd" in why and "xdp_loop" in why


def test_rate_above_link_speed_is_refused():
    spec = TrafficSpec("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", size=64, rate_pps=2e6)
    with pytest.raises(InputError, match="above what a 1G link carries"):
        xdpgen.target_rate(spec, link_speed="1G")
    spec.rate_pps = None
    assert xdpgen.target_rate(spec, "10G", 0.5) == pytest.approx(0.5 * 10e9 / (88 * 8))


# ---------------------------------------------------------------- helpers
def sink(verdict: int = 1):
    return bpf.load("xdp_gen", SINK_VERDICT=verdict)


def flows_seen(prog, proto=17) -> dict:
    """{(src, dst, sport, dport): frames} of the sink, our protocol only."""
    out = {}
    for k, v in prog.map("sink_flows").items():
        if k.proto == proto:
            out[(bytes(k.src), bytes(k.dst), socket.ntohs(k.sport), socket.ntohs(k.dport))] = v.value
    return out


def nothing_attached(topo):
    for host in ("snd", "rcv"):
        iface = topo.iface(host)
        assert not bpf.xdp_state(iface).get("IFLA_XDP_ATTACHED"), f"{iface.name} kept an XDP program"
        with iface.host.ipr() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
        assert not bpf.xdp_state(Interface(iface.host, "lo", lo, "", None, None)).get("IFLA_XDP_ATTACHED")


# ---------------------------------------------------------------- real
@pytest.mark.usefixtures("live_frames")
@needs_root
def test_auto_prefers_the_xdp_generator(pair):
    with traffic.generator("auto", pair.iface("snd")) as gen:
        assert gen.name == "xdp"
    assert capabilities.choices()["load generator"]["backend"] == "xdp"
    nothing_attached(pair)


@needs_root
def test_auto_falls_back_where_live_frames_are_refused(pair, refuse):
    refuse("live_frames")
    with traffic.generator("auto", pair.iface("snd")) as gen:
        assert gen.name != "xdp"
    choice = capabilities.choices()["load generator"]
    assert choice["backend"] == gen.name and "xdp: " in choice["why"] and "LABKIT_REFUSE" in choice["why"]
    with pytest.raises(MissingDependency, match="live-frames mode .* refused here"):
        traffic.generator("xdp", pair.iface("snd"))


@pytest.mark.usefixtures("live_frames")
@needs_root
@pytest.mark.parametrize("size", [64, 1500])
@pytest.mark.parametrize("cpus", [1, 2])
def test_count_asked_is_count_received(pair, size, cpus):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    count = 200_000
    # two CPUs share the veth's one receive ring: at full speed they overflow it (that loss
    # is reported, not hidden); a modest rate keeps this a counting test
    rate = None if cpus == 1 else 200_000
    with sink() as s, traffic.generator("xdp", snd) as gen:
        with bpf.attach_xdp(rcv, s.function("xdp_gen_sink"), "native"):
            offered = gen.send(TrafficSpec.between(snd, rcv, size=size, count=count, cpus=cpus, rate_pps=rate))
        seen = flows_seen(s)
    assert offered.packets == count
    assert offered.bytes == count * size
    assert len(offered.per_cpu) == cpus and sum(p["packets"] for p in offered.per_cpu) == count
    assert gen.last["xmit_errors"] == 0, offered.notes
    assert sum(seen.values()) == count
    assert offered.pps > 0
    nothing_attached(pair)


@pytest.mark.usefixtures("live_frames")
@needs_root
def test_flows_vary_per_packet(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with sink() as s, traffic.generator("xdp", snd, vary=("sport", "dst_ip")) as gen:
        with bpf.attach_xdp(rcv, s.function("xdp_gen_sink"), "native"):
            gen.send(TrafficSpec.between(snd, rcv, count=50_000, flows=1000, sport=2000))
        seen = flows_seen(s)
    assert len(seen) == 1000
    assert {k[2] for k in seen} == set(range(2000, 3000))
    assert len({k[1] for k in seen}) == 1000  # destination addresses 10.11.0.2 .. +999
    assert sum(seen.values()) == 50_000 and set(seen.values()) == {50}


@pytest.mark.usefixtures("live_frames")
@needs_root
def test_rewritten_frames_have_valid_checksums(pair):
    """The program's incremental checksum updates, checked in Python on its output
    (BPF_PROG_TEST_RUN without live frames returns the rewritten frame), IPv4 and IPv6."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    for src, dst, proto in (
        ("10.11.0.1", "10.11.0.2", "udp"),
        ("10.11.0.1", "10.11.0.2", "tcp"),
        ("fd00::1", "fd00::2", "udp"),
        ("fd00::1", "fd00::fffe", "tcp"),
    ):
        with traffic.generator("xdp", snd, vary=("sport", "dport", "src_ip", "dst_ip")) as gen:
            spec = TrafficSpec(snd.mac, rcv.mac, src, dst, proto=proto, flows=7, count=7, size=80, sport=65520, dport=1)
            gen.check(spec)
            frame = packets.build(spec.frame(0))
            gen._configure(spec, 6 if ":" in src else 4, frame)
            cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(cpus)})  # the flow sequence is per CPU
            try:
                with snd.host.entered():
                    ctx = bpf.XdpMd(data_end=len(frame), ingress_ifindex=snd.ifindex)
                    outs = [bpf.test_run(gen.fn, frame, ctx=ctx).data_out for _ in range(9)]
            finally:
                os.sched_setaffinity(0, cpus)
        for i, out in enumerate(outs):
            f = i % 7
            if ":" in src:
                s_ip, d_ip = out[22:38], out[38:54]
                seg = out[54:]
                nh = out[20]
                c = packets.checksum(s_ip + d_ip + struct.pack("!I3xB", len(seg), nh) + seg)
                assert c == 0, f"{proto}/IPv6 flow {f}: bad L4 checksum"
                sport, dport = struct.unpack("!HH", seg[:4])
                assert int.from_bytes(s_ip[-4:], "big") == 1 + f
                assert int.from_bytes(d_ip[-4:], "big") == int(dst.split(":")[-1], 16) + f
            else:
                p = packets.parse(out)
                assert p.ip_checksum_ok and p.l4_checksum_ok, f"{proto}/IPv4 flow {f}"
                sport, dport = p.sport, p.dport
                assert p.src_ip == f"10.11.0.{1 + f}" and p.dst_ip == f"10.11.0.{2 + f}"
            assert (sport, dport) == (65520 + f, 1 + f)


@pytest.mark.usefixtures("live_frames")
@needs_root
def test_frames_are_accepted_by_the_stack(pair):
    """XDP_PASS receiver (attached by the generator): iptables counts every frame, and a
    UDP socket receives every datagram with no checksum error."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    host = pair.host("rcv")
    count = 3000
    with host.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: beyond rmem_max, as root
        sock.bind(("10.11.0.2", 9))
        sock.setblocking(False)
        with (
            netfilter.rule(host, "raw", "PREROUTING", "-i", rcv.name, "-p", "udp", "--dport", "9", "-j", "ACCEPT") as r,
            traffic.generator("xdp", snd, vary=("sport", "src_ip")) as gen,
        ):
            box = {"got": 0, "senders": set()}

            def receive():
                deadline = time.monotonic() + 10
                while box["got"] < count and time.monotonic() < deadline:
                    try:
                        data, addr = sock.recvfrom(2048)
                        box["got"] += 1
                        box["senders"].add(addr)
                    except BlockingIOError:
                        time.sleep(0.001)

            reader = threading.Thread(target=receive)
            reader.start()
            spec = TrafficSpec.between(snd, rcv, count=count, flows=50, rate_pps=20_000)
            spec.src_ip = "10.11.0.100"  # sources .100 .. .149: never the receiver's own address
            offered = gen.send(spec)
            reader.join()
            got, senders = box["got"], box["senders"]
            assert any("XDP_PASS" in n for n in offered.notes)  # the peer caveat is recorded
            counted = r.counters()["packets"]
        snmp = host.read("/proc/net/snmp")
    finally:
        sock.close()
    udp = [l.split() for l in snmp.splitlines() if l.startswith("Udp:")]
    stats = dict(zip(udp[0][1:], map(int, udp[1][1:])))
    assert counted == count, (offered.notes, gen.last)
    assert got == count and len(senders) == 50, stats
    assert stats["InCsumErrors"] == 0
    nothing_attached(pair)


@pytest.mark.usefixtures("live_frames")
@needs_root
def test_rate_control_holds_a_modest_target(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    rate, seconds = 200_000, 2.0
    with sink() as s, traffic.generator("xdp", snd) as gen:
        with bpf.attach_xdp(rcv, s.function("xdp_gen_sink"), "native"):
            t0 = time.monotonic()
            offered = gen.send(TrafficSpec.between(snd, rcv, count=int(rate * seconds), rate_pps=rate))
            wall = time.monotonic() - t0
        seen = sum(flows_seen(s).values())
    assert seen == offered.packets == rate * seconds
    # paced, not sent in one burst: the schedule sets a floor on the time and a ceiling on the
    # rate (a loaded machine may only be slower; how closely the rate is held is `make bench`)
    assert offered.pps <= rate * 1.02
    assert wall >= seconds * 0.95


@pytest.mark.usefixtures("live_frames")
@needs_root
def test_bad_input_is_refused_and_nothing_stays_attached(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with traffic.generator("xdp", snd, link_speed="1G") as gen:
        with pytest.raises(InputError, match="above what a 1G link"):
            gen.send(TrafficSpec.between(snd, rcv, size=64, count=1000, rate_pps=2e6))
        with pytest.raises(InputError, match="flows"):
            gen.send(TrafficSpec.between(snd, rcv, count=1000, flows=0))
        for size in (59, 1515):
            with pytest.raises(InputError, match="size"):
                gen.send(TrafficSpec.between(snd, rcv, count=1000, size=size))
        with pytest.raises(InputError, match="cpus"):
            gen.send(TrafficSpec.between(snd, rcv, count=1000, cpus=64))
    with pytest.raises(InputError, match="vary"):
        traffic.generator("xdp", snd, vary="ttl")
    with pytest.raises(InputError, match="peer"):
        traffic.generator("xdp", snd, peer="maybe")
    # the namespace's loopback cannot transmit XDP frames
    with snd.host.ipr() as ipr:
        lo = Interface(snd.host, "lo", ipr.link_lookup(ifname="lo")[0], "00:00:00:00:00:00", "127.0.0.1", 8)
    with pytest.raises(InputError, match="cannot transmit XDP frames.*trafgen"):
        traffic.generator("xdp", lo)
    nothing_attached(pair)


@pytest.mark.usefixtures("live_frames")
def test_frames_survive_a_receiver_that_rewrites_them_in_place():
    """A router rewrites each frame in place (MACs, TTL); the kernel recycles the page for
    the next frame, so the generator must restore its headers every time: all arrive."""
    from labkit import bpf, traffic
    from labkit.testbed import topology
    from labkit.testbed.topology import LinkSpec, TopologySpec

    spec = TopologySpec(
        hosts=["cli", "rtr", "srv"],
        links=[
            LinkSpec("cli", "rtr", "10.1.0.2/24", "10.1.0.1/24"),
            LinkSpec("rtr", "srv", "10.2.0.1/24", "10.2.0.2/24"),
        ],
    )
    with topology.Topology(spec) as t, bpf.load("xdp_minimal") as m:
        t.host("rtr").run(["sysctl", "-w", "net.ipv4.ip_forward=1"])
        t.host("rtr").run(["ping", "-c1", "-W1", "10.2.0.2"], check=False)  # resolve the next hop
        cli, rin, srv = t.iface("cli"), t.iface("rtr", "cli"), t.iface("srv")
        with bpf.attach_xdp(srv, m.function("xdp_drop_bare"), "native"), traffic.generator("xdp", cli) as gen:
            before = srv.stats()["rx_packets"]
            gen.send(traffic.TrafficSpec(cli.mac, rin.mac, "10.1.0.2", "10.2.0.2", count=20_000, flows=4))
            import time

            time.sleep(0.3)
            assert srv.stats()["rx_packets"] - before == 20_000


@pytest.mark.usefixtures("live_frames")
def test_two_cpus_into_two_queues_lose_nothing_at_full_speed():
    """One veth queue per sending CPU: no shared XDP ring, so nothing is refused even
    unpaced, and the receiver's counter sees exactly the count asked."""
    from labkit.testbed import topology

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    with topology.Topology(topology.pair(queues=2)) as t, bpf.load("xdp_gen", GEN_IFINDEX=0) as sink_prog:
        snd, rcv = t.iface("snd"), t.iface("rcv")
        with bpf.attach_xdp(rcv, sink_prog.function("xdp_gen_sink"), "native"), traffic.generator("xdp", snd) as gen:
            offered = gen.send(traffic.TrafficSpec.between(snd, rcv, count=400_000, cpus=2))
            assert offered.packets == 400_000 and not [n for n in offered.notes if "refused" in n]
            got = sum(v["packets"] for v in bpf.percpu_sum(sink_prog.map("sink_counters")).values())
            assert got == 400_000
