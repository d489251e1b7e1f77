"""The eBPF NAT with real traffic (namespaces, veths, tc programs, iptables, ping, sockets,
tcpdump, iperf3, trafgen), and its control plane's handling of bad input."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from labkit import bpf
from labkit.dataplanes.nat import Nat, TableFull
from labkit.errors import InputError
from labkit.experiments import nat as experiment
from labkit.experiments.nat import checks as nat_checks
from labkit.experiments.nat import testbed as nat_testbed
from labkit.measure.capture import capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

INSIDE, OUTSIDE, SNAT = nat_testbed.INSIDE_NET, nat_testbed.OUTSIDE_NET, nat_testbed.NAT_OUTSIDE


def maps_snapshot(n: Nat) -> dict:
    """Everything the control plane writes, read back raw from the maps."""
    raw = {}
    for name in ("config", "static_out", "static_in"):
        t = n._maps[name]
        raw[name] = sorted((bytes(k), bytes(v)) for k, v in t.items())
    return raw


# ---------------------------------------------------------------- control plane
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(inside_network="10.20.0.0/33", outside_network=OUTSIDE), "not an IPv4 network"),
        (dict(inside_network="10.20.0.0/16", outside_network="10.20.5.0/24"), "overlap"),
        (
            dict(inside_network=INSIDE, outside_network=OUTSIDE, snat_address="203.0.113.1"),
            "outside the outside network",
        ),
        (dict(inside_network=INSIDE, outside_network=OUTSIDE, snat_address=SNAT, port_range=(3000, 2000)), "inverted"),
        (dict(inside_network=INSIDE, outside_network=OUTSIDE, snat_address=SNAT, port_range=(0, 10)), "1..65535"),
        (dict(inside_network=INSIDE, outside_network=OUTSIDE, snat_address=SNAT, port_range=()), "two ports"),
    ],
)
def test_bad_configuration_is_refused_before_loading(kwargs, words, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the program was loaded before the input was checked")

    monkeypatch.setattr(bpf, "load", no_load)
    with pytest.raises(InputError, match=words):
        Nat(**kwargs)


@pytest.mark.parametrize(
    "inside, outside, words",
    [
        ("10.30.0.2", "198.51.100.20", "outside the inside network"),
        ("10.20.1.2", "203.0.113.20", "outside the outside network"),
        ("10.20.1.2", SNAT, "SNAT address"),
        ("10.20.1.2", "198.51.100.255", "broadcast"),
        ("10.20.0.0", "198.51.100.20", "network or broadcast"),
        ("10.20.1.x", "198.51.100.20", "not an IPv4 address"),
        ("10.20.1.2", "198.51.100.11", "already has a static mapping"),  # inside overlaps the existing one
        ("10.20.1.3", "198.51.100.10", "already mapped"),  # outside overlaps the existing one
    ],
)
def test_bad_mapping_leaves_maps_unchanged(nat, inside, outside, words):
    nat.clear()
    nat.add_mapping("10.20.1.2", "198.51.100.10")
    before = maps_snapshot(nat)
    with pytest.raises(InputError, match=words):
        nat.add_mapping(inside, outside)
    assert maps_snapshot(nat) == before
    assert [(m.inside, m.outside) for m in nat.mappings()] == [("10.20.1.2", "198.51.100.10")]


def test_port_range_changes(nat):
    nat.clear()
    nat.add_mapping("10.20.1.2", "198.51.100.10")
    before = maps_snapshot(nat)
    for bad in ((30000, 29999), (0, 100), (100, 70000), ("a", 5)):
        with pytest.raises(InputError):
            nat.set_port_range(*bad)
    assert maps_snapshot(nat) == before
    nat.set_port_range(40000, 40009)
    assert nat.config()["port_range"] == (40000, 40009)
    nat.set_port_range(20000, 29999)
    with pytest.raises(InputError, match="no static mapping"):
        nat.remove_mapping("198.51.100.77")
    nat.remove_mapping("198.51.100.10")  # by its outside address
    assert nat.mappings() == []


@pytest.mark.parametrize(
    "timeouts, words",
    [
        ({"udp": 0}, "more than 0"),
        ({"tcp_closing": -5}, "more than 0"),
        ({"udp": "10"}, "more than 0"),
        ({"sctp": 10}, "unknown"),
        ([1, 2], "a dict"),
    ],
)
def test_bad_timeouts_are_refused_before_loading(timeouts, words, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the program was loaded before the input was checked")

    monkeypatch.setattr(bpf, "load", no_load)
    with pytest.raises(InputError, match=words):
        Nat(INSIDE, OUTSIDE, SNAT, timeouts=timeouts)


def test_bad_timeout_change_leaves_the_configuration(nat):
    before = maps_snapshot(nat)
    with pytest.raises(InputError, match="more than 0"):
        nat.set_timeouts(udp=0)
    assert maps_snapshot(nat) == before
    nat.set_timeouts(udp=60)
    assert nat.config()["timeouts"]["udp"] == pytest.approx(60)
    nat.set_timeouts(udp=120)


def test_snat_address_not_on_the_outside_interface_is_refused():
    """Attaching a NAT whose SNAT address the outside port does not have: refused, nothing
    attached (no clsact qdisc), the maps untouched."""
    with nat_testbed.NatLab(1, "off") as lab, Nat(INSIDE, OUTSIDE, "198.51.100.77") as n:
        before = maps_snapshot(n)
        with pytest.raises(InputError, match="not an address of the outside interface"):
            n.attach(lab.outside)
        qd = lab.topo.host("nat").run(["tc", "qdisc", "show", "dev", lab.outside.name]).stdout
        assert "clsact" not in qd and maps_snapshot(n) == before


def test_mapping_an_address_the_outside_port_lacks_is_refused_while_attached(nat):
    nat.clear()
    with nat_testbed.NatLab(1, "off") as lab, nat.attach(lab.outside):
        before = maps_snapshot(nat)
        with pytest.raises(InputError, match="not an address of the outside interface"):
            nat.add_mapping("10.20.1.2", "198.51.100.77")
        assert maps_snapshot(nat) == before
    nat.add_mapping("10.20.1.2", "198.51.100.77")  # detached: nothing to check against
    nat.clear()


def test_full_mapping_table_is_reported():
    with Nat(INSIDE, OUTSIDE, SNAT, max_static=2) as n:
        n.add_mapping("10.20.1.2", "198.51.100.10")
        n.add_mapping("10.20.1.3", "198.51.100.11")
        before = maps_snapshot(n)
        with pytest.raises(TableFull, match="full"):
            n.add_mapping("10.20.1.4", "198.51.100.12")
        assert maps_snapshot(n) == before
        n.remove_mapping("10.20.1.2")
        n.add_mapping("10.20.1.4", "198.51.100.12")  # room again, the freed counter slot reused
        assert {m.inside for m in n.mappings()} == {"10.20.1.3", "10.20.1.4"}


# ---------------------------------------------------------------- real traffic
@pytest.mark.parametrize("offloads", ["off", "on"])
def test_correctness_with_real_traffic(nat, offloads):
    """ping, UDP from the same source port on two hosts, TCP, a static mapping both ways;
    the server's capture and checksum counters. (offloads='mixed', where partial checksums
    are finished in software after the NAT, runs in test_experiment_smoke.)"""
    nat.clear()
    with nat_testbed.NatLab(2, offloads) as lab:
        checks = nat_checks.check_correctness(lab, nat)
    failed = [f"{c['check']}: {c['detail']}" for c in checks if not c["ok"]]
    assert not failed, "\n".join(failed)
    names = {c["check"] for c in checks}
    assert all(c.keys() == {"check", "ok", "detail", "offloads", "variant"} for c in checks)
    assert {(c["variant"], c["offloads"]) for c in checks} == {("tc_nat", offloads)}  # the default: the tc NAT
    assert "UDP: same inside port, distinct outside ports" in names
    assert ("capture: every checksum the server got verifies" in names) == (offloads == "off")


def test_the_same_traffic_checks_pass_through_iptables():
    """The correctness checks are the same for every NAT variant: netfilter's passes them
    too (its flow state is conntrack's, not checked here)."""
    with nat_testbed.NatLab(2, "off") as lab:
        checks = nat_checks.check_correctness(lab, None, "iptables")
    failed = [f"{c['check']}: {c['detail']}" for c in checks if not c["ok"]]
    assert not failed, "\n".join(failed)
    assert not any(c["check"].startswith(("flow table", "static", "program outcomes")) for c in checks)


def test_iptables_variant_translates_and_cleans_up():
    with nat_testbed.NatLab(1, "off") as lab:
        with lab.iptables("MASQUERADE") as rule, capture(lab.server, lab.server_iface.name, "icmp") as got:
            cp = lab.client(1).run(["ping", "-c", "2", "-i", "0.2", "-W", "2", nat_testbed.SERVER], check=False)
            assert cp.returncode == 0, cp.stdout + cp.stderr
            assert rule.counters()["packets"] >= 1
        from labkit import packets

        sources = {packets.parse(f).src_ip for f in got() if packets.parse(f).dst_ip == nat_testbed.SERVER}
        assert sources == {SNAT}
        out = lab.topo.host("nat").run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]).stdout
        assert "labkit:" not in out


