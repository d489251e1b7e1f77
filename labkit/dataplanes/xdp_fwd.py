"""The control plane of bpf/xdp_fwd.c: a port pair forwarded at XDP or tc with
l2fwd's MAC rewrite (frames arriving on one port leave by the other, through a devmap).
"""
from __future__ import annotations
from contextlib import ExitStack, contextmanager
from labkit import bpf
from labkit.errors import InputError

#: The program's counters, the index of its `counters` map (enum xdp_fwd_counter of
#: bpf/include/xdp_fwd.h): "redirected", "no_entry", "short", "refused".
COUNTERS = bpf.enum_names("xdp_fwd.h", "xdp_fwd_counter", "FWD_")


class XdpForwarder:
    """bpf/xdp_fwd.c loaded, its maps filled for a port pair: frames arriving on one port
    leave by the other, with l2fwd's MAC rewrite. Attach with `attach_xdp()` /
    `attach_tc()` (context managers)."""

    def __init__(self, ports: list, mac_updating: bool = True):
        if len(ports) != 2:
            raise InputError("the XDP forwarder pairs exactly two ports")
        self.ports = ports
        self.prog = bpf.load("xdp_fwd", MAC_UPDATING=int(bool(mac_updating)))
        try:
            self._fill(ports)
        except BaseException:
            self.prog.close()
            raise

    def _fill(self, ports) -> None:
        port_of, tx = self.prog.map("port_of"), self.prog.map("tx_ports")
        # A devmap resolves ifindexes in the network namespace of whoever updates it:
        # fill it from inside the ports' namespace.
        with ports[0].host.entered():
            for i, iface in enumerate(ports):
                out = 1 - i
                entry = port_of.Leaf()
                entry.out_port = out
                entry.out_ifindex = ports[out].ifindex
                for j, b in enumerate(bytes.fromhex(ports[out].mac.replace(":", ""))):
                    entry.out_mac[j] = b
                port_of[port_of.Key(iface.ifindex)] = entry
                tx[tx.Key(i)] = tx.Leaf(iface.ifindex)

    def counters(self) -> dict:
        sums = bpf.percpu_sum(self.prog.map("counters"))
        return {n: int(sums.get(i, 0)) for i, n in enumerate(COUNTERS)}

    @contextmanager
    def attach_xdp(self, mode: str = "native"):
        fn = self.prog.function("xdp_l2fwd", "xdp")
        with ExitStack() as stack:
            for iface in self.ports:
                stack.enter_context(bpf.attach_xdp(iface, fn, mode))
            yield self

    @contextmanager
    def attach_tc(self):
        fn = self.prog.function("tc_l2fwd", "tc")
        with ExitStack() as stack:
            for iface in self.ports:
                stack.enter_context(bpf.attach_tc(iface, fn, "ingress"))
            yield self

    def close(self) -> None:
        self.prog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
