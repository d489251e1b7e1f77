"""The NAT experiment's testbed: inside clients c1..cN, the NAT host, the server outside."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from labkit import measure, traffic
from labkit.dataplanes.minimal import Minimal
from labkit.dataplanes.nat import Nat
from labkit.dataplanes.xdp_nat import XdpNat, XdpRouter
from labkit.errors import InputError
from labkit.testbed import hosts, netfilter, topology
from labkit.testbed.undo import Undoable

VARIANTS = ["routing", "xdp_routing", "tc_nat", "xdp_nat", "iptables"]
#: every variant the testbed can set up: `tc_nat` is `ebpf` under its new name; `xdp_nat`
#: the XDP fast path over the tc NAT; `xdp_routing` its forwarding alone (no NAT)
ALL_VARIANTS = ["routing", "xdp_routing", "tc_nat", "xdp_nat", "iptables", "ebpf"]
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
    links = [
        topology.LinkSpec(f"c{i}", "nat", f"{client_addr(i)}/24", f"10.20.{i}.1/24", a_name=f"c{i}", b_name=f"in{i}")
        for i in range(1, clients + 1)
    ]
    links.append(topology.LinkSpec("nat", "srv", f"{NAT_OUTSIDE}/24", f"{SERVER}/24", a_name="out", b_name="srv"))
    return topology.TopologySpec(
        hosts=names + ["nat", "srv"],
        links=links,
        offloads={"tx": "off"} if offloads == "off" else {},
        forwarding=["nat"],
        routes=[(f"c{i}", "default", f"10.20.{i}.1") for i in range(1, clients + 1)],
    )


@dataclass
class NatHost:
    """What a variant is set up with on the NAT host: HOST, its INSIDE ports and OUTSIDE
    port (Interfaces), the loaded tc NAT (for `tc_nat` and `xdp_nat`), and options."""

    host: object
    inside: list
    outside: object
    nat: Nat | None = None
    iptables_target: str = "MASQUERADE"
    inside_net: str = INSIDE_NET
    snat_address: str = NAT_OUTSIDE
    mode: str = "native"
    hairpin_guard: bool = False


@contextmanager
def _routing(h: NatHost):
    yield None


@contextmanager
def _tc_nat(h: NatHost):
    h.nat.clear_flows()
    with h.nat.attach(h.outside, h.inside if h.hairpin_guard else []):
        yield h.nat


@contextmanager
def _xdp_nat(h: NatHost):
    h.nat.clear_flows()
    fast = XdpNat(h.nat)
    fast.clear_stats()
    with h.nat.attach(h.outside), fast.attach(h.inside, h.outside, h.mode):
        yield fast


@contextmanager
def _xdp_routing(h: NatHost):
    with XdpRouter() as router, router.attach(list(h.inside) + [h.outside], h.mode):
        yield router


@contextmanager
def _iptables(h: NatHost):
    args = ["-s", h.inside_net, "-o", h.outside.name, "-j", h.iptables_target]
    if h.iptables_target == "SNAT":
        args += ["--to-source", h.snat_address]
    with netfilter.rule(h.host, "nat", "POSTROUTING", *args) as rule:
        yield rule


#: each variant's set-up on the NAT host's own ports (`ebpf`: `tc_nat` under its old name)
ON_NAT_HOST = {
    "routing": _routing,
    "xdp_routing": _xdp_routing,
    "tc_nat": _tc_nat,
    "xdp_nat": _xdp_nat,
    "iptables": _iptables,
    "ebpf": _tc_nat,
}


def on_nat_host(name: str, host, inside: list, outside, nat: Nat | None = None, **options):
    """Variant NAME on the NAT host's own ports (INSIDE: its inside Interfaces, OUTSIDE its
    outside one), on HOST: what NatLab sets up in its `nat` namespace and an inventory's
    DUT on its interfaces (OPTIONS: the fields of `NatHost`). The other hosts' part (the
    server's route back for the routing variants; for the XDP ones, XDP_PASS on the ports
    facing the NAT host and full checksums from the senders) is not in here."""
    if name not in ON_NAT_HOST:
        raise InputError(f"variant {name!r}: choose from {ALL_VARIANTS}")
    return ON_NAT_HOST[name](NatHost(host, inside, outside, nat, **options))


class NatLab(Undoable):
    """The built testbed with forwarding and routes in place. A context manager: exit
    removes everything (the namespaces take their sysctls, routes and addresses along).
    NAT variants are context managers on top: `ebpf(nat)` (the tc NAT), `xdp_nat(nat)`,
    `iptables()`, `routing()`, `xdp_routing()`."""

    def __init__(self, clients: int = 2, offloads: str = "mixed"):
        self._server_peer = None  # the server port's XDP_PASS program, while the XDP variants run
        self.spec = spec(clients, offloads)
        self.clients, self.offloads = clients, offloads
        self.topo: topology.Topology | None = None

    def _open(self, stack) -> None:
        self.topo = stack.enter_context(topology.Topology(self.spec))
        nat = self.topo.host("nat")
        if self.offloads == "mixed":  # the NAT's ports finish partial checksums in software
            for i in range(1, self.clients + 1):
                nat.run(["ethtool", "-K", self.inside(i).name, "tx", "off"], timeout=10)
            nat.run(["ethtool", "-K", self.outside.name, "tx", "off"], timeout=10)

    # ---- access
    def client(self, i: int) -> hosts.Host:
        return self.topo.host(f"c{i}")

    def client_iface(self, i: int) -> topology.Interface:
        return self.topo.iface(f"c{i}", "nat")

    def inside(self, i: int) -> topology.Interface:
        return self.topo.iface("nat", f"c{i}")

    def _insides(self) -> list:
        return [self.inside(i) for i in range(1, self.clients + 1)]

    @property
    def outside(self) -> topology.Interface:
        return self.topo.iface("nat", "srv")

    @property
    def server(self) -> hosts.Host:
        return self.topo.host("srv")

    @property
    def server_iface(self) -> topology.Interface:
        return self.topo.iface("srv", "nat")

    # ---- UDP from c1
    def c1_udp(self, **fields) -> traffic.TrafficSpec:
        """UDP from c1 to the server (FIELDS: the rest of the TrafficSpec), checked."""
        return traffic.TrafficSpec(
            self.client_iface(1).mac, self.inside(1).mac, client_addr(1), SERVER, **fields
        ).validate()

    def c1_trial(self, gen, spec: traffic.TrafficSpec, clock) -> measure.Measurement:
        """GEN sends SPEC from c1: a trial whose forwarded count is the NAT's outside port's
        transmissions, with every port on the path read around it."""
        out_probe = measure.link_probe(self.outside, ethtool=False)
        ports = {
            "client": self.client_iface(1),
            "nat_in": self.inside(1),
            "nat_out": self.outside,
            "srv": self.server_iface,
        }
        return measure.run_trial(
            lambda: gen.send(spec),
            lambda: out_probe()["tx_packets"],
            size=spec.size,
            probes={name: measure.link_probe(port) for name, port in ports.items()},
            offered_probe=("client", "tx_packets"),
            clock=clock,
        )

    # ---- variants
    @contextmanager
    def routing(self):
        """No NAT: the server routes the inside network back through the NAT host."""
        with topology.route(self.server, INSIDE_NET, NAT_OUTSIDE):
            yield None

    @contextmanager
    def ebpf(self, nat: Nat, hairpin_guard: bool = False):
        """The tc NAT on the outside port (and, with HAIRPIN_GUARD, nat_hairpin on the
        inside ports: the XDP variant's inside program does that anyway)."""
        with on_nat_host(
            "tc_nat", self.topo.host("nat"), self._insides(), self.outside, nat, hairpin_guard=hairpin_guard
        ) as v:
            yield v

    @contextmanager
    def senders_full_checksums(self):
        """Checksum offload off on the clients' and the server's ports while in the `with`:
        XDP sees frames, not skbs, and updates checksums as full ones."""
        ends = [(self.client(i), self.client_iface(i).name) for i in range(1, self.clients + 1)]
        ends.append((self.server, self.server_iface.name))
        changed = []
        try:
            for host, name in ends:
                if "tx-checksumming: on" in host.run(["ethtool", "-k", name], timeout=10).stdout:
                    host.run(["ethtool", "-K", name, "tx", "off"], timeout=10)
                    changed.append((host, name))
            yield
        finally:
            for host, name in changed:
                host.run(["ethtool", "-K", name, "tx", "on"], check=False, timeout=10)

    @contextmanager
    def xdp_peers(self, mode: str = "native"):
        """The one-line XDP_PASS program on the ports facing the NAT host (the clients' and
        the server's): a frame redirected into a veth is only delivered when its peer has one."""
        from labkit import bpf

        with Minimal() as m, ExitStack() as stack:
            for i in range(1, self.clients + 1):
                stack.enter_context(bpf.attach_xdp(self.client_iface(i), m.pass_(), mode))
            self._server_peer = stack.enter_context(bpf.attach_xdp(self.server_iface, m.pass_(), mode))
            stack.callback(setattr, self, "_server_peer", None)
            yield

    @contextmanager
    def server_sink(self):
        """The server drops what reaches it at XDP (native) while in the `with`: a flood's
        CPU time is then the generator's and the NAT host's, not the server's stack's
        (which answers a flood to a closed port with ICMP). Every variant alike."""
        from labkit import bpf

        peer = getattr(self, "_server_peer", None)
        with Minimal() as m:
            if peer is not None:
                peer.detach()
            try:
                with bpf.attach_xdp(self.server_iface, m.drop(), "native"):
                    yield
            finally:
                if peer is not None:
                    peer.attach()

    @contextmanager
    def xdp_nat(self, nat: Nat, mode: str = "native"):
        """The tc NAT (slow path: new flows, everything unusual) plus the XDP fast path."""
        with (
            self.senders_full_checksums(),
            self.xdp_peers(mode),
            on_nat_host("xdp_nat", self.topo.host("nat"), self._insides(), self.outside, nat, mode=mode) as fast,
        ):
            yield fast

    @contextmanager
    def xdp_routing(self, mode: str = "native"):
        """No NAT, forwarding at XDP (the server routes the inside network back)."""
        with (
            self.routing(),
            self.senders_full_checksums(),
            self.xdp_peers(mode),
            on_nat_host("xdp_routing", self.topo.host("nat"), self._insides(), self.outside, mode=mode) as router,
        ):
            yield router

    @contextmanager
    def iptables(self, target: str = "MASQUERADE"):
        with on_nat_host(
            "iptables", self.topo.host("nat"), self._insides(), self.outside, iptables_target=target
        ) as rule:
            yield rule

    def variant(self, name: str, nat: Nat | None = None, iptables_target: str = "MASQUERADE"):
        """Variant NAME on this testbed (with the other hosts' part of it)."""
        if name not in LAB_VARIANTS:
            raise InputError(f"variant {name!r}: choose from {ALL_VARIANTS}")
        return LAB_VARIANTS[name](self, nat, iptables_target)


#: each variant on the whole testbed, by name
LAB_VARIANTS = {
    "routing": lambda lab, nat, target: lab.routing(),
    "xdp_routing": lambda lab, nat, target: lab.xdp_routing(),
    "tc_nat": lambda lab, nat, target: lab.ebpf(nat),
    "ebpf": lambda lab, nat, target: lab.ebpf(nat),
    "xdp_nat": lambda lab, nat, target: lab.xdp_nat(nat),
    "iptables": lambda lab, nat, target: lab.iptables(target),
}
