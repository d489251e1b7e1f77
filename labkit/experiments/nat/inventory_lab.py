"""The NAT experiment's testbed on an inventory's hosts: the client on the sender, the
NAT on the DUT, the server on the receiver (`InventoryNat`; `testbed.NamespaceNat` is
the same on namespaces, and the experiment's one run takes either).

The DUT names two data-plane interfaces, `labkit_interfaces: [IN, OUT]` (IN faces the
client, OUT the server); the client and the server one each. Every address comes from
the hosts' interfaces as configured there: the inside network is IN's, the outside
network OUT's, and OUT's address is the SNAT address. The client must share IN's
network and the server OUT's; the DUT must forward IPv4. All of it is checked before
anything is changed on any host.

What labkit changes, each held open on its host for as long as the local `with` lasts
(`bed.hold`), so it is undone on any exit and recorded in that host's session for
`labkit clean --inventory`:
- on the client, a route to the server's address through IN (unless it routes so already);
- on the DUT, each variant on IN and OUT (`testbed.on_nat_host`, as on namespaces);
- on the server, two iptables rules in the raw table counting UDP to the flood's port,
  each read by its own comment: from the expected source (the SNAT address; the
  client's own for `routing` and `xdp_routing`, which also get the server's route back
  through OUT) counted and dropped, and from any source counted. Translated packets are
  those of the first (`processed_pkts`); the second's count less the first's is what
  came from any other source (`server_other_source`: untranslated or wrongly rewritten);
- for the XDP variants, where the client's or the server's port is a veth, an XDP_PASS
  program there (a frame redirected into a veth is delivered only when its peer has one)
  and full checksums (tx checksum offload off) while they run.

Per NAT variant the checks are a ping and a UDP exchange (the server echoes; every
datagram must arrive from the SNAT address and come back); the trials are small-packet
UDP from the client's generator (trafgen where `auto`), counted at the server. CPU is
not measured across hosts (blank, with a caveat); TCP, new flows, the sweep and the
programs' own time run on one machine only.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from contextlib import ExitStack, contextmanager

from labkit.errors import InputError
from labkit.testbed.undo import Undoable

ROLES = ("sender", "dut", "receiver")  # client, NAT, server
ROUTING = ("routing", "xdp_routing")  # no translation: the server routes the client back
FLOOD_PORT = 9
ECHO_PORT, ECHO_SPORT, ECHO_COUNT = 7777, 40000, 5


class InventoryNat(Undoable):
    """The NAT testbed on an inventory's hosts, for Params P: connected, every address read
    and checked before anything changes; the client's route and generator held for the run.
    BED: another testbed with the same roles (a namespace one, or one with a VM as the DUT),
    entered by the caller and left to it."""

    local = False
    checks_first = False  # after the trials: iptables' checks hook connection tracking into the DUT for good
    offloads = "as on the hosts"  # `offloads` is not applied: the hosts' own settings
    clock = None  # this machine's CPU is no host's (a caller whose DUT is here may set a softirq clock)
    #: a caller's CPU reading around each send alone (a callable starting it, returning one that
    #: ends it with {part: seconds}); the last send's reading is in `sent_cpu`
    send_window = None
    sent_cpu: dict = {}

    def __init__(self, p, bed=None):
        from labkit.experiments import across_hosts
        from labkit.testbed.inventory import Testbed

        self.p, self.owns_bed = p, bed is None
        self.generator = "trafgen" if p.generator == "auto" else p.generator  # xdpgen needs its veth peer here
        xdp = any(v.startswith("xdp") for v in p.variants)
        tools = {
            "sender": across_hosts.GENERATOR_TOOLS.get(self.generator, []) + ["ping"] + (["python:bcc"] if xdp else []),
            "dut": ["python:bcc", "iptables"],
            "receiver": ["iptables"] + (["python:bcc"] if xdp else []),
        }
        self.bed = bed or Testbed(p.inventory, ROLES, tools, two_interfaces=("dut",))
        self.prefix, self.flows = self.bed.prefix, None
        self.place = getattr(getattr(self.bed, "inventory", None), "path", None) or "the testbed"

    def _open(self, stack) -> None:
        import pandas as pd

        from labkit.experiments import across_hosts

        if self.owns_bed:  # else the caller's, entered already, for longer than the NAT
            stack.enter_context(self.bed)
        self._read_addresses()
        stack.enter_context(self.bed.hold("sender", route, self.server.address, self.inside.address))
        self.gen = stack.enter_context(across_hosts.open_generator(self.bed, self.generator))
        self.flows = pd.DataFrame()

    def _read_addresses(self) -> None:
        bed = self.bed
        self.client, self.server = bed.end("sender"), bed.end("receiver")
        self.dut = bed.host("dut")
        self.inside, self.outside = bed.end("dut", 0), bed.end("dut", 1)
        where = {"client": self.client, "server": self.server, "NAT inside": self.inside, "NAT outside": self.outside}
        for role, end in where.items():
            if not end.address:
                raise InputError(
                    f"{self.place}: interface {end.name} of host {end.host.name} ({role}) has no "
                    "IPv4 address: configure one there (the NAT's networks are read from the interfaces)"
                )
        self.inside_net, self.outside_net = _network(self.inside), _network(self.outside)
        for end, net, side in ((self.client, self.inside_net, "inside"), (self.server, self.outside_net, "outside")):
            if ipaddress.ip_address(end.address) not in net:
                raise InputError(
                    f"{self.place}: {end.host.name}'s address {end.address} ({end.name}) is not "
                    f"on the NAT's {side} network {net} ({self.dut.name}): address them on one network"
                )
        if self.inside_net.overlaps(self.outside_net):
            raise InputError(
                f"{self.place}: the NAT's inside network {self.inside_net} and outside network "
                f"{self.outside_net} overlap on {self.dut.name}: a NAT needs them apart"
            )
        if self.dut.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() != "1":
            raise InputError(
                f"host {self.dut.name} (role dut) does not forward IPv4 (net.ipv4.ip_forward = 0): a "
                "NAT host routes; set it there (sysctl -w net.ipv4.ip_forward=1, and in /etc/sysctl.d "
                "to keep it)"
            )

    # ---- what the run reads
    def metadata(self) -> dict:
        return self.bed.metadata()

    def nat_meta(self) -> dict:
        return {
            "inside": str(self.inside_net),
            "outside": str(self.outside_net),
            "client": self.client.address,
            "server": self.server.address,
            "snat_address": self.outside.address,
            "port_range": self.p.port_range,
        }

    def skipped(self, parts, switched_off: dict, cannot_run: dict) -> dict:
        return {
            **{part: "across hosts: it runs on one machine only" for part in parts if part != "correctness checks"},
            **switched_off,
        }

    def caveats(self, rs, feed_kind, new_flows: int, cannot_run: dict) -> None:
        rs.caveat(
            f"across hosts (client {self.client.host.name} -> NAT {self.dut.name} -> server "
            f"{self.server.host.name}): small-packet UDP rates and the checks (ping, a UDP exchange) only; CPU "
            "is not measured across hosts (blank), the TCP, new-flow, sweep and program-time trials ran on one "
            "machine only, and `offloads` was not applied (the hosts' own settings)"
        )
        rs.caveat(
            "the checks ran after the trials: the DUT is not rebuilt between variants, and once netfilter's NAT "
            "table is used there, connection tracking stays hooked in and would tax every trial after it"
        )
        if self.p.generator == "auto":
            rs.caveat(
                f"generator auto across hosts: {self.generator} (the in-kernel generator needs its veth peer, "
                "which is on another host)"
            )

    # ---- variants, checks, trials
    @contextmanager
    def variant(self, name: str):
        """NAME set up across the hosts; yields the server's counter (a handle: "counts")."""
        p, bed = self.p, self.bed
        with ExitStack() as stack:
            if name.startswith("xdp"):
                for role in ("sender", "receiver"):
                    stack.enter_context(bed.hold(role, xdp_end))
            if name in ROUTING:
                stack.enter_context(bed.hold("receiver", route, self.client.address, self.outside.address))
            stack.enter_context(bed.hold("dut", dut_variant, name, list(p.port_range), p.iptables_target, port=None))
            source = self.client.address if name in ROUTING else self.outside.address
            yield stack.enter_context(bed.hold("receiver", server_counter, source, FLOOD_PORT))

    def warm_up(self) -> None:
        """Resolve neighbours along the path before anything is measured."""
        self.client.host.run(["ping", "-c", "1", "-W", "2", self.server.address], check=False, timeout=10)

    def check_all(self, variants) -> list[dict]:
        """Ping and a UDP exchange through each of VARIANTS: replies back, sources the SNAT address."""
        out = []
        for variant in variants:
            with self.variant(variant):
                self.warm_up()
                out += self._checks(variant)
        return out

    def _checks(self, variant: str) -> list[dict]:
        snat, out = self.outside.address, []

        def add(check, ok, detail):
            out.append(
                {"variant": variant, "check": check, "ok": bool(ok), "detail": detail, "offloads": self.offloads}
            )

        cp = self.client.host.run(
            ["ping", "-c", "3", "-i", "0.2", "-W", "2", self.server.address], check=False, timeout=20
        )
        add("ping", cp.returncode == 0, (cp.stdout.strip().splitlines() or ["no output"])[-1])
        with self.bed.hold("receiver", udp_echo, ECHO_PORT) as echo:
            back = self.bed.call("sender", echo_exchange, self.server.address, ECHO_PORT, ECHO_SPORT, ECHO_COUNT)
            seen = echo("seen")
        sources = sorted({s[0] for s in seen})
        add(
            "udp_exchange",
            back == ECHO_COUNT and sources == [snat],
            f"{back}/{ECHO_COUNT} echoed back; the server saw source {', '.join(sources) or 'nothing'} "
            f"(SNAT address {snat})",
        )
        return out

    @contextmanager
    def trial(self, variant: str):
        with self.variant(variant) as counter:
            self.warm_up()
            yield _Trial(self, counter)

    def after_trials(self, rs, flow_counts: list) -> None:
        """Nothing: the sweep and the programs' own time run on one machine only."""


