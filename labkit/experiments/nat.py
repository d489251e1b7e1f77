"""The eBPF NAT experiment: is the NAT correct with real traffic, and what does it cost
next to netfilter's NAT?

Testbed (`NatLab`): inside hosts c1..cN, each on its own /24 of the inside network
10.20.0.0/16, routed by host `nat` (one inside port per client, one outside port) to
host `srv` on the outside network 198.51.100.0/24. The NAT host's outside address
198.51.100.1 is the SNAT address.

1. Correctness, with the eBPF NAT attached (`check_correctness`): ping, a UDP exchange in
   which every inside host uses the same source port, a TCP transfer, a static 1:1
   mapping used in both directions; a capture in the server's namespace shows only
   translated addresses, every captured checksum verifies (when the NAT's ports compute
   checksums in software, see `offloads`), the kernels' checksum error counters stay 0,
   and the flow table holds every flow with counters in both directions.
2. Performance, side by side in one run, several trials, rotating order, each variant on a
   freshly built testbed (netfilter's NAT leaves connection tracking hooked into a
   namespace once used, which would tax whatever ran after it):
   - ``routing``: no NAT, plain forwarding (the server routes the inside network back);
   - ``ebpf``: the eBPF NAT at tc clsact on the outside port;
   - ``iptables``: netfilter NAT (MASQUERADE, or SNAT --to-source) in nat/POSTROUTING.
   Small-packet UDP (trafgen from c1, many flows) gives packets per second and CPU time per
   packet; TCP (iperf3 c1 -> srv) gives throughput and CPU time per kilobyte.
   The eBPF programs' own time per packet is read from the kernel's BPF run-time
   statistics (BPF_ENABLE_STATS) in a separate trial, so it does not tax the others.

`offloads` is recorded with every row:
- ``mixed`` (default): veth checksum offload on at the clients and the server, off on the
  NAT's ports. Senders hand the NAT packets with partial checksums (CHECKSUM_PARTIAL), the
  NAT rewrites them, and the NAT's ports then compute the final checksums in software,
  which the receivers verify: a NAT that mishandled partial checksums is caught here.
- ``off``: every veth computes full checksums; the NAT updates complete checksums.
- ``on``: veth defaults; partial checksums end to end, which no receiver verifies.
"""
from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import socket
import struct
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from .. import bpf, hosts, lifecycle, measure, netfilter, packets, progress, results, topology, traffic
from . import check_run_shape
from ..errors import InputError, LabkitError
from ..nat import Nat, check_port_range

EXPERIMENT = "nat"
VARIANTS = ["routing", "ebpf", "iptables"]
OFFLOADS = ("mixed", "off", "on")
INSIDE_NET = "10.20.0.0/16"
OUTSIDE_NET = "198.51.100.0/24"
NAT_OUTSIDE = "198.51.100.1"
SERVER = "198.51.100.2"
STATIC_OUTSIDE = "198.51.100.10"
MAX_CLIENTS = 8


def client_addr(i: int) -> str:
    return f"10.20.{i}.2"


def spec(clients: int = 2, offloads: str = "mixed") -> topology.TopologySpec:
    """clients c1..cN -> nat -> srv, as data."""
    if not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        raise InputError(f"clients {clients!r}: a whole number 1..{MAX_CLIENTS}")
    if offloads not in OFFLOADS:
        raise InputError(f"offloads {offloads!r}: choose one of {OFFLOADS}")
    names = [f"c{i}" for i in range(1, clients + 1)]
    links = [topology.LinkSpec(f"c{i}", "nat", f"{client_addr(i)}/24", f"10.20.{i}.1/24",
                               a_name=f"c{i}", b_name=f"in{i}") for i in range(1, clients + 1)]
    links.append(topology.LinkSpec("nat", "srv", f"{NAT_OUTSIDE}/24", f"{SERVER}/24", a_name="out", b_name="srv"))
    return topology.TopologySpec(hosts=names + ["nat", "srv"], links=links,
                                 offloads={"tx": "off"} if offloads == "off" else {}, forwarding=["nat"],
                                 routes=[(f"c{i}", "default", f"10.20.{i}.1") for i in range(1, clients + 1)])


