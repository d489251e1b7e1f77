"""The NAT testbed kept up across notebook cells, for the interactive lab.

One is live per kernel: making a new one (running the cell again, or Run All) closes the
old one first. After `close()` nothing it offers touches the kernel again: `traffic()`
refuses, and the widgets built on its NAT (labkit.widgets.nat) disable their controls.
"""
from __future__ import annotations

import atexit
import threading
from contextlib import ExitStack

from labkit.testbed import topology
from labkit.dataplanes.nat import Nat
from labkit.errors import LabkitError
from labkit.experiments.nat.checks import udp_exchange
from labkit.experiments.nat.testbed import INSIDE_NET, MAX_CLIENTS, NAT_OUTSIDE, NatLab, OUTSIDE_NET, SERVER


class LabStopped(LabkitError):
    """The NAT lab was stopped or replaced: its testbed is gone."""


_live: "LiveNat | None" = None
_live_lock = threading.Lock()


def live_lab() -> "LiveNat | None":
    """The NAT lab live in this kernel, if any."""
    return _live


def live_for(nat) -> "LiveNat | None":
    """The LiveNat that NAT belongs to (live or closed), if it came from one."""
    return getattr(nat, "_live_lab", None)


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
        global _live
        self.closed = True  # until built
        self.stop_reason = ""
        self.lock = threading.RLock()  # held by whoever reads or writes the NAT's maps
        self._listeners: list = []
        self.replaced = None  # the run prefix of the lab this one closed, if any
        with _live_lock:
            old, _live = _live, None
        if old is not None and not old.closed:
            self.replaced = old.prefix
            old.close("replaced: the lab's cell was run again, and a new lab took its place")
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
        self.prefix = self.lab.topo.run.prefix
        self.nat._live_lab = self
        self.closed = False
        with _live_lock:
            _live = self
        self._at_exit = lambda: self.close("closed as the kernel shut down")
        atexit.register(self._at_exit)

    def check_open(self) -> None:
        if self.closed:
            raise LabStopped(f"the NAT lab is stopped ({self.stop_reason}); run its cell again for a new one")

    def on_close(self, fn) -> None:
        """Call fn(reason) when the lab closes (the widgets disable their controls)."""
        self._listeners.append(fn)

    def traffic(self) -> dict:
        """Some traffic through the NAT: a ping from every client, and a UDP exchange."""
        self.check_open()
        for i in range(1, self.lab.clients + 1):
            self.lab.client(i).run(["ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER], check=False, timeout=20)
        return udp_exchange(self.lab)

    def close(self, reason: str = "stopped") -> None:
        """Remove the testbed and the NAT; harmless twice. REASON is shown by the widgets."""
        global _live
        with self.lock:
            stack, self._stack = self._stack, None
            if stack is None or self.closed:
                return
            self.closed = True
            self.stop_reason = reason
            try:
                stack.close()
            finally:
                atexit.unregister(self._at_exit)
                with _live_lock:
                    if _live is self:
                        _live = None
        for fn in self._listeners:
            try:
                fn(reason)
            except Exception:  # a widget that can no longer be updated must not stop the close
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
