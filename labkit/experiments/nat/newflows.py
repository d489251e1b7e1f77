"""The NAT experiment's new-flow trial: how fast each NAT sets flows up. Every packet
c1 sends has a source port of its own, so each is the first packet of a new flow: the
eBPF NATs claim a port and insert a flow pair per packet, netfilter creates a connection
tracking entry and its NAT binding per packet, plain routing just forwards (the
baseline). Packets forwarded per second is the new-flow rate; CPU time per packet the
cost of setting one flow up.

All flows go to one server port, so each takes a port of the SNAT range: keep `count`
below the range's size (the experiment keeps it within 80% of it, where a new flow's
random probe of PORT_PROBES ports practically always finds one free).

Any generator that sends every source port once per `count` frames can feed it
(`sweep.FLOW_CAPACITY`): with ``auto`` the one the capability probes pick here; where that
one cannot send so many ports, the run leaves the trial out and says why (`unavailable`).
"""

from __future__ import annotations

from labkit import measure, traffic
from labkit.errors import InputError
from labkit.experiments.nat import sweep
from labkit.experiments.nat.testbed import NatLab

PART = "new flows"  # the part's name in the run's record of choices and of skipped parts
FIRST_SPORT = 1024


def check(count: int, generator: str) -> None:
    """A new-flow count this testbed and a generator named in GENERATOR can send as distinct
    flows ('auto': checked when the run starts, see `unavailable`)."""
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 65535 - FIRST_SPORT:
        raise InputError(
            f"new_flows {count!r}: 0 (skip the new-flow trial) .. {65535 - FIRST_SPORT} (one source port per flow)"
        )
    if count and generator != "auto":
        many, why = sweep.too_many([count], generator, PART)
        if many:
            raise InputError(f"new_flows {count}: {why}; use one of those generators (or 'auto'), or fewer new flows")


def unavailable(count: int, generator: str) -> str:
    """Why the new-flow trial of COUNT flows cannot run here ('' when it can, or is off)."""
    return sweep.too_many([count], generator, PART)[1] if count else ""


def new_flow_trial(lab: NatLab, generator: str, count: int, clock, timeout_s: float = 60.0) -> measure.Measurement:
    """COUNT packets from c1, each from a source port of its own (one sending CPU, so the
    sequence of flows is walked once): COUNT new flows through the variant in place."""
    spec = lab.c1_udp(size=64, count=count, flows=count, sport=FIRST_SPORT, timeout_s=timeout_s, cpus=1)
    with traffic.generator(generator, lab.client_iface(1), PART) as gen:
        return lab.c1_trial(gen, spec, clock)
