"""The NAT's XDP fast path (the XDP programs of bpf/nat.c): established SNAT flows and
static mappings translated and forwarded at XDP, over the very maps of the tc NAT
(`labkit.dataplanes.nat.Nat`), so a flow may be handled by either path.

    with Nat(INSIDE, OUTSIDE, "198.51.100.1") as nat, nat.attach(outside):   # the tc NAT
        with XdpNat(nat).attach([inside1, inside2], outside):                 # + the fast path
            ...
            XdpNat(nat).stats()   # what the fast path did, and why it passed the rest up

The inside ports get `xdp_nat_outbound`, the outside port `xdp_nat_inbound`. A packet
of an established flow (or of a static mapping) is rewritten, its route and next hop
taken from the kernel (bpf_fib_lookup: no MAC is configured anywhere) and redirected out
of the egress port. Everything else goes up the stack untouched (XDP_PASS): the tc NAT
creates new flows there, and the kernel answers what it must (TTL exceeded, a missing
neighbour, fragmentation needed, packets for the NAT host itself); each is counted.

`XdpRouter` is the same forwarding with no translation (`xdp_route`), the fast path's
own baseline. On a veth testbed, frames redirected into a veth are only delivered when
its peer has an XDP program (labkit's `Minimal().pass_()`), and XDP updates checksums
as full ones, so senders' checksum offload must be off (a real NIC never hands XDP a
partial checksum).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from labkit import bpf, bpf_enums
from labkit.dataplanes import ControlPlane, read_when_needed
from labkit.dataplanes.jiffies import jiffies_now
from labkit.errors import InputError

#: OUTCOMES, the fast path's outcomes, the index of `xdp_stats` (enum nat_xdp_outcome of bpf/include/nat.h).
header, __getattr__ = read_when_needed(
    lambda: {"OUTCOMES": bpf_enums.enum_names("nat.h", "nat_xdp_outcome", "NAT_XDP_")}
)


def _attach_all(stack: ExitStack, ifaces, fn, mode: str) -> None:
    for iface in ifaces:
        stack.enter_context(bpf.attach_xdp(iface, fn, mode))


class XdpNat:
    """The XDP fast path of a loaded `Nat` (same program object, same maps)."""

    def __init__(self, nat):
        self.nat = nat
        self.program = nat.program

    def outbound_function(self):
        return self.program.function("xdp_nat_outbound", "xdp")

    def inbound_function(self):
        return self.program.function("xdp_nat_inbound", "xdp")

    @contextmanager
    def attach(self, inside_ifaces, outside_iface, mode: str = "native"):
        """XDP on every inside port (outbound translation) and on the outside port
        (inbound); exit detaches all of them."""
        if not inside_ifaces:
            raise InputError("the XDP NAT needs at least one inside port")
        if mode not in bpf.XDP_MODES:
            raise InputError(f"XDP mode {mode!r}: choose one of {sorted(bpf.XDP_MODES)}")
        with ExitStack() as stack:
            _attach_all(stack, inside_ifaces, self.outbound_function(), mode)
            _attach_all(stack, [outside_iface], self.inbound_function(), mode)
            yield self

    def stats(self) -> dict:
        """{outcome: {'packets', 'bytes'}} of the fast path, summed over CPUs."""
        return _stats(self.program)

    def remember_route(self, ifindex: int, smac: str, dmac: str) -> int:
        """Give every flow (both directions) the route IFINDEX with these MACs, as if the
        fast path had just looked it up: for test runs (BPF_PROG_TEST_RUN), where no FIB
        of a testbed applies. Returns how many entries it set."""
        now, n = jiffies_now(), 0
        for name in ("snat_out", "snat_in"):
            t = self.program.map(name)
            for k, v in list(t.items()):
                v.fib_at, v.fib_ifindex, v.fib_len = now, ifindex, 0xFFFF
                v.fib_smac[:] = bytes.fromhex(smac.replace(":", ""))
                v.fib_dmac[:] = bytes.fromhex(dmac.replace(":", ""))
                t[k] = v
                n += 1
        return n

    def clear_stats(self) -> None:
        t = self.program.map("xdp_stats")
        for i in range(len(t)):
            t[t.Key(i)] = (t.Leaf * len(t[t.Key(i)]))()


class XdpRouter(ControlPlane):
    """`xdp_route`: the XDP forwarding of the fast path with no translation (the routing
    baseline of the XDP NAT). Loads bpf/nat.c with an empty configuration."""

    def __init__(self):
        self.program = bpf.load("nat")

    def function(self):
        return self.program.function("xdp_route", "xdp")

    @contextmanager
    def attach(self, ifaces, mode: str = "native"):
        if mode not in bpf.XDP_MODES:
            raise InputError(f"XDP mode {mode!r}: choose one of {sorted(bpf.XDP_MODES)}")
        with ExitStack() as stack:
            _attach_all(stack, ifaces, self.function(), mode)
            yield self

    def stats(self) -> dict:
        return _stats(self.program)


def _stats(program) -> dict:
    raw = bpf.percpu_sum(program.map("xdp_stats"))
    return {o: raw.get(k, {"packets": 0, "bytes": 0}) for k, o in enumerate(header().OUTCOMES)}
