"""Fuzzing the eBPF NAT through BPF_PROG_TEST_RUN: many random and malformed frames through
both programs (nat_egress, nat_ingress). The program must never fail, never rewrite what
its rules say to pass, and for every frame do exactly what the Python model
(labkit/nat_model.py) says, byte for byte, with checksums recomputed from scratch.
Its own outcome counters must agree with the model's count of every outcome."""

from __future__ import annotations

import collections
import os
import random
import struct
import sys
import time

import pytest

from labkit import bpf, packets
from labkit.dataplanes.nat_model import OUTCOMES, ModelMismatch, NatModel
from labkit.errors import InputError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

INSIDE_NET = "10.20.0.0/16"
OUTSIDE_NET = "198.51.100.0/24"
SNAT = "198.51.100.1"
PORTS = (20000, 20999)
STATIC = {"10.20.9.9": "198.51.100.99", "10.20.9.10": "198.51.100.100"}
INSIDE_HOSTS = ["10.20.1.2", "10.20.2.2", "10.20.3.2", "10.20.9.9", "10.20.9.10"]
REMOTES = ["198.51.100.2", "198.51.100.3", "203.0.113.7"]
OTHER = ["192.0.2.1", "10.30.0.5", "198.51.100.1", "198.51.100.50"]
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
TC_ACT_OK, TC_ACT_SHOT = 0, 2
LONG = {"tcp_established": 36000, "tcp_closing": 36000, "udp": 36000, "icmp": 36000}
FUZZ_PACKETS = int(os.environ.get("LABKIT_NAT_FUZZ", "12000"))
SEED = int(os.environ.get("LABKIT_NAT_FUZZ_SEED", "20261125"))


@pytest.fixture(scope="module")
def fuzz_nat():
    """The NAT the fuzzing compares with its model: ports PORTS, the STATIC mappings, and
    timeouts far beyond the run."""
    from labkit.dataplanes.nat import Nat

    # timeouts far beyond the run: the model keeps flows for ever (expiry has its own tests)
    with Nat(INSIDE_NET, OUTSIDE_NET, SNAT, PORTS, timeouts=LONG) as n:
        for inside, outside in STATIC.items():
            n.add_mapping(inside, outside)
        yield n


# ---------------------------------------------------------------- frame makers
def _fix_ip_csum(frame: bytearray) -> None:
    ihl = (frame[14] & 0x0F) * 4
    frame[24:26] = b"\0\0"
    frame[24:26] = struct.pack("!H", packets.checksum(bytes(frame[14 : 14 + ihl])))


def valid(rng, src, dst, proto=None, sport=None, dport=None, icmp_type=None) -> bytearray:
    proto = proto or rng.choice(["udp", "tcp", "icmp"])
    size = rng.choice([60, 64, 64, 100, 128, 256, 576, 1000, 1514])
    f = bytearray(
        packets.build(
            packets.FrameSpec(
                MAC_A,
                MAC_B,
                src,
                dst,
                proto,
                sport if sport is not None else rng.randrange(1, 65536),
                dport if dport is not None else rng.randrange(1, 65536),
                size,
            ),
            payload_fill=bytes([rng.randrange(256)]),
        )
    )
    if proto == "icmp" and icmp_type is not None:  # echo reply, or another ICMP type
        f[34] = icmp_type
        f[36:38] = b"\0\0"
        tot = struct.unpack("!H", f[16:18])[0]
        f[36:38] = struct.pack("!H", packets.checksum(bytes(f[34 : 14 + tot])))
    if proto == "udp" and rng.random() < 0.05:
        f[40:42] = b"\0\0"  # "no checksum"
    return f


