"""The control plane of the eBPF NAT (bpf/nat.c): its configuration, static 1:1 mappings,
source-NAT port range and flow table, all in BPF maps, read and changed from userspace
while the program runs.

    with Nat(inside_network="10.20.0.0/16", outside_network="198.51.100.0/24",
             snat_address="198.51.100.1", port_range=(20000, 29999)) as nat:
        with nat.attach(topo.iface("nat", "srv"), inside_ifaces), nat.sweeping(every_s=1.0):
            # tc ingress + egress of the outside port; the hairpin guard on the inside ports
            nat.add_mapping("10.20.1.2", "198.51.100.10")
            ...
            nat.flows()      # live SNAT flows: counters both directions, age, idle time, state
            nat.mappings()   # static mappings with their counters
            nat.stats()      # every outcome of the program, counted (passes and drops too)

The XDP fast path over the same maps is `labkit.dataplanes.xdp_nat.XdpNat(nat)`.

Every change is checked before a map is written: an address outside the configured
networks, a mapping that overlaps another, an empty or inverted port range, a timeout
of zero or below raise an `InputError` and leave the maps as they were; a full mapping
table raises `TableFull`; attaching with a SNAT address the outside port does not have,
or (while attached) mapping an outside address the port does not have, raises
`InputError` before anything is attached or written.

Flows expire: a flow idle in both directions for longer than its protocol's timeout
(`timeouts`, seconds: TCP established, TCP after a FIN or RST, UDP, ICMP) is removed
when a packet meets it, and by `sweep()`. A full flow table refuses new flows (counted
as `drop_table_full`) and never evicts a live one; `table_use()` reports entries,
capacity, flows created and expired, and the drops.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from contextlib import ExitStack
from dataclasses import dataclass

from labkit import bpf
from labkit.dataplanes import ControlPlane, nat_checks, nat_model
from labkit.dataplanes.jiffies import kernel_hz
from labkit.dataplanes.nat_checks import check_address as _address
from labkit.dataplanes.nat_checks import check_host_in as _host_in
from labkit.dataplanes.nat_checks import check_network as _network
from labkit.dataplanes.nat_checks import check_port_range, check_timeouts
from labkit.dataplanes.nat_encoding import be32 as _be32
from labkit.dataplanes.nat_encoding import from_be32 as _from_be32
from labkit.dataplanes.nat_flows import FlowTable
from labkit.errors import InputError, LabkitError

DEFAULT_PORT_RANGE = (20000, 29999)


class TableFull(LabkitError):
    """A BPF map of the NAT has no room for another entry."""


@dataclass
class Mapping:
    inside: str
    outside: str
    out_packets: int = 0
    out_bytes: int = 0
    in_packets: int = 0
    in_bytes: int = 0


def interface_addresses(iface) -> set[str]:
    """The IPv4 addresses configured on IFACE (in its host's namespace)."""
    with iface.host.ipr() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET, index=iface.ifindex)}


