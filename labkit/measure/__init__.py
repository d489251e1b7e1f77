"""Measurement: the kernel's own counters sampled around a burst of traffic, turned into
offered / processed / lost packet rates and CPU time per packet.

    m = measure.run_trial(send=lambda: gen.send(spec),
                          processed=lambda: filt.dropped(),         # count at the hook under test
                          probes={"rcv": measure.link_probe(rcv), "snd": measure.link_probe(snd)},
                          size=spec.size)
    m.processed_pps, m.lost, m.lost_where, m.cpu_ns_per_pkt, m.flags

CPU time of the receive path: it runs in NET_RX softirq (NAPI, XDP, tc, netfilter, the
stack up to the socket), wherever that is triggered: in ksoftirqd, or at the end of the
sender's own system call on a veth. `SoftirqClock` (bpf/softirq_time.c, on the softirq
tracepoints) measures that time exactly, per vector; `cpu_ns_per_pkt` is NET_RX time per
processed packet. Without it, the softirq column of /proc/stat stands in (sampled at timer
ticks, so only long trials give sensible numbers). `system_cpu_ns_per_pkt` (all busy time
of all CPUs, the generator and unrelated load included) is kept beside it. Both sides share
this machine's CPUs: compare variants as ratios measured in the same run.

Flags say when a rate cannot be taken at face value:
- ``generator-limited``: the hook processed (nearly) everything the generator offered at its
  full speed, so the rate is the generator's, a lower bound of what the variant can do
  (set by `mark_generator_limited` across the variants of one trial);
- ``loss-before-hook``: more than 1% of the offered packets never reached the hook
  (`lost_where` says which counters saw them, e.g. a veth ring under native XDP);
- ``offered-mismatch``: the sender's link counter disagrees with what the generator reported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from labkit.dataplanes.softirq_clock import SoftirqClock

CLK_TCK = os.sysconf("SC_CLK_TCK")
GENERATOR_LIMITED = "generator-limited"
LOSS_BEFORE_HOOK = "loss-before-hook"
OFFERED_MISMATCH = "offered-mismatch"


@dataclass
class CpuTimes:
    busy: float  # seconds, all CPUs
    softirq: float
    total: float
    per_cpu_busy: list

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(
            self.busy - other.busy,
            self.softirq - other.softirq,
            self.total - other.total,
            [a - b for a, b in zip(self.per_cpu_busy, other.per_cpu_busy)],
        )


def cpu_times() -> CpuTimes:
    """System-wide CPU time from /proc/stat, in seconds."""
    busy = soft = total = 0.0
    per_cpu = []
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
            b = (sum(v) - v[3] - v[4]) / CLK_TCK
            if name == "cpu":
                busy, soft, total = b, v[6] / CLK_TCK, sum(v) / CLK_TCK
            else:
                per_cpu.append(b)
    return CpuTimes(busy, soft, total, per_cpu)


# ---------------------------------------------------------------- probes
def link_probe(iface, ethtool: bool = True) -> Callable[[], dict]:
    """A probe reading IFACE's link counters (and `ethtool -S` drop/XDP counters)."""
    keys = ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped", "rx_errors", "tx_errors")

    def read() -> dict:
        st = iface.stats()
        out = {k: st.get(k, 0) for k in keys}
        if ethtool:
            for k, v in iface.ethtool_stats().items():
                if "drop" in k or "err" in k or "xdp" in k:
                    out[f"ethtool:{k}"] = v
        return out

    return read


def snmp_probe(
    host,
    fields=(
        ("Udp", "NoPorts"),
        ("Udp", "InDatagrams"),
        ("Udp", "InErrors"),
        ("Ip", "InReceives"),
        ("Ip", "InDiscards"),
        ("Ip", "InHdrErrors"),
    ),
) -> Callable[[], dict]:
    """A probe reading /proc/net/snmp of HOST's namespace (what the kernel stack saw)."""

    def read() -> dict:
        return {f"{p}:{n}": v for (p, n), v in _snmp(host.read("/proc/net/snmp")).items() if (p, n) in fields}

    return read


def _snmp(text: str) -> dict:
    out = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        _, values = vals.split(":", 1)
        for n, v in zip(names.split(), values.split()):
            out[(proto, n)] = int(v)
    return out


def _delta(before, after):
    if isinstance(before, dict):
        return {k: after.get(k, 0) - v for k, v in before.items()}
    return after - before


