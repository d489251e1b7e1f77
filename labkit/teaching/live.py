"""A student's own testbed and traffic, for the lessons that run on veths.

    with live.testbed() as topo:                 # hosts s07snd and s07rcv, one veth pair
        rcv = topo.iface(live.host_name("rcv"))
        with bpf.attach_xdp(rcv, prog.fn, mode="generic"):
            sent = live.send(topo, count=20_000)  # trafgen from the sender, bounded

`send` is a functional burst (no lock); `measure` takes the machine-wide measurement lock
(`students.measurement_turn`) and returns offered and processed rates with the CPU time,
so two students never measure on the same CPUs at once. In smoke mode (``smoke=True``,
or LABKIT_SMOKE=1 in the environment, which CI sets) counts are small and a measurement
is a check that the pipeline works, not a number to believe.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from labkit import measure, traffic
from labkit.teaching import students
from labkit.teaching.students import host_name
from labkit.testbed import topology

__all__ = ["testbed", "router", "send", "measure_rate", "smoke", "host_name", "Rate"]


def smoke() -> bool:
    """Whether lessons run in smoke mode (LABKIT_SMOKE=1): small counts, short trials."""
    return os.environ.get("LABKIT_SMOKE", "") not in ("", "0")


def testbed(roles=("snd", "rcv"), **pair_options) -> topology.Topology:
    """This student's two-host testbed (`with` it): hosts ``<slot>snd`` and ``<slot>rcv``."""
    a, b = (host_name(r) for r in roles)
    return topology.Topology(topology.pair(a, b, **pair_options))


def router() -> topology.Topology:
    """This student's three-host testbed (`with` it): ``<slot>snd`` (10.11.0.1) -- ``<slot>fwd``
    (10.11.0.254 | 10.12.0.254, forwarding IPv4) -- ``<slot>rcv`` (10.12.0.2), with routes."""
    snd, fwd, rcv = host_name("snd"), host_name("fwd"), host_name("rcv")
    return topology.Topology(
        topology.TopologySpec(
            hosts=[snd, fwd, rcv],
            links=[
                topology.LinkSpec(snd, fwd, "10.11.0.1/24", "10.11.0.254/24"),
                topology.LinkSpec(fwd, rcv, "10.12.0.254/24", "10.12.0.2/24"),
            ],
            forwarding=[fwd],
            routes=[(snd, "default", "10.11.0.254"), (rcv, "default", "10.12.0.254")],
        )
    )


def sender(topo):
    return topo.iface(topo.spec.hosts[0])


def receiver(topo):
    return topo.iface(topo.spec.hosts[-1])


def send(
    topo,
    count: int = 10_000,
    size: int = 64,
    rate_pps: float | None = None,
    flows: int = 1,
    generator: str = "auto",
    proto: str = "udp",
    dport: int = 9,
) -> traffic.Offered:
    """Send COUNT frames from the sender to the receiver (blocks; bounded in time)."""
    options = {"size": size, "count": count, "rate_pps": rate_pps, "flows": flows, "proto": proto, "dport": dport}
    spec = traffic.TrafficSpec.between(sender(topo), receiver(topo), timeout_s=60, **options)
    hosts = topo.spec.hosts
    if len(hosts) == 3:  # the router testbed: frames go to the router's MAC, addressed to the receiver
        spec.dst_mac = topo.iface(hosts[1], hosts[0]).mac
    spec.validate()
    with traffic.generator(generator, sender(topo)) as gen:
        return gen.send(spec)


class Background:
    """`send` in a thread: `with live.Background(topo, count=...) as bg:` then read counters
    while `bg.running`; `bg.offered` once it ends (the `with` waits for it)."""

    def __init__(self, topo, **send_options):
        self.offered, self.error = None, None
        self._thread = threading.Thread(target=self._go, args=(topo,), kwargs=send_options, daemon=True)

    def _go(self, topo, **kw):
        try:
            self.offered = send(topo, **kw)
        except Exception as exc:  # shown to the student by wait()
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = 90.0) -> traffic.Offered:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.offered

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join(90)
        return False


@dataclass
class Rate:
    """One measured trial: what the generator offered, what the program processed, the CPU."""

    offered: int
    processed: int
    seconds: float
    cpu_s: float
    waited_s: float = 0.0
    generator: str = ""  # the backend that offered the frames (which one `auto` chose here)

    @property
    def offered_pps(self) -> float:
        return self.offered / self.seconds if self.seconds > 0 else float("nan")

    @property
    def processed_pps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def lost(self) -> int:
        return max(self.offered - self.processed, 0)

    @property
    def cpu_ns_per_packet(self) -> float:
        return self.cpu_s * 1e9 / self.processed if self.processed else float("nan")


def measure_rate(
    topo,
    processed,
    count: int | None = None,
    size: int = 64,
    rate_pps: float | None = None,
    generator: str = "auto",
    log=print,
) -> Rate:
    """Offer COUNT frames under the measurement lock; PROCESSED() is the counter the program
    under test keeps (read before and after). CPU is the whole machine's busy time."""
    count = count or (5_000 if smoke() else 500_000)
    with students.measurement_turn(log=log) as turn:
        before, cpu0, t0 = processed(), measure.cpu_times(), time.monotonic()
        offered = send(topo, count=count, size=size, rate_pps=rate_pps, generator=generator)
        time.sleep(0.05)  # let the last frames through the receiver
        after, cpu1 = processed(), measure.cpu_times()
    seconds = offered.seconds or (time.monotonic() - t0)
    return Rate(offered.packets, after - before, seconds, (cpu1 - cpu0).busy, turn.waited_s, offered.generator)