class Nat(FlowTable, ControlPlane):
    """The loaded NAT program and its maps. A context manager: exit unloads the program
    (and with it every map); `attach()` puts it on an interface."""

    SOURCE = "nat"

    def __init__(
        self,
        inside_network: str,
        outside_network: str,
        snat_address: str | None = None,
        port_range=DEFAULT_PORT_RANGE,
        *,
        max_static: int = 256,
        max_flows: int = 65536,
        port_probes: int = 32,
        timeouts: dict | None = None,
        fib_cache_s: float = 1.0,
    ):
        self.inside_network = _network(inside_network, "inside network")
        self.outside_network = _network(outside_network, "outside network")
        if self.inside_network.overlaps(self.outside_network):
            raise InputError(
                f"inside network {self.inside_network} and outside network {self.outside_network} "
                "overlap: a NAT needs them apart"
            )
        self.snat_address = None
        if snat_address is not None:
            self.snat_address = _address(snat_address, "SNAT address")
            _host_in(self.snat_address, self.outside_network, "SNAT address", "outside network")
        self.port_range = check_port_range(port_range)
        self.timeouts = check_timeouts(timeouts)
        if isinstance(fib_cache_s, bool) or not isinstance(fib_cache_s, (int, float)) or not 0 <= fib_cache_s <= 10**7:
            raise InputError(
                f"fib_cache_s {fib_cache_s!r}: seconds 0..10^7 that the XDP fast path trusts a flow's "
                "remembered route and next hop (0: a FIB lookup for every packet)"
            )
        self.fib_cache_s = float(fib_cache_s)
        for name, value, top in (
            ("max_static", max_static, 65536),
            ("max_flows", max_flows, 1 << 22),
            ("port_probes", port_probes, 256),
        ):
            if not isinstance(value, int) or not 1 <= value <= top:
                raise InputError(f"{name} {value!r}: a whole number 1..{top}")
        self.max_static, self.max_flows, self.port_probes = max_static, max_flows, port_probes
        self.program = bpf.load(self.SOURCE, MAX_STATIC=max_static, MAX_FLOWS=max_flows, PORT_PROBES=port_probes)
        try:
            self._maps = {
                n: self.program.map(n)
                for n in ("config", "static_out", "static_in", "mapping_counters", "snat_out", "snat_in", "stats")
            }
            self._flows_created_cleared = 0  # flows created before the last clear_flows()
            self._outside = None  # the outside port while attached
            self.swept = 0  # flows the sweep removed
            self._write_config()
        except BaseException:
            self.program.close()
            raise

    # ------------------------------------------------------------ lifecycle

    def egress_function(self):
        return self.program.function("nat_egress", "tc")

    def ingress_function(self):
        return self.program.function("nat_ingress", "tc")

    def hairpin_function(self):
        return self.program.function("nat_hairpin", "tc")

    def guard(self, inside_ifaces) -> ExitStack:
        """`nat_hairpin` at tc ingress of INSIDE_IFACES: hairpinning refused and counted
        (drop_hairpin). Use in a `with`; exit removes it."""
        with ExitStack() as stack:
            for iface in inside_ifaces:
                stack.enter_context(bpf.attach_tc(iface, self.hairpin_function(), "ingress"))
            return stack.pop_all()

    def attach(self, outside_iface, inside_ifaces=()) -> ExitStack:
        """Attach the NAT to the NAT host's outside port: tc ingress (inbound translation)
        and egress (outbound). Use in a `with`; exit removes both (the clsact qdisc).
        With INSIDE_IFACES, `nat_hairpin` at their tc ingress refuses hairpinning (an inside
        host to a static mapping's outside address, or to the SNAT address and a port of
        the range), counted as `drop_hairpin`. The SNAT address must be one of the port's own addresses (replies are addressed to
        it, and the NAT host answers ARP for it): checked before anything is attached."""
        if self.snat_address is not None:
            have = interface_addresses(outside_iface)
            if str(self.snat_address) not in have:
                raise InputError(
                    f"SNAT address {self.snat_address} is not an address of the outside interface "
                    f"{outside_iface.name} (it has {', '.join(sorted(have)) or 'none'}): add it "
                    "there, or choose one of its addresses"
                )
        with ExitStack() as stack:
            self._outside = outside_iface
            stack.callback(setattr, self, "_outside", None)
            stack.enter_context(bpf.attach_tc(outside_iface, self.ingress_function(), "ingress"))
            stack.enter_context(bpf.attach_tc(outside_iface, self.egress_function(), "egress"))
            if inside_ifaces:
                stack.enter_context(self.guard(inside_ifaces))
            return stack.pop_all()

    # ------------------------------------------------------------ configuration
    def _write_config(self) -> None:
        t = self._maps["config"]
        leaf = t.Leaf()
        leaf.snat_addr = _be32(self.snat_address) if self.snat_address else 0
        leaf.inside_net = _be32(self.inside_network.network_address)
        leaf.inside_mask = _be32(self.inside_network.netmask)
        leaf.port_min, leaf.port_max = self.port_range
        hz = kernel_hz()
        for i, name in enumerate(nat_checks.header().TIMEOUTS):
            leaf.timeout[i] = max(1, round(self.timeouts[name] * hz))
        leaf.fib_refresh = round(self.fib_cache_s * hz)
        t[ctypes.c_int(0)] = leaf

    def set_timeouts(self, **seconds) -> None:
        """Change flow timeouts (seconds), e.g. set_timeouts(udp=30): all checked first."""
        self.timeouts = check_timeouts({**self.timeouts, **seconds})
        self._write_config()

    def set_port_range(self, first: int, last: int) -> None:
        """The ports new SNAT flows get (existing flows keep theirs)."""
        self.port_range = check_port_range((first, last))
        self._write_config()

    def config(self) -> dict:
        """The configuration as the program sees it (read back from its map)."""
        leaf = self._maps["config"][ctypes.c_int(0)]
        return {
            "snat_address": _from_be32(leaf.snat_addr) if leaf.snat_addr else None,
            "inside_network": str(ipaddress.IPv4Network((_from_be32(leaf.inside_net), _from_be32(leaf.inside_mask)))),
            "port_range": (leaf.port_min, leaf.port_max),
            "outside_network": str(self.outside_network),
            "timeouts": {n: leaf.timeout[i] / kernel_hz() for i, n in enumerate(nat_checks.header().TIMEOUTS)},
        }

    # ------------------------------------------------------------ static mappings
    def _static_outside(self) -> dict:
        return {
            ipaddress.IPv4Address(_from_be32(k.value)): ipaddress.IPv4Address(_from_be32(v.addr))
            for k, v in self._maps["static_in"].items()
        }

    def _static_inside(self) -> dict:
        return {
            ipaddress.IPv4Address(_from_be32(k.value)): (ipaddress.IPv4Address(_from_be32(v.addr)), v.slot)
            for k, v in self._maps["static_out"].items()
        }

    def add_mapping(self, inside: str, outside: str) -> Mapping:
        """Map outside address OUTSIDE to inside host INSIDE (both directions), at once."""
        ins = _address(inside, "inside address")
        out = _address(outside, "outside address")
        _host_in(ins, self.inside_network, "inside address", "inside network")
        _host_in(out, self.outside_network, "outside address", "outside network")
        if self.snat_address is not None and out == self.snat_address:
            raise InputError(
                f"outside address {out} is the SNAT address, shared by every inside host: map another outside address"
            )
        if self._outside is not None and str(out) not in interface_addresses(self._outside):
            raise InputError(
                f"outside address {out} is not an address of the outside interface {self._outside.name}, "
                "so nothing would reach the mapping: add the address there first"
            )
        by_inside, by_outside = self._static_inside(), self._static_outside()
        if ins in by_inside:
            raise InputError(
                f"inside host {ins} already has a static mapping (to {by_inside[ins][0]}): remove it first"
            )
        if out in by_outside:
            raise InputError(
                f"outside address {out} is already mapped (to {by_outside[out]}): remove that mapping first"
            )
        if len(by_inside) >= self.max_static:
            raise TableFull(
                f"the static mapping table is full ({self.max_static} mappings): remove one, "
                "or load the NAT with a larger max_static"
            )
        used = {slot for _, slot in by_inside.values()}
        slot = next(s for s in range(self.max_static) if s not in used)
        t_out, t_in, counters = self._maps["static_out"], self._maps["static_in"], self._maps["mapping_counters"]
        ncpu = len(counters[ctypes.c_int(slot)])
        counters[ctypes.c_int(slot)] = (counters.Leaf * ncpu)()  # fresh counters for a fresh mapping
        # the program looks an established SNAT flow up before the static mappings: a host
        # with a mapping has none (its flows end here), and neither does its outside address
        self._drop_flows(lambda k, v, _rv: k.src == _be32(ins) or v.addr == _be32(out))
        # inbound first: a reply to the new address can only be translated once outbound
        # traffic goes out under it; undone if the second write fails
        t_in[t_in.Key(_be32(out))] = t_in.Leaf(_be32(ins), slot)
        try:
            t_out[t_out.Key(_be32(ins))] = t_out.Leaf(_be32(out), slot)
        except Exception as exc:
            del t_in[t_in.Key(_be32(out))]
            raise TableFull(f"could not add mapping {ins} <-> {out}: {exc}") from exc
        return Mapping(str(ins), str(out))

    def remove_mapping(self, address: str) -> None:
        """Remove the static mapping of ADDRESS (its inside or its outside address)."""
        addr = _address(address, "address")
        by_inside, by_outside = self._static_inside(), self._static_outside()
        if addr in by_inside:
            ins, out = addr, by_inside[addr][0]
        elif addr in by_outside:
            ins, out = by_outside[addr], addr
        else:
            have = ", ".join(f"{i}<->{o}" for i, (o, _) in by_inside.items()) or "none"
            raise InputError(f"no static mapping has address {addr}; mappings: {have}")
        t_out, t_in = self._maps["static_out"], self._maps["static_in"]
        del t_out[t_out.Key(_be32(ins))]
        del t_in[t_in.Key(_be32(out))]

    def mappings(self) -> list[Mapping]:
        """The static mappings with their packet and byte counters (summed over CPUs)."""
        counters = self._maps["mapping_counters"]
        out = []
        for ins, (outside, slot) in sorted(self._static_inside().items()):
            per_cpu = counters[ctypes.c_int(slot)]
            m = Mapping(str(ins), str(outside))
            for f in ("out_packets", "out_bytes", "in_packets", "in_bytes"):
                setattr(m, f, sum(getattr(c, f) for c in per_cpu))
            out.append(m)
        return out

    def clear(self) -> None:
        """Forget all state: flows, static mappings and every counter (config stays)."""
        self.clear_flows()
        self._maps["static_out"].clear()
        self._maps["static_in"].clear()
        for name in ("mapping_counters", "stats"):
            t = self._maps[name]
            for i in range(len(t)):
                t[ctypes.c_int(i)] = (t.Leaf * len(t[ctypes.c_int(i)]))()
        self._flows_created_cleared = 0

    # ------------------------------------------------------------ counters
    def stats(self) -> dict:
        """{outcome: {'packets': n, 'bytes': b}} for every outcome of the program, summed over CPUs."""
        raw = bpf.percpu_sum(self._maps["stats"])
        return {o: raw.get(k, {"packets": 0, "bytes": 0}) for k, o in enumerate(nat_model.header().OUTCOMES)}

    def model(self):
        """A NatModel with this NAT's configuration and static mappings (no flows)."""
        return nat_model.NatModel(
            str(self.inside_network),
            str(self.snat_address) if self.snat_address else None,
            self.port_range,
            {m.inside: m.outside for m in self.mappings()},
            self.port_probes,
        )
