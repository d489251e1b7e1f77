"""The NAT's correctness checks with real traffic, as a table of small checks.

Each check is a short function of a shared `Context` (and of a client number, for the
checks made once per client) returning a `CheckResult`: its name, whether it passed, what
was expected and what was seen. `check_correctness` runs the table in order through one
NAT variant, with tcpdump on the server's port:

- `TRAFFIC`, while the variant carries traffic: ping, UDP from one source port on every
  client, TCP, ICMP errors both ways, many connections, fragments, IPv4 options, and the
  eBPF NAT's flow table where there is one;
- `STATIC`, the eBPF NAT only, while a static 1:1 mapping of c1 is in place (hairpinning
  is checked there too);
- `AFTERWARDS`, on what was read once the variant was gone: the server's capture (no
  inside address, every checksum), the kernel's checksum error counters, the programs'
  outcomes.

The traffic itself is in `exchanges` (run once per context, on first use); nothing is
asserted here: the caller decides.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, NamedTuple

from labkit import measure, packets
from labkit.dataplanes.nat import Nat
from labkit.experiments.nat.check_context import CSUM_COUNTERS, CSUM_NAMES, CheckResult, Context, line_of
from labkit.experiments.nat.exchanges import (
    BEYOND,
    _udp_socket,
    router_beyond_server,
    udp_port_unreachable,
    udp_port_unreachable_from_inside,
    udp_refused,
)
from labkit.experiments.nat.testbed import INSIDE_NET, NAT_OUTSIDE, SERVER, STATIC_OUTSIDE, NatLab, client_addr
from labkit.measure.capture import capture
from labkit.testbed import topology


# ---------------------------------------------------------------- while the variant carries traffic
def ping_reaches_server(cx: Context, i: int) -> CheckResult:
    cp = cx.lab.client(i).run(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
    return CheckResult(f"ping c{i} -> server", cp.returncode == 0, "echo replies (ping exits 0)", line_of(cp, -2))


def udp_every_datagram_arrives(cx: Context) -> CheckResult:
    n = cx.lab.clients
    return CheckResult(
        "UDP: every datagram reaches the server",
        len(cx.udp_peers) == n,
        f"{n} of {n} datagrams",
        f"{len(cx.udp_peers)} of {n} datagrams arrived",
    )


def udp_seen_as_snat(cx: Context) -> CheckResult:
    peers = cx.udp_peers
    return CheckResult(
        "UDP: server sees the SNAT address",
        peers and all(p[0] == NAT_OUTSIDE for p in peers),
        f"only {NAT_OUTSIDE}",
        f"server saw {sorted(set(p[0] for p in peers))}",
    )


def udp_distinct_outside_ports(cx: Context) -> CheckResult:
    n, peers = cx.lab.clients, cx.udp_peers
    return CheckResult(
        "UDP: same inside port, distinct outside ports",
        len({p[1] for p in peers}) == n,
        f"{n} distinct outside ports",
        f"{n} clients from port 40000 -> outside ports {sorted(p[1] for p in peers)}",
    )


def udp_replies_reach_sender(cx: Context) -> CheckResult:
    got = cx.udp["got"]
    return CheckResult(
        "UDP: replies reach the right inside host",
        all(got.get(i) == f"echo: hello from c{i}" for i in cx.clients),
        "c<i> gets 'echo: hello from c<i>'",
        "; ".join(f"c{i} got {got.get(i)!r}" for i in cx.clients),
    )


def tcp_transfer_intact(cx: Context, i: int) -> CheckResult:
    r = cx.tcp(i)
    same = r.get("sha256") == r["sent_sha256"]
    return CheckResult(
        f"TCP: c{i} transfer intact",
        same and "error" not in r,
        "the sent bytes' sha256, no error",
        f"{r.get('bytes', 0)} bytes, sha256 {'matches' if same else 'DIFFERS'}"
        + (f", error {r['error']}" if "error" in r else ""),
    )


def tcp_seen_as_snat(cx: Context, i: int) -> CheckResult:
    peer = cx.tcp(i).get("peer")
    return CheckResult(
        f"TCP: c{i} seen as the SNAT address", (peer or ("",))[0] == NAT_OUTSIDE, NAT_OUTSIDE, f"server saw {peer}"
    )


def icmp_port_unreachable(cx: Context) -> CheckResult:
    got = udp_port_unreachable(cx.lab)
    return CheckResult(
        "ICMP: port unreachable reaches the client that sent (same source port on every client)",
        all(v == "refused" for v in got.values()),
        "refused on every client",
        "; ".join(f"c{i}: {v}" for i, v in got.items()),
    )


def icmp_port_unreachable_to_server(cx: Context) -> CheckResult:
    back = udp_port_unreachable_from_inside(cx.lab)
    return CheckResult(
        "ICMP: an inside host's port unreachable reaches the server, about the address it knows",
        back == "refused",
        "refused",
        f"the server's connected socket: {back}",
    )


def icmp_time_exceeded(cx: Context) -> CheckResult:
    """Also counts the server's InHdrErrors this causes on purpose (the router's expired TTLs)."""
    hdr_errors = measure.snmp_probe(cx.lab.server, (("Ip", "InHdrErrors"),))
    with router_beyond_server(cx.lab):
        before = hdr_errors().get("Ip:InHdrErrors", 0)
        cp = cx.lab.client(1).run(["ping", "-c", "1", "-t", "2", "-W", "2", BEYOND], check=False, timeout=20)
        cx.ttl_expired = hdr_errors().get("Ip:InHdrErrors", 0) - before
    return CheckResult(
        "ICMP: time exceeded from beyond the NAT reaches the client",
        f"From {SERVER}" in cp.stdout and "Time to live exceeded" in cp.stdout,
        f"From {SERVER} ... Time to live exceeded",
        line_of(cp, 1),
    )


def tcp_many_connections(cx: Context) -> CheckResult:
    m = cx.many
    return CheckResult(
        f"TCP: {m.get('want')} concurrent connections, every client from the same source ports",
        "error" not in m
        and m["got"] == m["want"]
        and m["sources"] == {NAT_OUTSIDE}
        and m["outside_ports"] == m["want"]
        and m["intact"],
        f"all arrive, intact, from {NAT_OUTSIDE} on as many outside ports",
        f"{m.get('got')} of {m.get('want')} arrived; sources {sorted(m.get('sources', []))}; "
        f"{m.get('outside_ports')} distinct outside ports; messages intact: {m.get('intact')}"
        + (f"; error: {m['error']}" if "error" in m else ""),
    )


def udp_fragmented_whole(cx: Context) -> CheckResult:
    b = cx.big
    seen_as = (b.get("server_saw") or ("",))[0]
    return CheckResult(
        "UDP: a datagram beyond the MTU arrives whole, both ways (fragments translated)",
        b.get("server_intact") and b.get("client_intact") and seen_as == NAT_OUTSIDE,
        f"intact both ways, from {NAT_OUTSIDE}",
        f"{b['sent']} bytes sent; server got {b.get('server_got')} from {b.get('server_saw')}; "
        f"client got {b.get('client_got')} back",
    )


def ipv4_options_carried(cx: Context) -> CheckResult:
    cp = cx.lab.client(1).run(["ping", "-R", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
    return CheckResult(
        "IPv4 options carried: ping with record route",
        cp.returncode == 0 and "RR:" in cp.stdout,
        "replies with a recorded route (RR:)",
        line_of(cp, -1),
    )


def flow_table_udp(cx: Context) -> CheckResult:
    udp = [f for f in cx.flows if f.proto == "udp" and f.inside_port == 40000]
    return CheckResult(
        "flow table: one UDP flow per client, counted both ways",
        len(udp) == cx.lab.clients and all(f.out_packets >= 1 and f.in_packets >= 1 for f in udp),
        f"{cx.lab.clients} flows from port 40000, packets both ways",
        f"{len(cx.flows)} flows; UDP port-40000 flows: "
        + ", ".join(f"{f.inside}:{f.inside_port}->{f.nat_port} out {f.out_packets} in {f.in_packets}" for f in udp),
    )


def flow_table_icmp(cx: Context) -> CheckResult:
    icmp = [f for f in cx.flows if f.proto == "icmp"]
    return CheckResult(
        "flow table: ICMP echo flows, identifiers translated",
        len(icmp) >= cx.lab.clients,
        f"at least {cx.lab.clients} ICMP flows",
        ", ".join(f"{f.inside} id {f.inside_port}->{f.nat_port}" for f in icmp),
    )


# ---------------------------------------------------------------- while c1 has a static mapping
@contextmanager
def static_mapping(cx: Context):
    """c1 mapped 1:1 to STATIC_OUTSIDE (that address on the NAT's outside port first);
    removed on exit."""
    with topology.address(cx.lab.topo.host("nat"), cx.lab.outside.name, f"{STATIC_OUTSIDE}/32"):
        cx.nat.add_mapping(client_addr(1), STATIC_OUTSIDE)
        try:
            yield
        finally:
            cx.nat.remove_mapping(client_addr(1))


def static_reaches_c1(cx: Context) -> CheckResult:
    cp = cx.lab.server.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", STATIC_OUTSIDE], check=False, timeout=20)
    return CheckResult(
        "static: server reaches c1 at its outside address",
        cp.returncode == 0,
        f"echo replies from {STATIC_OUTSIDE}",
        line_of(cp, -2),
    )


def static_c1_leaves_as_outside(cx: Context) -> CheckResult:
    with _udp_socket(cx.lab.server, 7779) as srv, _udp_socket(cx.lab.client(1), 40001) as c:
        try:
            c.sendto(b"static", (SERVER, 7779))
            _, peer = srv.recvfrom(2048)
        except socket.timeout:
            peer = None
    return CheckResult(
        "static: c1's traffic leaves as its outside address",
        peer is not None and peer[0] == STATIC_OUTSIDE and peer[1] == 40001,
        f"({STATIC_OUTSIDE!r}, 40001)",
        f"server saw {peer} (ports are kept)",
    )


def hairpin_refused(cx: Context) -> CheckResult:
    """c2 reaching c1 through c1's static outside address, and through the SNAT address
    and a port of the range: refused and counted (the tc NAT with its inside guard; the
    XDP fast path's inside program refuses it itself)."""
    xdp = cx.variant == "xdp_nat"
    counted = lambda: (cx.path if xdp else cx.nat).stats()["drop_hairpin"]["packets"]  # noqa: E731
    with ExitStack() as stack:
        if not xdp:
            stack.enter_context(cx.nat.guard([cx.lab.inside(i) for i in cx.clients]))
        before = counted()
        cp = cx.lab.client(2).run(["ping", "-c", "1", "-W", "1", STATIC_OUTSIDE], check=False, timeout=10)
        with _udp_socket(cx.lab.client(2), 40005) as s:
            s.sendto(b"hairpin?", (NAT_OUTSIDE, cx.nat.port_range[0]))
        time.sleep(0.2)
        n = counted() - before
    return CheckResult(
        "hairpinning refused and counted (c2 to c1's outside address, and to the SNAT address's port range)",
        cp.returncode != 0 and n >= 2,
        "no answer; drop_hairpin +2 or more",
        f"ping {'failed' if cp.returncode else 'ANSWERED'}; drop_hairpin +{n}",
    )


def static_port_unreachable(cx: Context) -> CheckResult:
    got = udp_refused(cx.lab.client(1), 40006, 9998)
    return CheckResult(
        "static: port unreachable back to c1 with its embedded header translated",
        got == "refused",
        "refused",
        f"c1's connected socket: {got}",
    )


def static_mapping_counted(cx: Context) -> CheckResult:
    m = {x.inside: x for x in cx.nat.mappings()}.get(client_addr(1))
    return CheckResult(
        "static: mapping counted both ways",
        m is not None and m.out_packets > 0 and m.in_packets > 0,
        "packets out and in",
        f"{m}",
    )


# ---------------------------------------------------------------- afterwards
def capture_no_inside_address(cx: Context) -> CheckResult:
    inside = ipaddress.IPv4Network(INSIDE_NET)
    leaked = [p for p in cx.inbound if p.src_ip and ipaddress.IPv4Address(p.src_ip) in inside]
    return CheckResult(
        "capture: no inside address reaches the server",
        cx.inbound and not leaked,
        f"packets to the server, none from {INSIDE_NET}",
        f"{len(cx.inbound)} packets to the server; sources {sorted({p.src_ip for p in cx.inbound})}",
    )


def capture_checksums_verify(cx: Context) -> CheckResult:
    """A fragment's L4 checksum covers its whole datagram: the server's own reassembly
    checks those (its kernel counters); the capture checks the rest."""
    bad = [p for p in cx.inbound if p.ip_checksum_ok is False or p.l4_checksum_ok is False]
    frags = sum(bool(p.fragment) for p in cx.inbound)
    return CheckResult(
        "capture: every checksum the server got verifies",
        not bad,
        "no bad checksum",
        f"{len(cx.inbound) - len(bad)}/{len(cx.inbound)} packets with valid IPv4 and TCP/UDP/ICMP "
        f"checksums ({frags} fragments: IPv4 checksum only)",
    )


def kernel_checksum_errors(cx: Context) -> CheckResult:
    errors = {h: {k: cx.after[h].get(k, 0) - cx.before[h].get(k, 0) for k in CSUM_NAMES} for h in cx.before}
    errors[cx.lab.server.name]["Ip:InHdrErrors"] -= cx.ttl_expired  # the time-exceeded check's own
    return CheckResult(
        "kernel checksum error counters stay 0 (server and clients)",
        all(v == 0 for e in errors.values() for v in e.values()),
        "all 0",
        "; ".join(f"{h}: " + (", ".join(f"{k}={v}" for k, v in e.items() if v) or "all 0") for h, e in errors.items()),
    )


def nothing_untranslatable(cx: Context) -> CheckResult:
    drops = ("drop_no_port", "drop_table_full", "drop_rewrite_failed")
    return CheckResult(
        "program outcomes: nothing dropped as untranslatable",
        all(cx.stats[k]["packets"] == 0 for k in drops),
        f"{', '.join(drops)} all 0",
        ", ".join(f"{k}={v['packets']}" for k, v in cx.stats.items() if v["packets"]),
    )


def fast_path_translates(cx: Context) -> CheckResult:
    ways = ("out_snat", "in_snat", "out_static", "in_static")
    return CheckResult(
        "XDP fast path: flows translated and forwarded at XDP both ways",
        all(cx.fast[k]["packets"] > 0 for k in ways),
        f"{', '.join(ways)} all above 0",
        ", ".join(f"{k}={v['packets']}" for k, v in cx.fast.items() if v["packets"]),
    )


def fast_path_passes_new_flows(cx: Context) -> CheckResult:
    passed, created = cx.fast["pass_no_flow"]["packets"], cx.stats["out_snat_new"]["packets"]
    return CheckResult(
        "XDP fast path: new flows went up to the tc NAT",
        passed > 0 and created > 0,
        "pass_no_flow and out_snat_new above 0",
        f"passed up for want of a flow: {passed}; created by the tc NAT: {created}",
    )


# ---------------------------------------------------------------- the table
class Step(NamedTuple):
    """A line of the table: CHECKS run in order, each as f(cx), or, when PER_CLIENT, all of
    them as f(cx, i) for client 1, then for client 2, ...; left out where APPLIES(cx) is false."""

    checks: tuple[Callable[..., CheckResult], ...]
    per_client: bool = False
    applies: Callable[[Context], bool] = lambda cx: True


TRAFFIC = [
    Step((ping_reaches_server,), per_client=True),
    Step((udp_every_datagram_arrives, udp_seen_as_snat, udp_distinct_outside_ports, udp_replies_reach_sender)),
    Step((tcp_transfer_intact, tcp_seen_as_snat), per_client=True),
    Step(
        (
            icmp_port_unreachable,
            icmp_port_unreachable_to_server,
            icmp_time_exceeded,
            tcp_many_connections,
            udp_fragmented_whole,
            ipv4_options_carried,
        )
    ),
    Step((flow_table_udp, flow_table_icmp), applies=lambda cx: cx.in_ebpf),
]
#: run with `static_mapping` in place, the eBPF NAT only
STATIC = [
    Step((static_reaches_c1, static_c1_leaves_as_outside)),
    Step((hairpin_refused,), applies=lambda cx: cx.lab.clients >= 2),
    Step((static_port_unreachable, static_mapping_counted)),
]
AFTERWARDS = [
    Step((capture_no_inside_address,)),
    # with offloads on, a rewritten packet may carry a partial checksum on the wire
    Step((capture_checksums_verify,), applies=lambda cx: cx.lab.offloads in ("mixed", "off")),
    Step((kernel_checksum_errors,)),
    Step((nothing_untranslatable,), applies=lambda cx: cx.stats is not None),
    Step((fast_path_translates, fast_path_passes_new_flows), applies=lambda cx: cx.fast is not None),
]


def run_table(table: list[Step], cx: Context) -> list[CheckResult]:
    out = []
    for step in table:
        if step.applies(cx):
            for args in [(i,) for i in cx.clients] if step.per_client else [()]:
                out += [check(cx, *args) for check in step.checks]
    return out


def checksum_counters(cx: Context) -> dict:
    """CSUM_COUNTERS of the server and every client, by host name."""
    return {
        h.name: measure.snmp_probe(h, CSUM_COUNTERS)() for h in [cx.lab.server] + [cx.lab.client(i) for i in cx.clients]
    }


def run_checks(
    lab: NatLab, nat: Nat | None, variant: str = "tc_nat", iptables_target: str = "MASQUERADE"
) -> list[CheckResult]:
    """The table run through the NAT VARIANT, in order: see the module's docstring."""
    cx = Context(lab, nat, variant)
    cx.before = checksum_counters(cx)
    with lab.variant(variant, nat, iptables_target) as cx.path, capture(lab.server, lab.server_iface.name) as frames:
        results = run_table(TRAFFIC, cx)
        if cx.in_ebpf:
            with static_mapping(cx):
                results += run_table(STATIC, cx)
        cx.stats = nat.stats() if cx.in_ebpf else None
        cx.fast = cx.path.stats() if variant == "xdp_nat" else None
    cx.captured = [packets.parse(f) for f in frames()]
    cx.after = checksum_counters(cx)
    return results + run_table(AFTERWARDS, cx)


def check_correctness(
    lab: NatLab, nat: Nat | None, variant: str = "tc_nat", iptables_target: str = "MASQUERADE"
) -> list[dict]:
    """Run the correctness checks through the NAT VARIANT ('tc_nat': the tc NAT; 'xdp_nat':
    the XDP fast path over it; 'iptables': netfilter's NAT, NAT unused); one dict per check
    (check, ok, detail, offloads, variant). The traffic checks are the same for every
    variant; the eBPF NAT's own state (flows, mappings, counters) is checked where there
    is one. Nothing is asserted here: the caller decides."""
    return [r.to_dict(variant, lab.offloads) for r in run_checks(lab, nat, variant, iptables_target)]