class NatLab:
    """The built testbed with forwarding and routes in place. A context manager: exit
    removes everything (the namespaces take their sysctls, routes and addresses along).
    NAT variants are context managers on top: `ebpf(nat)`, `iptables()`, `routing()`."""

    def __init__(self, clients: int = 2, offloads: str = "mixed"):
        self.spec = spec(clients, offloads)
        self.clients, self.offloads = clients, offloads
        self.topo: topology.Topology | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> "NatLab":
        self._stack = ExitStack()
        try:
            self.topo = self._stack.enter_context(topology.Topology(self.spec))
            nat = self.topo.host("nat")
            if self.offloads == "mixed":  # the NAT's ports finish partial checksums in software
                for i in range(1, self.clients + 1):
                    nat.run(["ethtool", "-K", self.inside(i).name, "tx", "off"], timeout=10)
                nat.run(["ethtool", "-K", self.outside.name, "tx", "off"], timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    # ---- access
    def client(self, i: int) -> hosts.Host:
        return self.topo.host(f"c{i}")

    def client_iface(self, i: int) -> topology.Interface:
        return self.topo.iface(f"c{i}", "nat")

    def inside(self, i: int) -> topology.Interface:
        return self.topo.iface("nat", f"c{i}")

    @property
    def outside(self) -> topology.Interface:
        return self.topo.iface("nat", "srv")

    @property
    def server(self) -> hosts.Host:
        return self.topo.host("srv")

    @property
    def server_iface(self) -> topology.Interface:
        return self.topo.iface("srv", "nat")

    # ---- variants
    @contextmanager
    def routing(self):
        """No NAT: the server routes the inside network back through the NAT host."""
        with topology.route(self.server, INSIDE_NET, NAT_OUTSIDE):
            yield None

    @contextmanager
    def ebpf(self, nat: Nat):
        nat.clear_flows()
        with nat.attach(self.outside):
            yield nat

    @contextmanager
    def iptables(self, target: str = "MASQUERADE"):
        args = ["-s", INSIDE_NET, "-o", self.outside.name, "-j", target]
        if target == "SNAT":
            args += ["--to-source", NAT_OUTSIDE]
        with netfilter.rule(self.topo.host("nat"), "nat", "POSTROUTING", *args) as rule:
            yield rule

    def variant(self, name: str, nat: Nat | None = None, iptables_target: str = "MASQUERADE"):
        if name == "routing":
            return self.routing()
        if name == "ebpf":
            return self.ebpf(nat)
        if name == "iptables":
            return self.iptables(iptables_target)
        raise InputError(f"variant {name!r}: choose from {VARIANTS}")


# ---------------------------------------------------------------- captures
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


# ---------------------------------------------------------------- correctness
def _udp_socket(host: hosts.Host, port: int) -> socket.socket:
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(3.0)
    return s


def udp_exchange(lab: NatLab, sport: int = 40000, dport: int = 7777) -> dict:
    """Every client sends one datagram from the same source port; the server echoes each
    to whoever it saw. Returns what the server saw and what each client got back."""
    seen, got = {}, {}
    srv = _udp_socket(lab.server, dport)
    socks = {}
    try:
        for i in range(1, lab.clients + 1):
            socks[i] = _udp_socket(lab.client(i), sport)
        for i, s in socks.items():
            s.sendto(f"hello from c{i}".encode(), (SERVER, dport))
            try:
                data, peer = srv.recvfrom(2048)
            except socket.timeout:  # never arrived (or the server's kernel refused it)
                continue
            seen[data.decode()] = peer
            srv.sendto(b"echo: " + data, peer)
        for i, s in socks.items():
            try:
                got[i] = s.recvfrom(2048)[0].decode()
            except socket.timeout:
                got[i] = None
    finally:
        srv.close()
        for s in socks.values():
            s.close()
    return {"seen": seen, "got": got}


def tcp_transfer(lab: NatLab, i: int, nbytes: int = 512 * 1024, port: int = 7778) -> dict:
    """Client i sends NBYTES over TCP to the server; the server hashes what arrives."""
    with lab.server.entered():
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(5.0)
    payload = os.urandom(nbytes)
    result = {}

    def serve():
        try:
            conn, peer = ls.accept()
            conn.settimeout(10.0)
            h, n = hashlib.sha256(), 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            conn.close()
            result.update(peer=peer, sha256=h.hexdigest(), bytes=n)
        except OSError as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with lab.client(i).entered():
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(10.0)
        try:
            c.connect((SERVER, port))
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
        except OSError as exc:
            result["error"] = f"client: {exc}"
        finally:
            c.close()
        t.join(15)
    finally:
        ls.close()
    result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    return result


def check_correctness(lab: NatLab, nat: Nat) -> list[dict]:
    """Run the correctness checks with the eBPF NAT attached; one dict per check
    (check, ok, detail). Nothing is asserted here: the caller decides."""
    checks = []

    def add(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    verify_capture = lab.offloads in ("mixed", "off")
    watched = [lab.server] + [lab.client(i) for i in range(1, lab.clients + 1)]
    before = {h.name: snmp(h) for h in watched}
    with lab.ebpf(nat), capture(lab.server, lab.server_iface.name) as captured:
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
        # static 1:1 mapping, both directions
        nat.add_mapping(client_addr(1), STATIC_OUTSIDE)
        try:
            with topology.address(lab.topo.host("nat"), lab.outside.name, f"{STATIC_OUTSIDE}/32"):
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
            m = {x.inside: x for x in nat.mappings()}.get(client_addr(1))
            add("static: mapping counted both ways", m is not None and m.out_packets > 0 and m.in_packets > 0,
                f"{m}")
        finally:
            nat.remove_mapping(client_addr(1))
        stats = nat.stats()
    frames = captured()
    after = {h.name: snmp(h) for h in watched}
    # what the server's wire saw
    inbound = [packets.parse(f) for f in frames]
    inbound = [p for p in inbound if p.dst_ip == SERVER]
    leaked = [p for p in inbound if p.src_ip and ipaddress.IPv4Address(p.src_ip) in ipaddress.IPv4Network(INSIDE_NET)]
    add("capture: no inside address reaches the server", inbound and not leaked,
        f"{len(inbound)} packets to the server; sources {sorted({p.src_ip for p in inbound})}")
    if verify_capture:
        bad = [p for p in inbound if p.ip_checksum_ok is False or p.l4_checksum_ok is False]
        add("capture: every checksum the server got verifies", not bad,
            f"{len(inbound) - len(bad)}/{len(inbound)} packets with valid IPv4 and TCP/UDP/ICMP checksums")
    errors = {h: {f"{p}:{n}": after[h].get((p, n), 0) - before[h].get((p, n), 0) for p, n in CSUM_COUNTERS}
              for h in before}
    add("kernel checksum error counters stay 0 (server and clients)",
        all(v == 0 for e in errors.values() for v in e.values()),
        "; ".join(f"{h}: " + ", ".join(f"{k}={v}" for k, v in e.items() if v) or f"{h}: 0" for h, e in errors.items()))
    add("program outcomes: nothing dropped as untranslatable",
        all(stats[k]["packets"] == 0 for k in ("drop_no_port", "drop_table_full", "drop_rewrite_failed")),
        ", ".join(f"{k}={v['packets']}" for k, v in stats.items() if v["packets"]))
    for c in checks:
        c["offloads"] = lab.offloads
    return checks


# ---------------------------------------------------------------- performance
@dataclass
class Params:
    clients: int = 2
    trials: int = 3
    variants: list = field(default_factory=lambda: list(VARIANTS))
    offloads: str = "mixed"
    udp_size: int = 64
    udp_count: int = 500_000
    udp_flows: int = 16
    generator: str = "auto"  # the in-kernel generator where it works, else trafgen
    tcp_seconds: float = 3.0
    iptables_target: str = "MASQUERADE"
    port_range: list = field(default_factory=lambda: [20000, 29999])
    checks: bool = True
    prog_stats: bool = True
    timeout_s: float = 60.0
    progress: bool = True  # a text progress bar on stderr
    smoke: bool = False

    def validate(self) -> "Params":
        if self.smoke:
            self.trials = 1
            self.udp_count = min(self.udp_count, 30_000)
            self.tcp_seconds = min(self.tcp_seconds, 1.0)
        spec(self.clients, self.offloads)
        check_run_shape(self.variants, VARIANTS, self.trials, [self.udp_size], self.udp_count, "udp_count")
        if not isinstance(self.udp_flows, int) or not 1 <= self.udp_flows <= 200:
            raise InputError(f"udp_flows {self.udp_flows!r}: 1..200 (trafgen varies one byte of the port)")
        if not self.tcp_seconds or self.tcp_seconds < 0.5 or self.tcp_seconds > 60:
            raise InputError(f"tcp_seconds {self.tcp_seconds!r}: 0.5..60")
        if self.iptables_target not in ("MASQUERADE", "SNAT"):
            raise InputError(f"iptables_target {self.iptables_target!r}: MASQUERADE or SNAT")
        self.port_range = list(check_port_range(tuple(self.port_range)))
        return self


@dataclass
class Result:
    table: object  # tidy DataFrame
    summary: object  # wide: mean per variant and measure
    spread: object  # long: mean/std/min/max/spread_pct
    checks: object  # correctness checks (check, ok, detail, offloads)
    flows: object  # the flow table at the end of the correctness checks
    interpretation: str
    run_dir: object
    caveats: list
    params: Params

    def headline(self):
        return headline(self.table)


def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`."""
    import pandas as pd

    p = Params(**kwargs).validate()
    lifecycle.require_root("the eBPF NAT experiment")
    for tool, pkg in (("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3")):
        hosts.which(tool, pkg)
    checks, flows = [], pd.DataFrame()
    with ExitStack() as stack:
        nat = stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(p.port_range)))
        rs = None
        if p.checks:
            with NatLab(p.clients, p.offloads) as lab:
                rs = results.ResultSet(EXPERIMENT, asdict(p), lab.topo.run.prefix, data_dir)
                checks = check_correctness(lab, nat)
                flows = nat.flows_table()
                topo_meta = lab.topo.metadata()  # while the testbed exists
        clock = stack.enter_context(measure.SoftirqClock())
        bar = stack.enter_context(progress.bar(p.trials * len(p.variants), "nat trials", p.progress))
        for trial in range(p.trials):
            order = p.variants[trial % len(p.variants):] + p.variants[: trial % len(p.variants)]
            udp = []
            for variant in order:
                with NatLab(p.clients, p.offloads) as lab:
                    if rs is None:
                        rs = results.ResultSet(EXPERIMENT, asdict(p), lab.topo.run.prefix, data_dir)
                        topo_meta = lab.topo.metadata()
                    with lab.variant(variant, nat, p.iptables_target):
                        _warm_up(lab)
                        udp.append((variant, _udp_trial(lab, p, clock)))
                        _tcp_trial(lab, p, variant, trial, rs, clock)
                bar.update()
            measure.mark_generator_limited([m for _, m in udp])
            for variant, m in udp:
                rs.add_measurement(variant, trial, m, kind="udp", offloads=p.offloads, flows=p.udp_flows)
        if p.prog_stats and "ebpf" in p.variants:
            with NatLab(p.clients, p.offloads) as lab, lab.ebpf(nat):
                _warm_up(lab)
                _program_time(lab, nat, p, rs)
        for c in checks:
            rs.add("ebpf", 0, None, {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}, kind="check",
                   offloads=p.offloads)
        _caveats(rs, p)
        run_dir = rs.save(None, {"topology": topo_meta, "checks": checks, "nat": {"inside": INSIDE_NET, "outside": OUTSIDE_NET,
                                                                "snat_address": NAT_OUTSIDE, "port_range": p.port_range}})
    table = rs.table
    perf = table[table["kind"] != "check"] if "kind" in table.columns else table
    spread = results.summarize(perf, by=("variant",))
    summary = results.wide(spread, by=("variant",))
    checks_df = pd.DataFrame(checks, columns=["check", "ok", "detail", "offloads"])
    return Result(table, summary, spread, checks_df, flows, interpret(table, checks_df), run_dir, rs.caveats, p)


def _warm_up(lab: NatLab) -> None:
    """Resolve neighbours along the path before anything is measured."""
    for i in range(1, lab.clients + 1):
        lab.client(i).run(["ping", "-c", "1", "-W", "2", SERVER], check=False, timeout=10)


def _udp_trial(lab: NatLab, p: Params, clock) -> measure.Measurement:
    src, nat_in, out, srv = lab.client_iface(1), lab.inside(1), lab.outside, lab.server_iface
    spec_ = traffic.TrafficSpec(src.mac, nat_in.mac, client_addr(1), SERVER, size=p.udp_size, count=p.udp_count,
                                flows=p.udp_flows, sport=1024, dport=9, timeout_s=p.timeout_s).validate()
    with traffic.generator(p.generator, src) as gen:
        out_probe = measure.link_probe(out, ethtool=False)
        m = measure.run_trial(lambda: gen.send(spec_), lambda: out_probe()["tx_packets"], size=p.udp_size,
                              probes={"client": measure.link_probe(src), "nat_in": measure.link_probe(nat_in),
                                      "nat_out": measure.link_probe(out), "srv": measure.link_probe(srv)},
                              offered_probe=("client", "tx_packets"), clock=clock)
    return m


def _iperf(lab: NatLab, seconds: float, port: int = 5201):
    """One iperf3 TCP stream c1 -> srv; the client's completed process."""
    with lab.server.spawn(["iperf3", "-s", "-1", "-p", str(port)], name="iperf3-server") as server:
        deadline = time.monotonic() + 5
        while "listening" not in server.output().lower() and time.monotonic() < deadline:
            time.sleep(0.05)
        return lab.client(1).run(["iperf3", "-c", SERVER, "-p", str(port), "-t", str(seconds), "-J"],
                                 check=False, timeout=seconds + 30)


def _tcp_trial(lab: NatLab, p: Params, variant: str, trial: int, rs: results.ResultSet, clock) -> None:
    out0 = lab.outside.stats()
    c0, s0 = measure.cpu_times(), clock.seconds()
    cp = _iperf(lab, p.tcp_seconds)
    c1, s1 = measure.cpu_times(), clock.seconds()
    out1 = lab.outside.stats()
    try:
        res = json.loads(cp.stdout)
        end = res["end"]
        bps = end["sum_received"]["bits_per_second"]
        nbytes = end["sum_received"]["bytes"]
        secs = end["sum_received"]["seconds"]
    except (ValueError, KeyError) as exc:
        raise LabkitError(f"iperf3 through the {variant} NAT failed: {cp.stdout[-800:]}{cp.stderr[-400:]}") from exc
    cpu = c1 - c0
    kb = nbytes / 1000
    rs.add(variant, trial, 1514, {
        "tcp_mbps": (bps / 1e6, "Mbit/s"),
        "tcp_bytes": (nbytes, "bytes"),
        "tcp_seconds": (secs, "s"),
        "tcp_nat_out_skbs": (out1["tx_packets"] - out0["tx_packets"], "packets"),
        "tcp_cpu_busy_s": (cpu.busy, "s"),
        "tcp_cpu_ns_per_kb": (cpu.busy / kb * 1e9 if kb else float("nan"), "ns/kB"),
        "tcp_net_rx_ns_per_kb": ((s1 - s0) / kb * 1e9 if kb else float("nan"), "ns/kB"),
    }, kind="tcp", offloads=p.offloads, flows=1)


@contextmanager
def bpf_run_time_stats():
    """Turn on the kernel's BPF run-time statistics (BPF_ENABLE_STATS) while in the `with`;
    the kernel turns them off again when the last holder closes its descriptor, so this
    never clobbers another user's setting (unlike the kernel.bpf_stats_enabled sysctl)."""
    lib = bpf.libbpf()
    lib.bpf_enable_stats.argtypes = [ctypes.c_int]
    lib.bpf_enable_stats.restype = ctypes.c_int
    fd = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise LabkitError(f"BPF_ENABLE_STATS failed ({os.strerror(-fd)})")
    try:
        yield
    finally:
        os.close(fd)


def prog_run_stats(fn) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo."""
    vals = {}
    for line in open(f"/proc/self/fdinfo/{fn.fd}"):
        k, _, v = line.partition(":")
        vals[k.strip()] = v.strip()
    return int(vals.get("run_time_ns", 0)), int(vals.get("run_cnt", 0))


def _program_time(lab: NatLab, nat: Nat, p: Params, rs: results.ResultSet) -> None:
    """The NAT programs' own time per packet on the real path (kernel BPF statistics)."""
    src, nat_in = lab.client_iface(1), lab.inside(1)
    count = max(10_000, p.udp_count // 2)
    spec_ = traffic.TrafficSpec(src.mac, nat_in.mac, client_addr(1), SERVER, size=p.udp_size, count=count,
                                flows=p.udp_flows, sport=1024, dport=9, timeout_s=p.timeout_s).validate()
    fns = {"nat_egress": nat.egress_function(), "nat_ingress": nat.ingress_function()}
    with bpf_run_time_stats(), traffic.generator(p.generator, src) as gen:
        windows = {}
        before = prog_run_stats(fns["nat_egress"])
        gen.send(spec_)  # UDP: the egress program translates every packet
        windows["nat_egress"] = (before, prog_run_stats(fns["nat_egress"]))
        before = prog_run_stats(fns["nat_ingress"])
        _iperf(lab, 1.0)  # TCP: the ingress program translates the ACKs coming back
        windows["nat_ingress"] = (before, prog_run_stats(fns["nat_ingress"]))
    for name, (b, a) in windows.items():
        dt, dn = a[0] - b[0], a[1] - b[1]
        rs.add("ebpf", 0, p.udp_size, {f"prog_ns_per_pkt:{name}": (dt / dn if dn else float("nan"), "ns/packet"),
                                       f"prog_runs:{name}": (dn, "packets")}, kind="prog", offloads=p.offloads)


def _caveats(rs: results.ResultSet, p: Params) -> None:
    rs.caveat("namespace testbed: clients, NAT and server share this machine's CPUs; CPU time is the whole "
              "machine's (the NAT's share is the difference between variants), so compare variants as ratios "
              "within this run, not as absolute numbers")
    rs.caveat("each variant ran on a freshly built testbed, so netfilter's connection tracking (hooked into a "
              "namespace once its NAT table is used) did not tax the variants after it")
    if p.offloads == "on":
        rs.caveat("offloads=on: packets carry partial checksums end to end and no receiver verifies them; "
                  "use offloads='mixed' or 'off' to check checksums")


def headline(table):
    import pandas as pd

    rows = []
    perf = table[table["kind"].isin(["udp", "tcp"])] if "kind" in table.columns else table
    for variant, g in perf.groupby("variant", sort=False):
        def stat(measure_, f="mean"):
            v = g[g["measure"] == measure_]["value"]
            return getattr(v, f)() if len(v) else float("nan")
        rows.append({
            "variant": variant,
            "UDP Mpps": stat("processed_pps") / 1e6,
            "UDP min..max": f"{stat('processed_pps', 'min') / 1e6:.3f}..{stat('processed_pps', 'max') / 1e6:.3f}",
            "offered Mpps": stat("offered_pps") / 1e6,
            "UDP NET_RX ns/pkt": stat("cpu_ns_per_pkt"),
            "UDP CPU ns/pkt (all)": stat("system_cpu_ns_per_pkt"),
            "TCP Mbit/s": stat("tcp_mbps"),
            "TCP min..max": f"{stat('tcp_mbps', 'min'):.0f}..{stat('tcp_mbps', 'max'):.0f}",
            "TCP NET_RX ns/kB": stat("tcp_net_rx_ns_per_kb"),
            "TCP CPU ns/kB (all)": stat("tcp_cpu_ns_per_kb"),
            "trials": int((g["measure"] == "processed_pps").sum()),
        })
    out = pd.DataFrame(rows)
    return out.round({"UDP Mpps": 3, "offered Mpps": 3, "UDP NET_RX ns/pkt": 0, "UDP CPU ns/pkt (all)": 0,
                      "TCP Mbit/s": 0, "TCP NET_RX ns/kB": 0, "TCP CPU ns/kB (all)": 0})


def _ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def interpret(table, checks) -> str:
    """Sentences computed from the data: correctness, then eBPF vs iptables and vs routing."""
    lines = []
    if checks is not None and len(checks):
        failed = checks[~checks["ok"]]
        lines.append(f"Correctness: {int(checks['ok'].sum())} of {len(checks)} checks passed with real traffic "
                     f"(offloads={checks['offloads'].iloc[0]})" + ("." if failed.empty else
                     "; FAILED: " + "; ".join(failed["check"]) + "."))

    def means(measure_):
        t = table[table["measure"] == measure_]
        return t.groupby("variant")["value"].agg(["mean", "min", "max"])

    pps, cpu, tcp = means("processed_pps"), means("cpu_ns_per_pkt"), means("tcp_mbps")
    if "ebpf" in pps.index and "iptables" in pps.index:
        e, i = pps.loc["ebpf"], pps.loc["iptables"]
        lines.append(f"Small-packet UDP: eBPF NAT {e['mean'] / 1e6:.3f} Mpps (trials {e['min'] / 1e6:.3f}–{e['max'] / 1e6:.3f}) "
                     f"vs iptables NAT {i['mean'] / 1e6:.3f} Mpps ({i['min'] / 1e6:.3f}–{i['max'] / 1e6:.3f}): "
                     f"{_ratio(e['mean'], i['mean']):.2f}× the rate.")
        if "ebpf" in cpu.index and "iptables" in cpu.index:
            ce, ci = cpu.loc["ebpf", "mean"], cpu.loc["iptables", "mean"]
            lines.append(f"CPU per packet in the receive path (NET_RX softirq time, all CPUs): eBPF {ce:.0f} ns vs iptables {ci:.0f} ns "
                         f"({_ratio(ce, ci):.2f}×).")
        if "routing" in pps.index:
            r = pps.loc["routing", "mean"]
            lines.append(f"Against plain forwarding ({r / 1e6:.3f} Mpps): eBPF keeps {_ratio(e['mean'], r):.0%}, "
                         f"iptables {_ratio(i['mean'], r):.0%} of the rate.")
        offered = table[table["measure"] == "offered_pps"]["value"].mean()
        limited = table[(table["measure"] == "processed_pps") & table["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]
        if len(limited):
            lines.append(f"Generator-limited in some trials ({', '.join(sorted(set(limited['variant'])))}): the NAT "
                         f"forwarded (nearly) all of the offered {offered / 1e6:.3f} Mpps there, so those rates are lower "
                         "bounds; CPU per packet is the better comparison.")
    if "ebpf" in tcp.index and "iptables" in tcp.index:
        e, i = tcp.loc["ebpf"], tcp.loc["iptables"]
        lines.append(f"TCP (iperf3, one stream): eBPF {e['mean']:.0f} Mbit/s ({e['min']:.0f}–{e['max']:.0f}) vs iptables "
                     f"{i['mean']:.0f} Mbit/s ({i['min']:.0f}–{i['max']:.0f}): {_ratio(e['mean'], i['mean']):.2f}×.")
        kb = means("tcp_net_rx_ns_per_kb")
        if "ebpf" in kb.index and "iptables" in kb.index:
            lines.append(f"TCP receive-path CPU per kB: eBPF {kb.loc['ebpf', 'mean']:.0f} ns vs iptables "
                         f"{kb.loc['iptables', 'mean']:.0f} ns ({_ratio(kb.loc['ebpf', 'mean'], kb.loc['iptables', 'mean']):.2f}×).")
    prog = table[table["measure"].str.startswith("prog_ns_per_pkt:")]
    if len(prog):
        lines.append("The eBPF programs' own time per packet on the real path: "
                     + ", ".join(f"{m.split(':', 1)[1]} {v:.0f} ns" for m, v in zip(prog["measure"], prog["value"])) + ".")
    return "\n".join(lines) if lines else "Nothing was measured."


# ---------------------------------------------------------------- interactive use
class LiveNat:
    """The testbed with the eBPF NAT attached, kept up across notebook cells for the
    mapping editor and the live flow table, until `close()` (also at interpreter exit;
    after a killed kernel, `labkit clean` removes what is left).

        live = LiveNat(clients=2)
        live.traffic()                     # pings and a UDP exchange from every client
        nat_widgets.flow_view(live.nat)
        live.close()
    """

    def __init__(self, clients: int = 2, offloads: str = "mixed", port_range=(20000, 29999)):
        import atexit

        self._stack = ExitStack()
        try:
            self.nat = self._stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(port_range)))
            self.lab = self._stack.enter_context(NatLab(clients, offloads))
            self._stack.enter_context(self.lab.ebpf(self.nat))
            # the static mappings' outside addresses are answered by the NAT's outside port
            for i in range(1, MAX_CLIENTS + 1):
                self._stack.enter_context(topology.address(self.lab.topo.host("nat"), self.lab.outside.name,
                                                   f"198.51.100.{9 + i}/32"))
        except BaseException:
            self._stack.close()
            raise
        atexit.register(self.close)

    def traffic(self) -> dict:
        """Some traffic through the NAT: a ping from every client, and a UDP exchange."""
        for i in range(1, self.lab.clients + 1):
            self.lab.client(i).run(["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        return udp_exchange(self.lab)

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