class _Trial:
    """One UDP trial through a variant set up across the hosts, counted at the server."""

    def __init__(self, lab: InventoryNat, counter):
        self.lab, self.counter = lab, counter

    def udp(self, rs, variant: str, trial: int, feed):
        from labkit import measure, traffic

        lab, p, counter = self.lab, self.lab.p, self.counter
        load = {"size": p.udp_size, "count": p.udp_count, "flows": p.udp_flows, "timeout_s": p.timeout_s}
        spec = traffic.TrafficSpec(
            lab.client.mac, lab.inside.mac, lab.client.address, lab.server.address, dport=FLOOD_PORT, **load
        ).validate()
        feed.generator = lab.gen.name
        before = counter("counts")
        ends = {"client": lab.client, "srv": lab.server, "nat_in": lab.inside, "nat_out": lab.outside}

        lab.sent_cpu = {}

        def send():
            stop = lab.send_window() if lab.send_window else dict
            try:
                return lab.gen.send(spec)
            finally:
                lab.sent_cpu = stop()

        m = measure.run_trial(
            send,
            lambda: counter("counts")["expected"],
            size=p.udp_size,
            probes={name: measure.link_probe(end) for name, end in ends.items()},
            offered_probe=("client", "tx_packets"),
            clock=lab.clock,
        )
        after = counter("counts")
        other = (after["all"] - before["all"]) - (after["expected"] - before["expected"])
        extra = {"kind": "udp", "offloads": lab.offloads, "flows": p.udp_flows, "generator": lab.gen.name}
        rs.add(variant, trial, p.udp_size, {"server_other_source": (other, "packets")}, **extra)
        return m

    def extra(self, rs, variant: str, trial: int, new_flows: int) -> None:
        """Nothing more across hosts: TCP and new flows run on one machine only."""


