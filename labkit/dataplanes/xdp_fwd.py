"""The control plane of bpf/xdp_fwd.c: a port pair forwarded at XDP or tc with
l2fwd's MAC rewrite (frames arriving on one port leave by the other, through a devmap).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from labkit import bpf, bpf_enums
from labkit.dataplanes import ControlPlane, read_when_needed
from labkit.errors import InputError

#: COUNTERS, the index of the program's `counters` map (enum xdp_fwd_counter of
#: bpf/include/xdp_fwd.h): "redirected", "no_entry", "short", "refused".
header, __getattr__ = read_when_needed(
    lambda: {"COUNTERS": bpf_enums.enum_names("xdp_fwd.h", "xdp_fwd_counter", "FWD_")}
)


class XdpForwarder(ControlPlane):
    """bpf/xdp_fwd.c loaded, its maps filled for a port pair: frames arriving on one port
    leave by the other, with l2fwd's MAC rewrite. Attach with `attach_xdp()` /
    `attach_tc()` (context managers)."""

    def __init__(self, ports: list | None, mac_updating: bool = True):
        if ports is not None and len(ports) != 2:
            raise InputError("the XDP forwarder pairs exactly two ports")
        self.ports = ports or []
        self.program = bpf.load("xdp_fwd", MAC_UPDATING=int(bool(mac_updating)))
        try:
            if ports:
                self._fill(ports)
        except BaseException:
            self.program.close()
            raise

    @classmethod
    def unpaired(cls, mac_updating: bool = True) -> "XdpForwarder":
        """The program loaded with empty maps, for entries set one by one with `forward()`
        (a test run, whose ingress is this namespace's loopback, needs no port pair)."""
        return cls(None, mac_updating)

    def forward(self, in_ifindex: int, out_port: int, out_ifindex: int, out_mac: str) -> None:
        """Frames arriving on IN_IFINDEX leave by port OUT_PORT (the devmap slot, which
        holds OUT_IFINDEX) with source MAC OUT_MAC. A devmap resolves ifindexes in the
        namespace of whoever updates it: call this from inside the ports' namespace."""
        port_of, tx = self.program.map("port_of"), self.program.map("tx_ports")
        entry = port_of.Leaf()
        entry.out_port = out_port
        entry.out_ifindex = out_ifindex
        entry.out_mac[:] = bytes.fromhex(out_mac.replace(":", ""))
        port_of[port_of.Key(in_ifindex)] = entry
        tx[tx.Key(out_port)] = tx.Leaf(out_ifindex)

    def _fill(self, ports) -> None:
        with ports[0].host.entered():
            for i, iface in enumerate(ports):
                out = 1 - i
                self.forward(iface.ifindex, out, ports[out].ifindex, ports[out].mac)

    def counters(self) -> dict:
        sums = bpf.percpu_sum(self.program.map("counters"))
        return {n: int(sums.get(i, 0)) for i, n in enumerate(header().COUNTERS)}

    @contextmanager
    def attach_xdp(self, mode: str = "native"):
        fn = self.program.function("xdp_l2fwd", "xdp")
        with ExitStack() as stack:
            for iface in self.ports:
                stack.enter_context(bpf.attach_xdp(iface, fn, mode))
            yield self

    @contextmanager
    def attach_tc(self):
        fn = self.program.function("tc_l2fwd", "tc")
        with ExitStack() as stack:
            for iface in self.ports:
                stack.enter_context(bpf.attach_tc(iface, fn, "ingress"))
            yield self
