"""The eBPF NAT programs' own time per packet on the real path, read from the kernel's
BPF run-time statistics (BPF_ENABLE_STATS) under a flood of their own, and net of what the
statistics add themselves (their clock reads, measured on a bare program).

`measure` records rows of kind 'prog' (`prog_ns_per_pkt:NAME` as read,
`prog_own_ns_per_pkt:NAME` net of the floor, `prog_stats_floor_ns`); `sentences` reads
them back against the goal of 100 ns each.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

from labkit import bpf, traffic
from labkit.errors import LabkitError
from labkit.experiments.nat.testbed import SERVER

PART = "programs' own time"  # the part's name in the run's record of choices and of skipped parts


@contextmanager
def bpf_run_time_stats():
    """Turn on the kernel's BPF run-time statistics (BPF_ENABLE_STATS) while in the `with`;
    the kernel turns them off again when the last holder closes its descriptor, so this
    never clobbers another user's setting (unlike the kernel.bpf_stats_enabled sysctl)."""
    lib = bpf.libbpf()
    lib.bpf_enable_stats.argtypes = [ctypes.c_int]
    lib.bpf_enable_stats.restype = ctypes.c_int
    fd = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise LabkitError(f"BPF_ENABLE_STATS failed ({os.strerror(-fd)})")
    try:
        yield
    finally:
        os.close(fd)


def prog_run_stats(fn) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo."""
    vals = {}
    for line in open(f"/proc/self/fdinfo/{fn.fd}"):
        k, _, v = line.partition(":")
        vals[k.strip()] = v.strip()
    return int(vals.get("run_time_ns", 0)), int(vals.get("run_cnt", 0))


def measure(lab, nat, programs: dict, p, variant: str, rs) -> None:
    """The eBPF programs' own time per packet on the real path (kernel BPF statistics),
    each under a flood of its own: the outbound program under c1's UDP load, the inbound
    one under the server's UDP load back to one of those flows (its SNAT address and port)."""
    src, srv = lab.client_iface(1), lab.server_iface
    count = max(10_000, p.udp_count // 2)
    out_spec = lab.c1_udp(size=p.udp_size, count=count, flows=p.udp_flows, timeout_s=p.timeout_s)
    (out_name, out_fn), (in_name, in_fn) = [(n, nat.program.function(f, k)) for n, (f, k) in programs.items()]
    windows = {}
    with bpf_run_time_stats():
        with traffic.generator(p.generator, src, PART) as gen:
            before = prog_run_stats(out_fn)
            gen.send(out_spec)  # UDP out: the outbound program translates every packet
            windows[out_name] = (before, prog_run_stats(out_fn))
        flow = next((f for f in nat.flows() if f.proto == "udp" and f.inside_port == 1024), None)
        if flow is not None:
            in_spec = traffic.TrafficSpec(
                srv.mac,
                lab.outside.mac,
                SERVER,
                flow.nat_address,
                size=p.udp_size,
                count=count,
                sport=9,
                dport=flow.nat_port,
                timeout_s=p.timeout_s,
            ).validate()
            with traffic.generator(p.generator, srv, PART) as gen:
                before = prog_run_stats(in_fn)
                gen.send(in_spec)  # UDP back to one flow: the inbound program translates every packet
                windows[in_name] = (before, prog_run_stats(in_fn))
        floor = stats_floor_ns()
    for name, (b, a) in windows.items():
        dt, dn = a[0] - b[0], a[1] - b[1]
        raw = dt / dn if dn else float("nan")
        measures = {
            f"prog_ns_per_pkt:{name}": (raw, "ns/packet"),
            f"prog_own_ns_per_pkt:{name}": (raw - floor, "ns/packet"),
            f"prog_runs:{name}": (dn, "packets"),
        }
        rs.add(variant, 0, p.udp_size, measures, kind="prog", offloads=p.offloads)
    rs.add(variant, 0, p.udp_size, {"prog_stats_floor_ns": (floor, "ns/run")}, kind="prog", offloads=p.offloads)


def stats_floor_ns(repeat: int = 100_000) -> float:
    """What the BPF run-time statistics report per run for a program that does nothing (a
    bare XDP_DROP run REPEAT times by BPF_PROG_TEST_RUN with the statistics on; the median
    of three): their own clock reads, which a program's reading includes. Call it inside
    `bpf_run_time_stats`."""
    from labkit import packets

    frame = packets.build(
        packets.FrameSpec("02:00:00:00:00:02", "02:00:00:00:00:01", "10.11.0.1", "10.11.0.2", sport=1024, size=64)
    )
    per_run = []
    with bpf.load("xdp_minimal") as prog:
        fn = prog.function("xdp_drop_bare")
        for _ in range(3):
            b = prog_run_stats(fn)
            bpf.test_run(fn, frame, repeat=repeat)
            a = prog_run_stats(fn)
            per_run.append((a[0] - b[0]) / max(1, a[1] - b[1]))
    return sorted(per_run)[1]


def sentences(table) -> list[str]:
    """The programs' own time per packet against the goal (100 ns each): net of the
    statistics' own floor where the run measured it (runs before it: the raw reading)."""
    raw = table[table["measure"].str.startswith("prog_ns_per_pkt:")]
    own = table[table["measure"].str.startswith("prog_own_ns_per_pkt:")]
    if raw.empty:
        return []
    floor = table[table["measure"] == "prog_stats_floor_ns"]["value"]
    use = own if len(own) else raw
    each = ", ".join(f"{m.split(':', 1)[1]} {v:.0f} ns" for m, v in zip(use["measure"], use["value"]))
    how = (
        f"BPF run-time statistics ({', '.join(f'{v:.0f}' for v in raw['value'])} ns as read) less their own "
        f"clock reads ({floor.mean():.0f} ns per run, what they report for a bare XDP_DROP program)"
        if len(own) and len(floor)
        else "BPF run-time statistics, which include their own clock reads"
    )
    return [
        f"The eBPF programs' own time per packet on the real path ({how}): {each}; goal ≤ 100 ns each: "
        f"{'met' if use['value'].max() <= 100 else 'not met'}."
    ]