def _prog_id(fd: int) -> int:
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise AssertionError("no prog_id in fdinfo")


def test_nothing_remains_after_close():
    """Detach removes the clsact qdisc; closing the NAT unloads its programs and maps."""
    lib = bpf.libbpf()
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    with nat_testbed.NatLab(1, "off") as lab:
        n = Nat(INSIDE, OUTSIDE, SNAT)
        ids = [_prog_id(n.egress_function().fd), _prog_id(n.ingress_function().fd)]
        with n.attach(lab.outside):
            qd = lab.topo.host("nat").run(["tc", "qdisc", "show", "dev", lab.outside.name]).stdout
            assert "clsact" in qd
        qd = lab.topo.host("nat").run(["tc", "qdisc", "show", "dev", lab.outside.name]).stdout
        assert "clsact" not in qd
        n.close()
        n.close()  # harmless twice
    deadline = time.monotonic() + 5
    alive = ids
    while alive and time.monotonic() < deadline:  # programs are freed after an RCU grace period
        alive = []
        for pid in ids:
            fd = lib.bpf_prog_get_fd_by_id(pid)
            if fd >= 0:
                os.close(fd)
                alive.append(pid)
        time.sleep(0.1)
    assert not alive, f"BPF programs {alive} still loaded after close"


def test_experiment_smoke(tmp_path):
    """The whole experiment in smoke mode: checks (offloads='mixed'), every variant once,
    a tidy table with rates > 0, saved with metadata."""
    r = experiment.run(smoke=True, data_dir=tmp_path)
    failed = r.checks[~r.checks["ok"]]
    assert failed.empty, failed.to_string()
    assert (r.run_dir / "results.csv").exists() and (r.run_dir / "metadata.json").exists()
    pps = r.table[r.table["measure"] == "processed_pps"].groupby("variant")["value"].mean()
    assert set(pps.index) == set(experiment.VARIANTS) and (pps > 0).all()
    mbps = r.table[r.table["measure"] == "tcp_mbps"].groupby("variant")["value"].mean()
    assert (mbps > 0).all()
    assert "eBPF NAT" in r.interpretation and "checks passed" in r.interpretation
    # smoke keeps the sweep (two sizes, two flow counts) and the many-connections TCP trial, small
    swept = r.part("udp_sweep")
    assert set(swept["variant"]) == set(experiment.VARIANTS) and set(swept["flows"]) == {1, 16}
    assert set(r.part("tcp_streams")["flows"]) == {experiment.SMOKE["tcp_streams"]}
    # the programs' own time: as read, and net of the statistics' floor (a bare program's reading)
    prog = r.part("prog")
    raw = prog[prog["measure"].str.startswith("prog_ns_per_pkt:")]["value"].to_numpy()
    own = prog[prog["measure"].str.startswith("prog_own_ns_per_pkt:")]["value"].to_numpy()
    floor = prog[prog["measure"] == "prog_stats_floor_ns"]["value"]
    assert len(raw) == len(own) == 4 and (floor > 0).all(), prog.to_string()
    assert (own > 0).all(), prog.to_string()  # a NAT program does more than a bare XDP_DROP
    assert "goal ≤ 100 ns each" in r.interpretation


