"""The NAT's XDP fast path with real traffic (namespaces, veths, XDP in native mode, the
tc NAT as slow path, ping, sockets, tcpdump), and the XDP routing baseline."""

from __future__ import annotations

import os

import pytest

from labkit import packets
from labkit.dataplanes.nat import Nat
from labkit.dataplanes.xdp_nat import OUTCOMES, XdpNat
from labkit.experiments.nat import checks as nat_checks
from labkit.experiments.nat import exchanges
from labkit.experiments.nat import testbed as nat_testbed
from labkit.measure.capture import capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

INSIDE, OUTSIDE, SNAT, SERVER = (
    nat_testbed.INSIDE_NET,
    nat_testbed.OUTSIDE_NET,
    nat_testbed.NAT_OUTSIDE,
    nat_testbed.SERVER,
)


def test_correctness_through_the_fast_path(nat):
    """ping, UDP from one source port on two hosts, TCP with a hash, a static mapping both
    ways, all with the XDP fast path in front of the tc NAT: the server's capture holds
    only translated addresses with valid checksums, and the fast path did the work."""
    with nat_testbed.NatLab(2, "off") as lab:
        checks = nat_checks.check_correctness(lab, nat, "xdp_nat")
    failed = [f"{c['check']}: {c['detail']}" for c in checks if not c["ok"]]
    assert not failed, "\n".join(failed)
    names = {c["check"] for c in checks}
    assert "XDP fast path: flows translated and forwarded at XDP both ways" in names
    assert "capture: every checksum the server got verifies" in names


def test_what_the_fast_path_cannot_finish_goes_up_and_is_counted(nat):
    """A TTL-1 packet of an established flow is passed up (the kernel answers it with
    time exceeded, which reaches the client) and counted; so is a packet for the NAT host
    (no flow has it: the fast path does not look further, the kernel delivers it)."""
    with nat_testbed.NatLab(1, "off") as lab, lab.xdp_nat(nat) as fast:
        c1 = lab.client(1)
        cp = c1.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        before = fast.stats()
        cp = c1.run(["ping", "-c", "1", "-t", "1", "-W", "2", SERVER], check=False, timeout=20)
        assert "Time to live exceeded" in cp.stdout, cp.stdout + cp.stderr
        cp = c1.run(["ping", "-c", "1", "-W", "2", "10.20.1.1"], check=False, timeout=20)  # the NAT host itself
        assert cp.returncode == 0, cp.stdout + cp.stderr
        after = fast.stats()
    grew = {k: after[k]["packets"] - before[k]["packets"] for k in OUTCOMES}
    assert grew["pass_unusual"] >= 1, grew  # TTL 1
    assert grew["pass_no_flow"] >= 1, grew  # to the NAT host
    assert sum(grew[k] for k in ("out_snat", "in_snat", "out_static", "in_static")) == 0, grew


def test_state_is_shared_with_the_tc_nat(nat):
    """A flow created by the tc NAT (slow path) is the flow the fast path translates: the
    same translated port, and its counters in the same flow table."""
    with (
        nat_testbed.NatLab(1, "off") as lab,
        lab.xdp_nat(nat) as fast,
        capture(lab.server, lab.server_iface.name, "udp") as got,
    ):
        ex = exchanges.udp_exchange(lab, sport=41000, dport=7777)
        ex2 = exchanges.udp_exchange(lab, sport=41000, dport=7777)
        assert ex["got"][1] and ex2["got"][1]
        flows = [f for f in nat.flows() if f.inside_port == 41000]
        st = fast.stats()
    ports = {packets.parse(f).sport for f in got() if packets.parse(f).dst_ip == SERVER}
    assert len(flows) == 1 and ports == {flows[0].nat_port}, (flows, ports)
    assert flows[0].out_packets >= 2 and flows[0].in_packets >= 2
    assert st["out_snat"]["packets"] >= 1 and st["in_snat"]["packets"] >= 1