def with_options(f: bytearray, rng) -> bytearray:
    n = rng.choice([4, 8, 12, 40])
    opts = bytes([1] * (n - 1) + [0])  # NOPs, then end of list
    out = bytearray(f[:34] + opts + f[34:])
    out[14] = 0x40 | (5 + n // 4)
    tot = struct.unpack("!H", f[16:18])[0] + n
    out[16:18] = struct.pack("!H", tot)
    _fix_ip_csum(out)
    return out


def fragment(f: bytearray, rng) -> bytearray:
    frag = rng.choice([0x2000, 0x2000 | rng.randrange(1, 0x1FFF), rng.randrange(1, 0x1FFF)])  # MF and/or offset
    f[20:22] = struct.pack("!H", frag | (0x4000 if rng.random() < 0.3 else 0))
    _fix_ip_csum(f)
    return f


def icmp_error(rng, remote: str, sent: bytes, to: str = SNAT) -> bytearray:
    """An ICMP error from REMOTE to TO about SENT (a frame as the NAT let it out): destination
    unreachable, time exceeded or parameter problem, carrying SENT's IPv4 header and 8 to
    all of its payload bytes, as routers and hosts do."""
    ip = sent[14:]
    tot = struct.unpack("!H", ip[2:4])[0]
    keep = ip[: min(tot, 20 + rng.choice([8, 8, 20, 28, 64, 548]))]
    icmp = bytearray(
        bytes([rng.choice([3, 3, 11, 12]), rng.choice([0, 1, 3, 4])])
        + b"\0\0"
        + (b"\0\0\x05\xdc" if rng.random() < 0.3 else b"\0\0\0\0")
        + keep
    )
    icmp[2:4] = struct.pack("!H", packets.checksum(bytes(icmp)))
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(icmp),
            rng.randrange(65536),
            0,
            64,
            1,
            0,
            bytes(map(int, remote.split("."))),
            bytes(map(int, to.split("."))),
        )
    )
    hdr[10:12] = struct.pack("!H", packets.checksum(bytes(hdr)))
    eth = bytes.fromhex(MAC_A.replace(":", "")) + bytes.fromhex(MAC_B.replace(":", "")) + b"\x08\x00"
    f = bytearray(eth + hdr + icmp)
    return f + bytes(max(0, 60 - len(f)))


def first_fragment(f: bytearray) -> bytearray:
    """F as the first fragment of a longer datagram (MF set, offset 0)."""
    f[20:22] = struct.pack("!H", 0x2000)
    _fix_ip_csum(f)
    return f


def later_fragment(first: bytes, rng) -> bytearray:
    """A later fragment of FIRST's datagram: the same addresses, identifier and protocol,
    an offset past the first, some payload (and no L4 header)."""
    payload = bytes(rng.randrange(256) for _ in range(rng.choice([8, 16, 64, 400])))
    ihl = (first[14] & 0x0F) * 4
    hdr = bytearray(first[14 : 14 + ihl])
    hdr[2:4] = struct.pack("!H", ihl + len(payload))
    hdr[6:8] = struct.pack("!H", rng.randrange(1, 1000) | (0x2000 if rng.random() < 0.5 else 0))
    f = bytearray(first[:14]) + hdr + payload
    _fix_ip_csum(f)
    return f + bytes(max(0, 60 - len(f)))


def mangle(f: bytearray, rng) -> bytes:
    """One of the ways a frame can be malformed or unusual."""
    kind = rng.randrange(12)
    if kind == 0:  # truncated anywhere from the Ethernet header on
        return bytes(f[: rng.randrange(14, max(15, len(f)))])
    if kind == 1:  # bad IHL
        f[14] = 0x40 | rng.randrange(0, 5)
        _fix_ip_csum(f) if rng.random() < 0.5 else None
    elif kind == 2:
        return bytes(with_options(f, rng))
    elif kind == 3:
        return bytes(fragment(f, rng))
    elif kind == 4:  # not IPv4
        f[12:14] = rng.choice(
            [b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x88\xcc", bytes([rng.randrange(256), rng.randrange(256)])]
        )
    elif kind == 5:  # an unknown protocol
        f[23] = rng.choice([0, 2, 4, 41, 47, 50, 58, 132, 255])
        _fix_ip_csum(f)
    elif kind == 6:  # total length beyond the frame, or too short for the header
        f[16:18] = struct.pack("!H", rng.choice([len(f) - 13, len(f) + 100, 0xFFFF, 0, 19, 21, 27]))
        _fix_ip_csum(f)
    elif kind == 7:  # IP version not 4
        f[14] = (rng.choice([0, 6, 15]) << 4) | 5
    elif kind == 8:  # bad IPv4 header checksum (the program translates; the error must stay)
        f[24] ^= 0x5A
    elif kind == 9:  # bad L4 checksum
        proto = f[23]
        off = {6: 50, 17: 40, 1: 36}.get(proto)
        if off and off + 2 <= len(f):
            f[off] ^= 0x33
            f[off + 1] ^= 0x01
    elif kind == 10:  # random bytes behind a plausible Ethernet/IPv4 start
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        return bytes(f[: 14 + rng.randrange(0, 40)]) + tail
    else:  # a handful of random bits anywhere
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(f))
            f[i] ^= 1 << rng.randrange(8)
    return bytes(f)


