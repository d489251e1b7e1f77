"""The control plane of bpf/softirq_time.c: exact softirq time per vector, summed over CPUs,
from a BPF program on the softirq tracepoints. The receive path's CPU cost (NET_RX)
is read from it around every trial (see `labkit.measure`).

The xdp_loop generator's frames circulate in NAPI polls of its own, in the same NET_RX
softirq as the receiver's. Where tracefs is mounted (the set-up mounts it), the program
also times every poll by its device (napi:napi_poll) and `seconds()` (NET_RX) leaves the
loop's polls out: the receive path's cost stays the receiver's, whatever generator feeds
it. Without tracefs `separates_generator` is False and NET_RX includes the loop's polls.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from labkit import bpf, capabilities
from labkit.dataplanes import ControlPlane

NET_RX = 3  # the softirq vector number (include/linux/interrupt.h)


def tracefs_events():
    """Where tracefs shows its events (bcc reads a tracepoint's format there)."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(base, "events", "napi").is_dir():
            return Path(base, "events")
    return Path("/sys/kernel/tracing/events")


class SoftirqClock(ControlPlane):
    """Exact softirq time per vector, from a BPF program on the softirq tracepoints.
    A context manager: exit detaches it."""

    def __init__(self):
        self.separates_generator = tracefs_events().is_dir()
        self.program = bpf.load("softirq_time", **({"GEN_LOOP": 1} if self.separates_generator else {}))
        capabilities.chose(
            "receive CPU",
            "NET_RX softirq time",
            "the xdp_loop generator's own polls left out"
            if self.separates_generator
            else "tracefs is not mounted: an xdp_loop generator's own "
            "polls are counted as the receiver's (`sudo make setup` mounts it)",
        )

    def seconds(self) -> float:
        """NET_RX softirq time so far, summed over CPUs, in seconds, without the xdp_loop
        generator's own polls (where they can be told apart)."""
        per_cpu = self.program.map("ns")[ctypes.c_int(NET_RX)]
        return sum(int(v) for v in per_cpu) / 1e9 - self.generator_seconds()

    def generator_seconds(self) -> float:
        """NET_RX time spent in the xdp_loop generator's polls so far, summed over CPUs (0
        where they cannot be told apart)."""
        if not self.separates_generator:
            return 0.0
        return sum(int(v) for v in self.program.map("gen_ns")[ctypes.c_int(0)]) / 1e9