def _unusual_frames(src_mac: str, dst_mac: str) -> dict:
    """Frames from inside host c1 to the server that are unusual or malformed."""
    import struct

    from labkit import packets

    src, dst = nat_testbed.client_addr(1), nat_testbed.SERVER

    def fix(f: bytearray) -> bytes:
        ihl = (f[14] & 0x0F) * 4
        f[24:26] = b"\0\0"
        f[24:26] = struct.pack("!H", packets.checksum(bytes(f[14 : 14 + ihl])))
        return bytes(f)

    udp = bytearray(packets.build(packets.FrameSpec(src_mac, dst_mac, src, dst, "udp", 45000, 9, 200)))
    opts = bytearray(udp[:34] + bytes([1, 1, 1, 0]) + udp[34:])  # NOP NOP NOP EOL
    opts[14], opts[16:18] = 0x46, struct.pack("!H", struct.unpack("!H", udp[16:18])[0] + 4)
    first = bytearray(udp)
    first[20:22] = struct.pack("!H", 0x2000)
    first[18:20] = b"\x12\x34"
    later = bytearray(first[:34] + bytes(64))
    later[16:18], later[20:22] = struct.pack("!H", 84), struct.pack("!H", 0x0010)
    orphan = bytearray(later)
    orphan[18:20] = b"\x56\x78"
    bad_l4 = bytearray(udp)
    bad_l4[40] ^= 0x5A
    gre = bytearray(udp)
    gre[23] = 47
    short_tcp = bytearray(packets.build(packets.FrameSpec(src_mac, dst_mac, src, dst, "tcp", 45001, 80, 60)))
    short_tcp[16:18] = struct.pack("!H", 30)  # a TCP header cut to 10 bytes
    bad_ip = bytearray(udp)
    bad_ip[24] ^= 0x33
    return {
        "options": fix(opts),
        "first fragment": fix(first),
        "later fragment": fix(later),
        "orphan fragment": fix(orphan),
        "bad UDP checksum": bytes(bad_l4),
        "GRE": fix(gre),
        "truncated TCP": fix(short_tcp),
        "bad IPv4 checksum": bytes(bad_ip),
    }