# ---------------------------------------------------------------- the run
def injectable(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN (skb) refuses frames shorter than an Ethernet header, IPv4 frames
    shorter than Ethernet + 20 and IPv6 frames shorter than Ethernet + 40 (EINVAL): those
    cannot reach the program this way (on a real link the kernel drops them before tc)."""
    minimum = {b"\x08\x00": 34, b"\x86\xdd": 54}.get(bytes(frame[12:14]), 14)
    return len(frame) >= minimum


def run_one(fn, frame: bytes):
    res = bpf.test_run(fn, frame)
    assert res.retval in (TC_ACT_OK, TC_ACT_SHOT), f"unexpected tc verdict {res.retval}"
    return res.retval == TC_ACT_SHOT, res.data_out


def test_fuzz_matches_model(fuzz_nat):
    rng = random.Random(SEED)
    model = fuzz_nat.model()
    egress, ingress = fuzz_nat.egress_function(), fuzz_nat.ingress_function()
    fuzz_nat.clear_flows()
    before = fuzz_nat.stats()
    counts = collections.Counter()
    translated_replies = []  # (remote, nat port, proto, remote port) seen leaving
    sent = []  # frames as the NAT let them out
    received = []  # replies as the NAT let them in
    checked = malformed = 0
    failures = []

    def check(direction, frame, label):
        nonlocal checked
        dropped, out = run_one(egress if direction == "out" else ingress, frame)
        try:
            exp = model.outbound(frame, None if dropped else out) if direction == "out" else model.inbound(frame)
        except ModelMismatch as exc:
            failures.append(f"{label} {direction}: {exc}: {frame.hex()}")
            return None
        counts[exp.outcome] += 1
        diffs = NatModel.differences(exp, dropped, out)
        if diffs:
            failures.append(f"{label} {direction} ({exp.outcome}): {diffs}: {frame.hex()}")
        checked += 1
        return exp, out

    while checked < FUZZ_PACKETS and len(failures) < 20:
        r = rng.random()
        if r < 0.40:  # outbound from an inside host (SNAT or static)
            proto = rng.choice(["udp", "tcp", "icmp"])
            src, dst = rng.choice(INSIDE_HOSTS), rng.choice(REMOTES)
            sport = rng.choice([5555, 40000, rng.randrange(1, 65536)])  # shared ports: collisions on purpose
            f = valid(
                rng,
                src,
                dst,
                proto,
                sport,
                rng.choice([53, 80, 7777]),
                icmp_type=None if proto != "icmp" or rng.random() < 0.85 else rng.choice([0, 3, 13]),
            )
            got = check("out", bytes(f), "valid")
            if got and got[0].outcome.startswith("out_snat"):
                p = packets.parse(got[1])
                translated_replies.append((p.dst_ip, p.sport, p.proto, p.dport))
                sent.append(got[1])
            elif got and got[0].outcome == "out_static" and rng.random() < 0.3:
                sent.append(got[1])
        elif r < 0.50 and sent:  # a fragmented datagram out, and one back, first fragment first (mostly)
            proto = rng.choice(["udp", "tcp", "icmp"])
            src, dst = rng.choice(INSIDE_HOSTS), rng.choice(REMOTES)
            f = valid(rng, src, dst, proto, rng.randrange(1, 65536), rng.choice([53, 80]))
            if rng.random() < 0.3:
                f = with_options(f, rng)
            first = first_fragment(f)
            got = check("out", bytes(first), "first fragment") if rng.random() < 0.9 else None
            check("out", bytes(later_fragment(first, rng)), "later fragment")
            if got and got[0].outcome.startswith("out_snat"):
                p = packets.parse(got[1])
                if proto == "icmp":
                    back = valid(rng, dst, SNAT, "icmp", p.sport, 0, icmp_type=0)
                else:
                    back = valid(rng, dst, SNAT, proto, p.dport, p.sport)
                back = first_fragment(back)
                if rng.random() < 0.9:
                    check("in", bytes(back), "first fragment back")
                check("in", bytes(later_fragment(back, rng)), "later fragment back")
        elif r < 0.53 and received:  # an inside host's ICMP error about a reply it got
            back = rng.choice(received)
            p = packets.parse(back)
            f = icmp_error(rng, p.dst_ip, back, to=p.src_ip)
            frame = bytes(f) if rng.random() < 0.9 else mangle(f, rng)
            if injectable(frame):
                check("out", frame, "icmp error from inside")
        elif r < 0.57 and sent:  # an ICMP error about a packet that left translated
            out = rng.choice(sent)
            f = icmp_error(rng, packets.parse(out).dst_ip, out, to=packets.parse(out).src_ip)
            if rng.random() < 0.15:
                frame = mangle(f, rng)
                if injectable(frame):
                    check("in", frame, "malformed icmp error")
            else:
                check("in", bytes(f), "icmp error")
        elif r < 0.70 and translated_replies:  # a reply to a translated flow
            remote, nat_port, proto, rport = rng.choice(translated_replies)
            if proto == 1:
                f = valid(rng, remote, SNAT, "icmp", nat_port, 0, icmp_type=0)
            else:
                f = valid(rng, remote, SNAT, {6: "tcp", 17: "udp"}[proto], rport, nat_port)
            got = check("in", bytes(f), "reply")
            if got and got[0].outcome == "in_snat" and proto != 1:
                received.append(got[1])
        elif r < 0.76:  # inbound to a static mapping's outside address, or the SNAT address with no flow
            dst = rng.choice(list(STATIC.values()) + [SNAT])
            f = valid(rng, rng.choice(REMOTES), dst, icmp_type=rng.choice([None, 0, 8, 3]))
            got = check("in", bytes(f), "inbound")
            if got and got[0].outcome == "in_static":
                received.append(got[1])
        elif r < 0.80:  # addresses no rule concerns
            f = valid(rng, rng.choice(OTHER + REMOTES), rng.choice(OTHER + REMOTES))
            check(rng.choice(["in", "out"]), bytes(f), "unrelated")
        else:  # malformed or unusual, in either direction
            direction = rng.choice(["in", "out"])
            if direction == "out":
                f = valid(rng, rng.choice(INSIDE_HOSTS), rng.choice(REMOTES))
            else:
                f = valid(rng, rng.choice(REMOTES), rng.choice([SNAT] + list(STATIC.values())))
            frame = mangle(f, rng)
            if injectable(frame):
                check(direction, frame, "malformed")
                malformed += 1

    assert not failures, f"{len(failures)} frames differ from the model:\n" + "\n".join(failures)
    after = fuzz_nat.stats()
    program = {k: after[k]["packets"] - before[k]["packets"] for k in OUTCOMES}
    assert program == {k: counts.get(k, 0) for k in OUTCOMES}, "the program's outcome counters disagree with the model"
    # the run covered every outcome the rules can produce without a full table
    for outcome in (
        "out_static",
        "out_snat_new",
        "out_snat",
        "in_static",
        "in_snat",
        "pass_not_ipv4",
        "pass_malformed",
        "pass_no_rule",
        "pass_no_flow",
        "pass_fragment",
        "drop_fragment",
        "drop_protocol",
        "in_icmp_error",
        "out_fragment",
        "in_fragment",
        "out_icmp_error",
    ):
        assert counts[outcome] > 0, f"the fuzz run never produced {outcome}: widen it"
    print(
        f"\nfuzz: {checked} frames checked against the model ({malformed} malformed), seed {SEED}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )


def test_same_inside_port_gets_distinct_outside_ports(fuzz_nat):
    """Two inside hosts, same source port, same remote: two different translated ports,
    and each reply goes back to its own host."""
    fuzz_nat.clear_flows()
    eg, ig = fuzz_nat.egress_function(), fuzz_nat.ingress_function()
    ports = {}
    for host in ("10.20.1.2", "10.20.2.2", "10.20.3.2"):
        f = packets.build(packets.FrameSpec(MAC_A, MAC_B, host, "198.51.100.2", "udp", 5555, 53, 64))
        dropped, out = run_one(eg, f)
        p = packets.parse(out)
        assert not dropped and p.src_ip == SNAT and p.l4_checksum_ok and p.ip_checksum_ok
        ports[host] = p.sport
    assert len(set(ports.values())) == 3, ports
    for host, port in ports.items():
        reply = packets.build(packets.FrameSpec(MAC_B, MAC_A, "198.51.100.2", SNAT, "udp", 53, port, 64))
        dropped, out = run_one(ig, reply)
        p = packets.parse(out)
        assert (p.dst_ip, p.dport) == (host, 5555) and p.l4_checksum_ok and p.ip_checksum_ok


def test_port_exhaustion_is_counted_and_dropped():
    """A one-port range: the second flow to the same remote finds no port, is dropped and counted."""
    from labkit.dataplanes.nat import Nat

    with Nat(INSIDE_NET, OUTSIDE_NET, SNAT, (30000, 30000)) as n:
        eg = n.egress_function()
        a = packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.20.1.2", "198.51.100.2", "udp", 1000, 53, 64))
        b = packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.20.2.2", "198.51.100.2", "udp", 1000, 53, 64))
        assert run_one(eg, a)[0] is False
        assert run_one(eg, b)[0] is True
        st = n.table_use()
        assert st["no_port_drops"] == 1 and st["entries"] == 1


def test_full_table_refuses_new_flows_and_keeps_live_ones():
    """More flows than the table holds: the flows beyond it are dropped and counted, the
    live ones keep being translated (none is evicted); once they expire, the sweep frees
    the table for new flows."""
    from labkit.dataplanes.nat import Nat

    with Nat(INSIDE_NET, OUTSIDE_NET, SNAT, (20000, 29999), max_flows=64) as n:
        eg = n.egress_function()

        def frame(i):
            return packets.build(
                packets.FrameSpec(
                    MAC_A, MAC_B, f"10.20.{1 + i // 200}.{2 + i % 200}", "198.51.100.2", "udp", 1000 + i, 53, 64
                )
            )

        first_port = None
        for i in range(100):
            dropped, out = run_one(eg, frame(i))
            assert dropped == (i >= 64), i
            if i == 0:
                first_port = packets.parse(out).sport
        st = n.table_use()
        assert st["entries"] == 64 and st["full"] and st["table_full_drops"] == 36 and st["created"] == 64
        dropped, out = run_one(eg, frame(0))  # a live flow: still translated, same port
        assert not dropped and packets.parse(out).sport == first_port
        assert n.stats()["out_snat"]["packets"] == 1
        n.set_timeouts(udp=0.1)
        time.sleep(0.4)
        assert n.sweep() == 64 and n.table_use()["entries"] == 0
        assert len(n._maps["snat_in"].items()) == 0
        dropped, out = run_one(eg, frame(99))
        assert not dropped and n.table_use()["entries"] == 1


def test_the_sweeper_removes_idle_flows_in_the_background():
    from labkit.dataplanes.nat import Nat

    with Nat(INSIDE_NET, OUTSIDE_NET, SNAT, (20000, 29999), timeouts={"udp": 0.2, "icmp": 0.2}) as n:
        eg = n.egress_function()
        for i in range(5):
            run_one(
                eg, packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.20.1.2", "198.51.100.2", "udp", 3000 + i, 53, 64))
            )
        assert n.table_use()["entries"] == 5
        with n.sweeping(every_s=0.1):
            deadline = time.monotonic() + 5
            while n.table_use()["entries"] and time.monotonic() < deadline:
                time.sleep(0.05)
        assert n.table_use()["entries"] == 0 and n.swept == 5
        assert len(n._maps["snat_in"].items()) == 0
        with pytest.raises(InputError):
            with n.sweeping(every_s=0):
                pass


@pytest.mark.slow
def test_fuzz_matches_model_long(fuzz_nat, monkeypatch):
    """The same comparison over 120,000 frames (another seed)."""
    monkeypatch.setattr(sys.modules[__name__], "FUZZ_PACKETS", 120_000)
    monkeypatch.setattr(sys.modules[__name__], "SEED", SEED + 1)
    test_fuzz_matches_model(fuzz_nat)


def test_idle_flow_expires_on_lookup_and_reply_state_goes_with_it():
    """A flow idle past its timeout is expired by the next packet that meets it: outbound,
    the packet starts a new flow; inbound, the reply is handed to the host (pass_stale_flow)
    and both entries are gone. A flow with traffic in either direction stays."""
    from labkit.dataplanes.nat import Nat

    with Nat(INSIDE_NET, OUTSIDE_NET, SNAT, (20000, 29999), timeouts={"udp": 0.3}) as n:
        eg, ig = n.egress_function(), n.ingress_function()
        out = packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.20.1.2", "198.51.100.2", "udp", 5000, 53, 64))
        port = packets.parse(run_one(eg, out)[1]).sport
        reply = packets.build(packets.FrameSpec(MAC_B, MAC_A, "198.51.100.2", SNAT, "udp", 53, port, 64))
        for _ in range(4):  # replies alone keep the flow alive, beyond the timeout
            time.sleep(0.15)
            dropped, back = run_one(ig, reply)
            assert not dropped and packets.parse(back).dst_ip == "10.20.1.2"
        assert n.stats()["in_snat"]["packets"] == 4
        time.sleep(0.5)
        dropped, back = run_one(ig, reply)  # idle both ways: expired on this lookup
        assert not dropped and packets.parse(back).dst_ip == SNAT
        assert n.stats()["pass_stale_flow"]["packets"] == 1 and n.table_use()["entries"] == 0
        assert len(n._maps["snat_in"].items()) == 0
        run_one(eg, out)
        time.sleep(0.5)
        run_one(eg, out)  # outbound after the timeout: a new flow
        assert n.stats()["out_snat_new"]["packets"] == 3 and n.table_use()["entries"] == 1
        assert len(n._maps["snat_in"].items()) == 1


def test_tcp_flow_closing_after_fin_gets_the_short_timeout():
    """A FIN marks the flow closing: flows() says so, with the closing timeout, and the
    flow expires after that (not the established one)."""
    from labkit.dataplanes.nat import Nat

    with Nat(
        INSIDE_NET, OUTSIDE_NET, SNAT, (20000, 29999), timeouts={"tcp_established": 3600, "tcp_closing": 0.2}
    ) as n:
        eg = n.egress_function()
        syn = bytearray(
            packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.20.1.2", "198.51.100.2", "tcp", 5100, 80, 64))
        )
        run_one(eg, bytes(syn))
        (flow,) = n.flows()
        assert (flow.state, flow.timeout_s) == ("active", 3600)
        fin = bytearray(syn)
        fin[47] |= 0x01  # FIN
        run_one(eg, bytes(fin))
        (flow,) = n.flows()
        assert (flow.state, flow.timeout_s) == ("closing", 0.2)
        time.sleep(0.5)
        assert n.sweep() == 1 and n.flows() == []