def _network(iface):
    return ipaddress.ip_interface(f"{iface.address}/{iface.prefixlen}").network


# ---------------------------------------------------------------- on the far hosts
@contextmanager
def dut_variant(ports, variant: str, port_range: list, iptables_target: str):
    """On the DUT: VARIANT on its PORTS [inside, outside], the networks and the SNAT
    address read from them (the tc NAT compiled by this host's bcc). Undone on exit."""
    from labkit.dataplanes.nat import Nat
    from labkit.experiments.nat.testbed import on_nat_host

    inside, outside = ports
    inside_net, outside_net = str(_network(inside)), str(_network(outside))
    options = {"iptables_target": iptables_target, "inside_net": inside_net, "snat_address": outside.address}
    with ExitStack() as stack:
        nat = None
        if variant in ("tc_nat", "xdp_nat"):
            nat = stack.enter_context(Nat(inside_net, outside_net, outside.address, tuple(port_range)))
        stack.enter_context(on_nat_host(variant, inside.host, [inside], outside, nat, **options))
        yield variant


@contextmanager
def route(iface, dst: str, gateway: str):
    """On a client or a server: DST/32 through GATEWAY on IFACE while in the `with`,
    unless the host routes it so already; recorded in the session for `labkit clean`."""
    from labkit.testbed import runs

    host, idx = iface.host, iface.ifindex
    with host.ipr() as ipr:
        try:
            got = ipr.route("get", dst=dst)[0]
            present = got.get_attr("RTA_GATEWAY") == gateway and got.get_attr("RTA_OIF") == idx
        except Exception:  # no route at all
            present = False
    if present:
        yield "present"
        return

    def add():
        with host.ipr() as ipr:
            ipr.route("add", dst=dst, dst_len=32, gateway=gateway, oif=idx)

    def delete():
        with host.ipr() as ipr:
            try:
                ipr.route("del", dst=dst, dst_len=32, gateway=gateway, oif=idx)
            except Exception as exc:  # the link, and with it the route, may be gone
                if getattr(exc, "code", None) not in (errno.ESRCH, errno.ENODEV):
                    raise

    rec = {"kind": "route", "ifname": iface.name, "dst": dst, "dst_len": 32, "gateway": gateway}
    with runs.foreign_change(rec, add, delete):
        yield "added"


