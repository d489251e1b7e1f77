"""The NAT testbed kept up across notebook cells, for the interactive lab.
"""
from __future__ import annotations
from contextlib import ExitStack
from labkit.testbed import topology
from labkit.dataplanes.nat import Nat
from labkit.experiments.nat.checks import udp_exchange
from labkit.experiments.nat.testbed import INSIDE_NET, MAX_CLIENTS, NAT_OUTSIDE, NatLab, OUTSIDE_NET, SERVER


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
