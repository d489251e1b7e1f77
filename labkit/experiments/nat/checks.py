"""The NAT's correctness checks with real traffic: ping, UDP, TCP, captures and checksums,
one function each; `check_correctness` runs them all against a NAT.
"""
from __future__ import annotations
import ipaddress
import os
import socket
import struct
import tempfile
import time
from contextlib import ExitStack, contextmanager
from labkit import packets
from labkit.testbed import hosts
from labkit import measure
from labkit.testbed import topology
from labkit.errors import LabkitError
from labkit.dataplanes.nat import Nat
from labkit.experiments.nat.testbed import INSIDE_NET, NAT_OUTSIDE, NatLab, SERVER, STATIC_OUTSIDE, client_addr
from labkit.experiments.nat.exchanges import (BEYOND, _udp_socket, router_beyond_server, tcp_many, tcp_transfer,
                                              udp_exchange, udp_fragmented, udp_port_unreachable,
                                              udp_port_unreachable_from_inside, udp_refused)


@contextmanager
def capture(host: hosts.Host, ifname: str, bpf_filter: str = "ip"):
    """tcpdump on IFNAME of HOST into a temporary pcap; yields a function returning the
    captured frames (call it after the `with` body has sent what it wanted seen)."""
    hosts.which("tcpdump", "tcpdump")
    fd, path = tempfile.mkstemp(prefix="labkit-nat-", suffix=".pcap")
    os.close(fd)
    frames: list[bytes] = []
    proc = host.spawn(["tcpdump", "-i", ifname, "-n", "-U", "--immediate-mode", "-s", "0", "-w", path, bpf_filter],
                      name="tcpdump")
    try:
        _wait_listening(proc)
        yield lambda: frames
    finally:
        time.sleep(0.3)
        proc.close()
        try:
            frames.extend(read_pcap(path))
        finally:
            os.unlink(path)