def test_xdp_routing_forwards_without_translation():
    with (
        nat_testbed.NatLab(1, "off") as lab,
        lab.xdp_routing() as router,
        capture(lab.server, lab.server_iface.name, "icmp") as got,
    ):
        cp = lab.client(1).run(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        st = router.stats()
    assert st["routed"]["packets"] >= 3, st
    sources = {packets.parse(f).src_ip for f in got() if packets.parse(f).dst_ip == SERVER}
    assert sources == {nat_testbed.client_addr(1)}


def test_fast_path_programs_detach_on_exit(nat):
    from labkit import bpf

    with nat_testbed.NatLab(1, "off") as lab:
        with lab.xdp_nat(nat):
            assert bpf.xdp_state(lab.inside(1)).get("IFLA_XDP_ATTACHED")
        assert not bpf.xdp_state(lab.inside(1)).get("IFLA_XDP_ATTACHED")
        assert not bpf.xdp_state(lab.outside).get("IFLA_XDP_ATTACHED")
        assert not bpf.xdp_state(lab.server_iface).get("IFLA_XDP_ATTACHED")
    assert isinstance(XdpNat(nat).stats(), dict)


def test_fast_path_translates_exactly_as_the_tc_nat():
    """Established flows (TCP, UDP, ICMP echo; random sizes and ports, a UDP checksum of 0
    now and then), translated by the XDP programs (BPF_PROG_TEST_RUN, each flow's route
    remembered) and by the tc programs: the same frame, but for what forwarding changes
    (TTL - 1 with its IPv4 checksum, the MACs of the route)."""
    import random
    import socket
    import struct

    from labkit import bpf

    rng = random.Random(20261126)
    mac_a, mac_b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    smac, dmac = "02:00:00:00:00:1c", "02:00:00:00:00:1d"
    with Nat(INSIDE, OUTSIDE, SNAT, (20000, 29999), fib_cache_s=10**6) as n:
        eg, ig = n.egress_function(), n.ingress_function()
        xo, xi = XdpNat(n).outbound_function(), XdpNat(n).inbound_function()
        lo = socket.if_nametoindex("lo")
        frames = []
        for i in range(150):
            proto = rng.choice(["udp", "tcp", "icmp"])
            f = bytearray(
                packets.build(
                    packets.FrameSpec(
                        mac_a,
                        mac_b,
                        f"10.20.{rng.randrange(1, 9)}.2",
                        SERVER,
                        proto,
                        rng.randrange(1, 65536),
                        rng.choice([53, 80, 443]),
                        rng.choice([60, 64, 200, 1000, 1514]),
                    )
                )
            )
            if proto == "udp" and rng.random() < 0.1:
                f[40:42] = b"\0\0"
            frames.append(bytes(f))
            bpf.test_run(eg, bytes(f))  # the tc NAT sets the flow up
        XdpNat(n).remember_route(lo, smac, dmac)

        def forwarded(tc_out: bytes) -> bytes:
            """TC_OUT as forwarding would send it: TTL - 1, its checksum, the route's MACs."""
            f = bytearray(tc_out)
            f[0:6], f[6:12] = packets.mac_bytes(dmac), packets.mac_bytes(smac)
            f[22] -= 1
            f[24:26] = b"\0\0"
            f[24:26] = struct.pack("!H", packets.checksum(bytes(f[14:34])))
            return bytes(f)

        def same(a: bytes, b: bytes) -> bool:  # checksums compared as one's-complement numbers
            if len(a) != len(b):
                return False
            diff = [i for i in range(len(a)) if a[i] != b[i]]
            return all(
                i in (24, 25, 36, 37, 50, 51)
                and {a[i & ~1 : (i & ~1) + 2], b[i & ~1 : (i & ~1) + 2]} <= {b"\0\0", b"\xff\xff"}
                for i in diff
            )

        replies = []
        for f in frames:
            x = bpf.test_run(xo, f, ctx=bpf.XdpMd(ingress_ifindex=lo))
            t = bpf.test_run(eg, f)
            assert x.action == "XDP_REDIRECT", x.action
            assert same(x.data_out, forwarded(t.data_out)), (f.hex(), x.data_out.hex(), t.data_out.hex())
            p = packets.parse(t.data_out)
            if p.proto == 1:
                replies.append(packets.build(packets.FrameSpec(mac_b, mac_a, SERVER, SNAT, "icmp", p.sport, 0, 64)))
            else:
                replies.append(
                    packets.build(
                        packets.FrameSpec(
                            mac_b,
                            mac_a,
                            SERVER,
                            SNAT,
                            {6: "tcp", 17: "udp"}[p.proto],
                            p.dport,
                            p.sport,
                            rng.choice([60, 300]),
                        )
                    )
                )
        for r in replies:
            if r[34] == 8:  # an echo request built above: make it the reply it stands for
                r = bytearray(r)
                r[34], r[36:38] = 0, b"\0\0"
                r[36:38] = struct.pack("!H", packets.checksum(bytes(r[34:])))
                r = bytes(r)
            x = bpf.test_run(xi, r, ctx=bpf.XdpMd(ingress_ifindex=lo))
            t = bpf.test_run(ig, r)
            assert x.action == "XDP_REDIRECT", (x.action, XdpNat(n).stats())
            assert same(x.data_out, forwarded(t.data_out)), (r.hex(), x.data_out.hex(), t.data_out.hex())
        st = XdpNat(n).stats()
        assert st["out_snat"]["packets"] == len(frames) and st["in_snat"]["packets"] == len(replies)
