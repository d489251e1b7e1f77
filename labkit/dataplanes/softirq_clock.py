"""The control plane of bpf/softirq_time.c: exact softirq time per vector, summed over CPUs,
from a BPF program on the softirq tracepoints. The receive path's CPU cost (NET_RX)
is read from it around every trial (see `labkit.measure`).
"""
from __future__ import annotations
from labkit.dataplanes import ControlPlane


NET_RX = 3  # softirq vector numbers (include/linux/interrupt.h)


NET_TX = 2


class SoftirqClock(ControlPlane):
    """Exact softirq time per vector, from a BPF program on the softirq tracepoints.
    A context manager: exit detaches it."""

    def __init__(self):
        from labkit import bpf

        self.program = bpf.load("softirq_time")

    def seconds(self, vec: int = NET_RX) -> float:
        """Softirq time of VEC so far, summed over CPUs, in seconds."""
        import ctypes

        per_cpu = self.program.map("ns")[ctypes.c_int(vec)]
        return sum(int(v) for v in per_cpu) / 1e9