# ---------------------------------------------------------------- a trial
@dataclass
class Measurement:
    offered: object  # traffic.Offered
    processed: int  # packets counted at the hook under test
    size: int
    cpu: CpuTimes
    probes: dict = field(default_factory=dict)  # name -> {counter: delta}
    flags: list = field(default_factory=list)
    lost_where: dict = field(default_factory=dict)
    net_rx_s: float | None = None  # exact NET_RX softirq seconds, when a SoftirqClock ran

    @property
    def elapsed_s(self) -> float:
        return self.offered.seconds

    @property
    def offered_pps(self) -> float:
        return self.offered.pps

    @property
    def processed_pps(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def processed_mbps(self) -> float:
        return self.processed_pps * self.size * 8 / 1e6

    @property
    def lost(self) -> int:
        return max(0, self.offered.packets - self.processed)

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.offered.packets if self.offered.packets else float("nan")

    @property
    def generator_cpu_s(self) -> float:
        g = self.offered.cpu_seconds
        return g if g == g else 0.0

    @property
    def receiver_cpu_s(self) -> float:
        """CPU time of the receive path: NET_RX softirq time (exact where measured)."""
        return self.net_rx_s if self.net_rx_s is not None else self.cpu.softirq

    @property
    def cpu_ns_per_pkt(self) -> float:
        """Receive-path CPU time per processed packet."""
        return self.receiver_cpu_s / self.processed * 1e9 if self.processed else float("nan")

    @property
    def system_cpu_ns_per_pkt(self) -> float:
        return self.cpu.busy / self.processed * 1e9 if self.processed else float("nan")

    def measures(self) -> dict:
        """{measure: (value, unit)} for the tidy table."""
        return {
            "offered_pkts": (self.offered.packets, "packets"),
            "offered_pps": (self.offered_pps, "pps"),
            "processed_pkts": (self.processed, "packets"),
            "processed_pps": (self.processed_pps, "pps"),
            "processed_mbps": (self.processed_mbps, "Mbit/s"),
            "lost_pkts": (self.lost, "packets"),
            "loss_ratio": (self.loss_ratio, "ratio"),
            "elapsed_s": (self.elapsed_s, "s"),
            "cpu_busy_s": (self.cpu.busy, "s"),
            "cpu_softirq_s": (self.cpu.softirq, "s"),
            "net_rx_softirq_s": (self.net_rx_s if self.net_rx_s is not None else float("nan"), "s"),
            "generator_cpu_s": (self.generator_cpu_s, "s"),
            "receiver_cpu_s": (self.receiver_cpu_s, "s"),
            "cpu_ns_per_pkt": (self.cpu_ns_per_pkt, "ns/packet"),
            "system_cpu_ns_per_pkt": (self.system_cpu_ns_per_pkt, "ns/packet"),
        }


def run_trial(
    send: Callable[[], object],
    processed: Callable[[], int],
    *,
    size: int,
    probes: dict | None = None,
    offered_probe: tuple[str, str] | None = None,
    settle_s: float = 0.2,
    clock: SoftirqClock | None = None,
) -> Measurement:
    """Sample PROBES and the PROCESSED counter, call SEND (which returns traffic.Offered),
    let queues drain for SETTLE_S, sample again, and work out what happened.

    `offered_probe` = (probe name, counter) of the sender's link counter, checked against
    what the generator reported."""
    probes = probes or {}
    before = {name: p() for name, p in probes.items()}
    p0 = processed()
    c0 = cpu_times()
    s0 = clock.seconds() if clock else None
    offered = send()
    time.sleep(settle_s)
    s1 = clock.seconds() if clock else None
    c1 = cpu_times()
    p1 = processed()
    after = {name: p() for name, p in probes.items()}
    deltas = {name: _delta(before[name], after[name]) for name in probes}
    m = Measurement(offered, p1 - p0, size, c1 - c0, deltas, net_rx_s=(s1 - s0) if clock else None)
    _flag(m, offered_probe)
    return m


def mark_generator_limited(group: list[Measurement], tolerance: float = 0.9) -> None:
    """Flag, among measurements of one trial and size (one per variant), those whose hook
    kept up with the generator running at full speed: processed >= 98% of offered, and
    offered within TOLERANCE of the highest offered rate of the group. (Where a receiver
    slows the generator down, as when both share a CPU, the offered rate drops and the
    receiver, not the generator, set the pace.)"""
    top = max((m.offered_pps for m in group if m.offered_pps == m.offered_pps), default=0)
    for m in group:
        if (
            m.offered.packets
            and m.processed >= 0.98 * m.offered.packets
            and m.offered_pps >= tolerance * top
            and GENERATOR_LIMITED not in m.flags
        ):
            m.flags.append(GENERATOR_LIMITED)


def _flag(m: Measurement, offered_probe) -> None:
    if m.offered.packets and m.loss_ratio > 0.01:
        m.flags.append(LOSS_BEFORE_HOOK)
        for probe, counters in m.probes.items():
            if isinstance(counters, dict):
                for k, v in counters.items():
                    if v and ("drop" in k or "err" in k or "Discards" in k):
                        m.lost_where[f"{probe}:{k}"] = v
    if offered_probe:
        name, counter = offered_probe
        seen = m.probes.get(name, {}).get(counter)
        if seen is not None and m.offered.packets and abs(seen - m.offered.packets) > 0.01 * m.offered.packets:
            m.flags.append(OFFERED_MISMATCH)
            m.lost_where[f"{name}:{counter} (offered {m.offered.packets})"] = seen
