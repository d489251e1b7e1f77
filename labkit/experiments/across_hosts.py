"""Experiments across machines: the sender on one host, the receiver on another, named by
an inventory (`labkit.testbed.inventory`).

An experiment given ``inventory=PATH`` keeps its trial loop here, on the controlling
machine, and puts each piece where it belongs: the generator runs on the sender host,
the receiver's variant (an XDP program, a tc filter, an iptables rule) is set up on the
receiver host by that host's own bcc and kernel, and the counters are read on each. The
pieces are context managers held open on their host for as long as the local `with`
lasts (`RemoteHost.hold`), so a variant is undone there on any exit, and a host lost
mid-run leaves a registered session that `labkit clean --inventory` undoes.

    with Testbed(path, ("sender", "receiver"), tools=...) as bed:
        snd, rcv = end(bed, "sender"), end(bed, "receiver")
        with RemoteGenerator(snd, "trafgen") as gen:
            gen.send(TrafficSpec(...))

The far-side functions (`generator`, `local_interface`, `describe`) import nothing a
provisioned host lacks.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

from labkit import traffic
from labkit.testbed import remote_agent
from labkit.testbed.bed import describe, local_interface
from labkit.testbed.inventory import Testbed

__all__ = ["Testbed", "End", "end", "RemoteGenerator", "GENERATOR_TOOLS", "LOCAL_CPU", "blank_local_cpu"]

#: what the sender host needs for each generator (commands, or python:module)
GENERATOR_TOOLS = {"trafgen": ["trafgen"], "xdp": ["python:bcc"], "testpmd": ["dpdk-testpmd"],
                   "pktgen": ["modprobe"], "auto": []}
#: the measures `measure.run_trial` takes from the controlling machine's CPU, which across
#: hosts is neither the sender's nor the receiver's (a DUT's own process time, read there,
#: is not among them)
LOCAL_CPU = ("cpu_busy_s", "cpu_softirq_s", "net_rx_softirq_s", "generator_cpu_s", "receiver_cpu_s",
             "cpu_ns_per_pkt", "system_cpu_ns_per_pkt")


def blank_local_cpu(rows: list[dict]) -> None:
    """Blank (NaN) every value of ROWS (a ResultSet's) measured from this machine's CPU:
    across hosts it is no host's, so it is left empty rather than misread."""
    for r in rows:
        if r["measure"] in LOCAL_CPU:
            r["value"] = float("nan")


@dataclass
class End:
    """One end of the data plane on a remote host: its interface and addresses."""

    role: str
    host: object  # remote.RemoteHost
    ifname: str
    mac: str
    address: str | None

    def counters(self) -> dict:
        """The interface's kernel counters, read on its host."""
        return self.host.call(remote_agent.link_counters, self.ifname)


def end(bed: Testbed, role: str, ifname: str | None = None) -> End:
    """ROLE's end of the data plane (IFNAME: one of a two-port host's, default its first)."""
    host, ifname = bed.host(role), ifname or bed.interface(role)
    d = host.call(describe, ifname)
    return End(role, host, ifname, d["mac"], d["address"])


class RemoteGenerator:
    """A traffic generator (a labkit.traffic backend) running on the sender's host."""

    def __init__(self, sender: End, name: str = "auto", **options):
        self.sender = sender
        self._held = sender.host.hold("labkit.experiments.across_hosts:generator", sender.ifname, name, options)
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
    if bed.local:
        return traffic.generator(name, iface)
    name = "trafgen" if name == "auto" else name  # the in-kernel generators need their veth peer on their host
    return RemoteGenerator(End(role, iface.host, iface.name, iface.mac, iface.address), name)


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