@contextmanager
def xdp_end(iface):
    """On the client or the server for the XDP variants: where IFACE is a veth, an
    XDP_PASS program on it and its tx checksum offload off (XDP updates full checksums),
    both recorded in the session for `labkit clean`."""
    from labkit import bpf
    from labkit.dataplanes.minimal import Minimal
    from labkit.testbed import runs

    host, ifname = iface.host, iface.name
    if "driver: veth" not in host.run(["ethtool", "-i", ifname], check=False, timeout=10).stdout:
        yield "not a veth"
        return
    offload = "tx-checksumming: on" in host.run(["ethtool", "-k", ifname], timeout=10).stdout
    with ExitStack() as stack:
        m = stack.enter_context(Minimal())
        stack.enter_context(bpf.attach_xdp(iface, m.pass_(), "native"))
        if offload:  # `labkit clean` turns it back on
            stack.enter_context(
                runs.foreign_change(
                    {"kind": "offload", "ifname": ifname, "feature": "tx"},
                    lambda: host.run(["ethtool", "-K", ifname, "tx", "off"], timeout=10),
                    lambda: host.run(["ethtool", "-K", ifname, "tx", "on"], check=False, timeout=10),
                )
            )
        yield "veth"


class _Counts:
    def __init__(self, expected, every):
        self.expected, self.every = expected, every

    def counts(self) -> dict:
        return {"expected": self.expected.counters()["packets"], "all": self.every.counters()["packets"]}


@contextmanager
def server_counter(iface, source: str, dport: int):
    """On the server: UDP to DPORT arriving on IFACE, from SOURCE counted and dropped in
    iptables' raw table (so the stack never answers a flood), from anywhere counted."""
    from labkit.testbed import netfilter

    match = ["-i", iface.name, "-p", "udp", "--dport", str(dport)]
    with (
        netfilter.rule(iface.host, "raw", "PREROUTING", *match, "-s", source, "-j", "DROP") as expected,
        netfilter.rule(iface.host, "raw", "PREROUTING", *match) as every,
    ):  # first: counts, then goes on
        yield _Counts(expected, every)


class _Echo:
    def __init__(self):
        self.sources: list = []

    def seen(self) -> list:
        return list(self.sources)


@contextmanager
def udp_echo(iface, port: int):
    """On the server (IFACE's host): a UDP echo on PORT while in the `with`; `seen()`
    lists the (address, port) of every datagram it received."""
    with iface.host.entered():  # the socket lives in the server's namespace (if it has one)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    echo, stop = _Echo(), threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except (socket.timeout, OSError):
                continue
            echo.sources.append(list(peer))
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, name="labkit-udp-echo", daemon=True)
    thread.start()
    try:
        yield echo
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def echo_exchange(server: str, port: int, sport: int, count: int, timeout: float = 2.0) -> int:
    """On the client: COUNT datagrams from SPORT to SERVER:PORT, one at a time; how many
    came back echoed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", sport))
    sock.settimeout(timeout)
    back = 0
    try:
        for i in range(count):
            payload = f"labkit nat check {i}".encode()
            sock.sendto(payload, (server, port))
            try:
                data, _ = sock.recvfrom(2048)
            except socket.timeout:
                continue
            back += data == payload
    finally:
        sock.close()
    return back
