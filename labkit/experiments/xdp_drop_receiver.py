"""The XDP drop experiment's receiver, on the receiver's host: each variant as a setup
function (a table from name to setup), the drop filter compiled once and one variant
set up at a time. It runs in this process on the namespace testbed and in the host's
labkit session across hosts (`labkit.testbed.bed`), unchanged."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from functools import partial

from labkit import measure, traffic
from labkit.dataplanes.drop_filter import DropFilter
from labkit.testbed import netfilter

#: the UDP port the generators send to: what rule "flood" drops (anything else passes)
FLOOD_PORT = traffic.TrafficSpec.dport


def set_rule(filt: DropFilter, rule: str) -> None:
    """RULE in FILT: "all", "udp", or "flood" (UDP and TCP to FLOOD_PORT only, so that
    probes to other ports pass; the drop filter's variants only: tc and XDP)."""
    filt.clear()
    if rule == "all":
        filt.drop_all()
    elif rule == "flood":
        filt.drop_port(FLOOD_PORT)
    else:
        filt.drop_proto("udp")


@contextmanager
def _stack(rcv, filt: DropFilter, rule: str):
    probe = measure.snmp_probe(rcv.host, fields=(("Udp", "NoPorts"), ("Udp", "InDatagrams"), ("Udp", "InErrors")))
    yield lambda: sum(probe().values())


@contextmanager
def _iptables_raw(rcv, filt: DropFilter, rule: str):
    match = ["-p", "udp"] if rule == "udp" else []
    with netfilter.rule(rcv.host, "raw", "PREROUTING", "-i", rcv.name, *match, "-j", "DROP") as r:
        yield lambda: r.counters()["packets"]


@contextmanager
def _tc(rcv, filt: DropFilter, rule: str):
    with filt.attach_tc(rcv):
        yield filt.dropped


@contextmanager
def _xdp(mode: str, rcv, filt: DropFilter, rule: str):
    with filt.attach_xdp(rcv, mode):
        yield filt.dropped


#: each variant: how it is set up on the receiver (a context yielding its packet count)
SETUPS = {
    "stack": _stack,
    "iptables_raw": _iptables_raw,
    "tc": _tc,
    "xdp_generic": partial(_xdp, "generic"),
    "xdp_native": partial(_xdp, "native"),
}
VARIANTS = list(SETUPS)


class DropReceiver:
    """The receiver's side, on the receiver's host: the drop filter compiled once, with
    one variant set up at a time (`use`), counted (`processed`), undone (`off`)."""

    def __init__(self, iface, filt: DropFilter, rule: str):
        self.iface, self.filt, self.rule = iface, filt, rule
        self._stack, self._count = ExitStack(), None

    def use(self, variant: str) -> None:
        self.off()
        self._stack = ExitStack()
        self._count = self._stack.enter_context(SETUPS[variant](self.iface, self.filt, self.rule))

    def processed(self) -> int:
        return self._count()

    def off(self) -> None:
        self._count = None
        self._stack.close()


@contextmanager
def drop_receiver(iface, rule: str):
    """The drop experiment's receiver on IFACE with RULE; whatever variant is set up when
    the `with` ends is undone."""
    with DropFilter() as filt:
        set_rule(filt, rule)
        receiver = DropReceiver(iface, filt, rule)
        try:
            yield receiver
        finally:
            receiver.off()


@contextmanager
def using(receiver, variant: str):
    """VARIANT set up by RECEIVER (a testbed handle) for one trial; yields its counter."""
    receiver("use", variant)
    try:
        yield lambda: receiver("processed")
    finally:
        receiver("off")
