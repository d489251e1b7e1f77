"""What experiments share when a testbed's hosts are other machines (an inventory's,
`labkit.testbed.inventory`): the generator on the sender's host, and which measures are
left empty because this machine's CPU is no host's.

An experiment's one run keeps its trial loop on the controlling machine and holds each
piece on its host through the testbed (`labkit.testbed.bed`); the generator is the one
piece an experiment opens through here, the same call on any testbed:

    with open_generator(bed, p.generator) as gen:      # here, or on the sender's host
        gen.send(TrafficSpec.between(bed.end("sender"), bed.end("receiver"), ...))

`generator_for` names the generator `auto` means there (trafgen: the in-kernel
generators need their veth peer on their own host). The far-side function `generator`
imports nothing a provisioned host lacks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

from labkit import traffic
from labkit.testbed.bed import local_interface
from labkit.testbed.inventory import Testbed

__all__ = ["Testbed", "RemoteGenerator", "GENERATOR_TOOLS", "LOCAL_CPU", "blank_local_cpu"]

#: what the sender host needs for each generator (commands, or python:module)
GENERATOR_TOOLS = {
    "trafgen": ["trafgen"],
    "xdp": ["python:bcc"],
    "testpmd": ["dpdk-testpmd"],
    "pktgen": ["modprobe"],
    "auto": [],
}
#: the measures `measure.run_trial` takes from the controlling machine's CPU, which across
#: hosts is neither the sender's nor the receiver's (a DUT's own process time, read there,
#: is not among them)
LOCAL_CPU = (
    "cpu_busy_s",
    "cpu_softirq_s",
    "net_rx_softirq_s",
    "generator_cpu_s",
    "receiver_cpu_s",
    "cpu_ns_per_pkt",
    "system_cpu_ns_per_pkt",
)


def blank_local_cpu(rows: list[dict]) -> None:
    """Blank (NaN) every value of ROWS (a ResultSet's) measured from this machine's CPU:
    across hosts it is no host's, so it is left empty rather than misread."""
    for r in rows:
        if r["measure"] in LOCAL_CPU:
            r["value"] = float("nan")


class RemoteGenerator:
    """A traffic generator (a labkit.traffic backend) running on the sender's host."""

    def __init__(self, sender, name: str = "auto", **options):
        """SENDER: the sender's interface on its host (a testbed's `end("sender")`)."""
        self.sender = sender
        self._held = sender.host.hold("labkit.experiments.across_hosts:generator", sender.name, name, options)
        self.name = name

    def __enter__(self) -> "RemoteGenerator":
        self._held.__enter__()
        self.name = self._held("backend")
        return self

    def send(self, spec: traffic.TrafficSpec) -> traffic.Offered:
        return traffic.Offered(**self._held("send", spec.validate().as_dict()))

    def __exit__(self, *exc):
        return self._held.__exit__(*exc)


def open_generator(bed, name: str, role: str = "sender"):
    """The generator NAME on ROLE's end of BED: in this process where the host is this
    machine, else on that host (a `RemoteGenerator`; `auto` is trafgen there). Enter it;
    leaving undoes it."""
    iface = bed.end(role)
    if bed.local or not bed.where(role):  # ROLE is here (a namespace), whatever the other roles are
        return traffic.generator(name, iface)
    return RemoteGenerator(iface, generator_for(name, False))


def generator_for(name: str, local: bool) -> str:
    """The generator NAME means on a testbed: across hosts `auto` is trafgen (the in-kernel
    generators need an XDP program on their veth peer, which is on another host there)."""
    return "trafgen" if name == "auto" and not local else name


#: what a run across hosts says when `auto` became trafgen
AUTO_ACROSS_HOSTS = (
    "generator auto across hosts: trafgen (the in-kernel generator needs an XDP program on its "
    "veth peer, which is on another host here); name generator=xdp to use it from a NIC"
)


# ---------------------------------------------------------------- on the far host
class _Sender:
    def __init__(self, gen):
        self.gen = gen

    def backend(self) -> str:
        return self.gen.name

    def send(self, spec: dict) -> dict:
        return asdict(self.gen.send(traffic.TrafficSpec(**spec)))


@contextmanager
def generator(ifname: str, name: str, options: dict):
    """On the sender host: the generator NAME on IFNAME, closed on exit."""
    with traffic.generator(name, local_interface(ifname), **options) as gen:
        yield _Sender(gen)