def _wait_listening(proc, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "listening on" in proc.output():
            return
        if not proc.running:
            raise LabkitError(f"tcpdump ended at once: {proc.output()[-500:]}")
        time.sleep(0.05)
    raise LabkitError("tcpdump did not start listening within 5 s")


def read_pcap(path: str) -> list[bytes]:
    """The frames of a classic pcap file (Ethernet link type)."""
    data = open(path, "rb").read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise LabkitError(f"{path} is not a pcap file (magic {magic.hex()})")
    out, off = [], 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append(data[off + 16:off + 16 + caplen])
        off += 16 + caplen
    return out


def snmp(host: hosts.Host) -> dict:
    return measure._snmp(host.read("/proc/net/snmp"))


CSUM_COUNTERS = (("Ip", "InHdrErrors"), ("Udp", "InCsumErrors"), ("Tcp", "InCsumErrors"), ("Icmp", "InCsumErrors"))


def icmp_error_checks(lab: NatLab, add) -> int:
    """ICMP errors from beyond the NAT reach the inside host they concern. Returns the
    server's InHdrErrors it caused on purpose (the router's count of expired TTLs)."""
    got = udp_port_unreachable(lab)
    add("ICMP: port unreachable reaches the client that sent (same source port on every client)",
        all(v == "refused" for v in got.values()), "; ".join(f"c{i}: {v}" for i, v in got.items()))
    back = udp_port_unreachable_from_inside(lab)
    add("ICMP: an inside host's port unreachable reaches the server, about the address it knows",
        back == "refused", f"the server's connected socket: {back}")
    with router_beyond_server(lab):
        before = snmp(lab.server).get(("Ip", "InHdrErrors"), 0)
        cp = lab.client(1).run(["ping", "-c", "1", "-t", "2", "-W", "2", BEYOND], check=False, timeout=20)
        expired = snmp(lab.server).get(("Ip", "InHdrErrors"), 0) - before
    add("ICMP: time exceeded from beyond the NAT reaches the client",
        f"From {SERVER}" in cp.stdout and "Time to live exceeded" in cp.stdout,
        (cp.stdout.strip().splitlines() or [cp.stderr])[min(1, len(cp.stdout.strip().splitlines()) - 1)]
        if cp.stdout.strip() else cp.stderr)
    return expired


def hairpin_check(lab: NatLab, nat: Nat, variant: str, path, add) -> None:
    """c2 reaching c1 through c1's static outside address, and through the SNAT address
    and a port of the range: refused and counted (the tc NAT with its inside guard; the
    XDP fast path's inside program refuses it itself)."""
    if lab.clients < 2:
        return
    inside = [lab.inside(i) for i in range(1, lab.clients + 1)]
    counted = (lambda: path.stats()["drop_hairpin"]["packets"]) if variant == "xdp_nat" else \
        (lambda: nat.stats()["drop_hairpin"]["packets"])
    with ExitStack() as stack:
        if variant != "xdp_nat":
            stack.enter_context(nat.guard(inside))
        before = counted()
        cp = lab.client(2).run(["ping", "-c", "1", "-W", "1", STATIC_OUTSIDE], check=False, timeout=10)
        s = _udp_socket(lab.client(2), 40005)
        try:
            s.sendto(b"hairpin?", (NAT_OUTSIDE, nat.port_range[0]))
        finally:
            s.close()
        time.sleep(0.2)
        n = counted() - before
    add("hairpinning refused and counted (c2 to c1's outside address, and to the SNAT address's port range)",
        cp.returncode != 0 and n >= 2, f"ping {'failed' if cp.returncode else 'ANSWERED'}; drop_hairpin +{n}")


def ebpf_state_checks(lab: NatLab, nat: Nat, variant: str, path, add) -> None:
    """What only the eBPF NAT exposes: its flow table, a static mapping added and removed
    while it runs (with its counters), hairpinning refused and counted."""
    # flow table
    flows = nat.flows()
    udp = [f for f in flows if f.proto == "udp" and f.inside_port == 40000]
    add("flow table: one UDP flow per client, counted both ways",
        len(udp) == lab.clients and all(f.out_packets >= 1 and f.in_packets >= 1 for f in udp),
        f"{len(flows)} flows; UDP port-40000 flows: "
        + ", ".join(f"{f.inside}:{f.inside_port}->{f.nat_port} out {f.out_packets} in {f.in_packets}" for f in udp))
    icmp = [f for f in flows if f.proto == "icmp"]
    add("flow table: ICMP echo flows, identifiers translated", len(icmp) >= lab.clients,
        ", ".join(f"{f.inside} id {f.inside_port}->{f.nat_port}" for f in icmp))
    # static 1:1 mapping, both directions (its outside address on the outside port first)
    with topology.address(lab.topo.host("nat"), lab.outside.name, f"{STATIC_OUTSIDE}/32"):
        nat.add_mapping(client_addr(1), STATIC_OUTSIDE)
        try:
            cp = lab.server.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", STATIC_OUTSIDE], check=False, timeout=20)
            add("static: server reaches c1 at its outside address", cp.returncode == 0,
                cp.stdout.strip().splitlines()[-2] if cp.stdout else cp.stderr)
            srv = _udp_socket(lab.server, 7779)
            try:
                c = _udp_socket(lab.client(1), 40001)
                try:
                    c.sendto(b"static", (SERVER, 7779))
                    _, peer = srv.recvfrom(2048)
                except socket.timeout:
                    peer = None
                finally:
                    c.close()
            finally:
                srv.close()
            add("static: c1's traffic leaves as its outside address", peer is not None and peer[0] == STATIC_OUTSIDE
                and peer[1] == 40001, f"server saw {peer} (ports are kept)")
            hairpin_check(lab, nat, variant, path, add)
            got = udp_refused(lab.client(1), 40006, 9998)
            add("static: port unreachable back to c1 with its embedded header translated", got == "refused",
                f"c1's connected socket: {got}")
            m = {x.inside: x for x in nat.mappings()}.get(client_addr(1))
            add("static: mapping counted both ways", m is not None and m.out_packets > 0 and m.in_packets > 0,
                f"{m}")
        finally:
            nat.remove_mapping(client_addr(1))


def check_correctness(lab: NatLab, nat: Nat | None, variant: str = "ebpf",
                      iptables_target: str = "MASQUERADE") -> list[dict]:
    """Run the correctness checks through the NAT VARIANT ('ebpf' or 'tc_nat': the tc NAT;
    'xdp_nat': the XDP fast path over it; 'iptables': netfilter's NAT, NAT unused); one
    dict per check (check, ok, detail, offloads, variant). The traffic checks are the same
    for every variant; the eBPF NAT's own state (flows, mappings, counters) is checked
    where there is one. Nothing is asserted here: the caller decides."""
    checks = []
    nat_ebpf = variant != "iptables"

    def add(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    verify_capture = lab.offloads in ("mixed", "off")
    watched = [lab.server] + [lab.client(i) for i in range(1, lab.clients + 1)]
    before = {h.name: snmp(h) for h in watched}
    with lab.variant(variant, nat, iptables_target) as path, capture(lab.server, lab.server_iface.name) as captured:
        # ping from every client
        for i in range(1, lab.clients + 1):
            cp = lab.client(i).run(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
            add(f"ping c{i} -> server", cp.returncode == 0, cp.stdout.strip().splitlines()[-2] if cp.stdout else cp.stderr)
        # UDP, every client from the same source port
        ex = udp_exchange(lab)
        peers = list(ex["seen"].values())
        add("UDP: every datagram reaches the server", len(peers) == lab.clients,
            f"{len(peers)} of {lab.clients} datagrams arrived")
        add("UDP: server sees the SNAT address", peers and all(p[0] == NAT_OUTSIDE for p in peers),
            f"server saw {sorted(set(p[0] for p in peers))}")
        add("UDP: same inside port, distinct outside ports", len({p[1] for p in peers}) == lab.clients,
            f"{lab.clients} clients from port 40000 -> outside ports {sorted(p[1] for p in peers)}")
        add("UDP: replies reach the right inside host",
            all(ex["got"].get(i) == f"echo: hello from c{i}" for i in range(1, lab.clients + 1)),
            "; ".join(f"c{i} got {ex['got'].get(i)!r}" for i in range(1, lab.clients + 1)))
        # TCP
        for i in range(1, lab.clients + 1):
            r = tcp_transfer(lab, i)
            add(f"TCP: c{i} transfer intact", r.get("sha256") == r["sent_sha256"] and "error" not in r,
                f"{r.get('bytes', 0)} bytes, sha256 {'matches' if r.get('sha256') == r['sent_sha256'] else 'DIFFERS'}"
                + (f", error {r['error']}" if "error" in r else ""))
            add(f"TCP: c{i} seen as the SNAT address", (r.get("peer") or ("",))[0] == NAT_OUTSIDE,
                f"server saw {r.get('peer')}")
        ttl_expired = icmp_error_checks(lab, add)
        many = tcp_many(lab)
        add(f"TCP: {many.get('want')} concurrent connections, every client from the same source ports",
            "error" not in many and many["got"] == many["want"] and many["sources"] == {NAT_OUTSIDE}
            and many["outside_ports"] == many["want"] and many["intact"],
            f"{many.get('got')} of {many.get('want')} arrived; sources {sorted(many.get('sources', []))}; "
            f"{many.get('outside_ports')} distinct outside ports; messages intact: {many.get('intact')}"
            + (f"; error: {many['error']}" if "error" in many else ""))
        # fragments and IPv4 options
        big = udp_fragmented(lab)
        add("UDP: a datagram beyond the MTU arrives whole, both ways (fragments translated)",
            big.get("server_intact") and big.get("client_intact") and (big.get("server_saw") or ("",))[0] == NAT_OUTSIDE,
            f"{big['sent']} bytes sent; server got {big.get('server_got')} from {big.get('server_saw')}; "
            f"client got {big.get('client_got')} back")
        cp = lab.client(1).run(["ping", "-R", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        add("IPv4 options carried: ping with record route", cp.returncode == 0 and "RR:" in cp.stdout,
            (cp.stdout.strip().splitlines() or [cp.stderr])[-1])
        if nat_ebpf:
            ebpf_state_checks(lab, nat, variant, path, add)
        stats = nat.stats() if nat_ebpf else None
        fast = path.stats() if variant == "xdp_nat" else None
    frames = captured()
    after = {h.name: snmp(h) for h in watched}
    # what the server's wire saw
    inbound = [packets.parse(f) for f in frames]
    inbound = [p for p in inbound if p.dst_ip == SERVER]
    leaked = [p for p in inbound if p.src_ip and ipaddress.IPv4Address(p.src_ip) in ipaddress.IPv4Network(INSIDE_NET)]
    add("capture: no inside address reaches the server", inbound and not leaked,
        f"{len(inbound)} packets to the server; sources {sorted({p.src_ip for p in inbound})}")
    if verify_capture:
        # a fragment's L4 checksum covers its whole datagram: the server's own reassembly
        # checks those (its kernel counters below); the capture checks the rest
        frags = [i for i, f in enumerate(frames) if len(f) >= 22 and f[12:14] == b"\x08\x00"
                 and struct.unpack("!H", f[20:22])[0] & 0x3FFF]
        parsed = [(packets.parse(f), i in frags) for i, f in enumerate(frames)]
        bad = [p for p, frag in parsed if p.dst_ip == SERVER and
               (p.ip_checksum_ok is False or (p.l4_checksum_ok is False and not frag))]
        add("capture: every checksum the server got verifies", not bad,
            f"{len(inbound) - len(bad)}/{len(inbound)} packets with valid IPv4 and TCP/UDP/ICMP checksums "
            f"({len(frags)} fragments: IPv4 checksum only)")
    errors = {h: {f"{p}:{n}": after[h].get((p, n), 0) - before[h].get((p, n), 0) for p, n in CSUM_COUNTERS}
              for h in before}
    errors[lab.server.name]["Ip:InHdrErrors"] -= ttl_expired  # the time-exceeded check's own
    add("kernel checksum error counters stay 0 (server and clients)",
        all(v == 0 for e in errors.values() for v in e.values()),
        "; ".join(f"{h}: " + (", ".join(f"{k}={v}" for k, v in e.items() if v) or "all 0") for h, e in errors.items()))
    if stats is not None:
        add("program outcomes: nothing dropped as untranslatable",
            all(stats[k]["packets"] == 0 for k in ("drop_no_port", "drop_table_full", "drop_rewrite_failed")),
            ", ".join(f"{k}={v['packets']}" for k, v in stats.items() if v["packets"]))
    if fast is not None:
        add("XDP fast path: flows translated and forwarded at XDP both ways",
            all(fast[k]["packets"] > 0 for k in ("out_snat", "in_snat", "out_static", "in_static")),
            ", ".join(f"{k}={v['packets']}" for k, v in fast.items() if v["packets"]))
        add("XDP fast path: new flows went up to the tc NAT", fast["pass_no_flow"]["packets"] > 0
            and stats["out_snat_new"]["packets"] > 0,
            f"passed up for want of a flow: {fast['pass_no_flow']['packets']}; created by the tc NAT: "
            f"{stats['out_snat_new']['packets']}")
    for c in checks:
        c["offloads"] = lab.offloads
        c["variant"] = variant
    return checks
