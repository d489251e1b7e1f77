"""The NAT testbed kept up across notebook cells, for the interactive lab.

One is live per kernel: making a new one (running the cell again, or Run All) closes the
old one first. After `close()` nothing it offers touches the kernel again: `traffic()`
refuses, and the widgets built on its NAT (labkit.widgets.nat) disable their controls.
"""

from __future__ import annotations

from contextlib import ExitStack

from labkit.dataplanes.nat import Nat
from labkit.experiments.nat.exchanges import udp_exchange
from labkit.experiments.nat.testbed import INSIDE_NET, MAX_CLIENTS, NAT_OUTSIDE, OUTSIDE_NET, SERVER, NatLab
from labkit.testbed import topology
from labkit.testbed.livelab import LiveLab


def live_for(nat) -> "LiveNat | None":
    """The LiveNat that NAT belongs to (live or closed), if it came from one."""
    return getattr(nat, "_live_lab", None)


class LiveNat(LiveLab):
    """The testbed with the eBPF NAT attached (its XDP fast path over the tc NAT, unless
    `fast_path=False`), kept up across notebook cells for the mapping editor and the live
    flow table (which shows each path's counters), until `close()` (also at interpreter exit;
    after a killed kernel, `labkit clean` removes what is left).

        live = LiveNat(clients=2)
        live.traffic()                     # pings and a UDP exchange from every client
        nat_widgets.flow_view(live.nat)
        live.close()
    """

    NAME = "NAT lab"

    def __init__(self, clients: int = 2, offloads: str = "mixed", port_range=(20000, 29999), fast_path: bool = True):
        self._replace_live()
        self._stack = ExitStack()
        self.fast = None  # the XDP fast path (labkit.dataplanes.xdp_nat.XdpNat), when it runs
        try:
            self.nat = self._stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(port_range)))
            self.lab = self._stack.enter_context(NatLab(clients, offloads))
            if fast_path:  # established flows at XDP, the tc NAT for new flows and anything unusual
                self.fast = self._stack.enter_context(self.lab.xdp_nat(self.nat))
            else:
                self._stack.enter_context(self.lab.ebpf(self.nat))
            # the static mappings' outside addresses are answered by the NAT's outside port
            for i in range(1, MAX_CLIENTS + 1):
                self._stack.enter_context(
                    topology.address(self.lab.topo.host("nat"), self.lab.outside.name, f"198.51.100.{9 + i}/32")
                )
        except BaseException:
            self._stack.close()
            raise
        self.nat._live_lab = self
        self._went_live(self.lab.topo.run.prefix)

    def traffic(self) -> dict:
        """Some traffic through the NAT: a ping from every client, and a UDP exchange."""
        self.check_open()
        for i in range(1, self.lab.clients + 1):
            self.lab.client(i).run(["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        return udp_exchange(self.lab)

    def _teardown(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