@pytest.mark.parametrize("variant", ["tc_nat", "xdp_nat"])
def test_unusual_packets_from_inside_never_leak_an_inside_address(nat, variant):
    """IP options, fragments (one whose first never came), bad checksums, a protocol the
    NAT cannot translate, a truncated header, sent raw from inside: whatever reaches the
    server's wire carries the SNAT address, never an inside one; and what the NAT can
    carry (options, both fragments) arrives."""
    import socket

    from labkit import packets

    nat.clear()
    with (
        nat_testbed.NatLab(1, "off") as lab,
        lab.variant(variant, nat),
        capture(lab.server, lab.server_iface.name, "ip") as got,
    ):
        lab.client(1).run(["ping", "-c", "1", "-W", "2", nat_testbed.SERVER], check=False, timeout=10)
        frames = _unusual_frames(lab.client_iface(1).mac, lab.inside(1).mac)
        with lab.client(1).entered():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((lab.client_iface(1).name, 0))
            for f in frames.values():
                s.send(f)
        finally:
            s.close()
        time.sleep(0.5)
        stats = nat.stats()
    seen = [packets.parse(f) for f in got()]
    leaked = [p for p in seen if p.src_ip and p.src_ip.startswith("10.20.")]
    assert not leaked, [(p.src_ip, p.dst_ip, p.proto) for p in leaked]
    ports = [p for p in seen if p.src_ip == SNAT and p.proto == 17]
    assert len(ports) >= 3, f"options packet, bad-checksum packet and first fragment should arrive: {len(ports)}"
    assert stats["out_fragment"]["packets"] >= 1 and stats["drop_fragment"]["packets"] >= 1, stats
    assert stats["drop_protocol"]["packets"] >= 1, stats  # GRE from an inside host
