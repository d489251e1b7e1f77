"""The NAT experiment's TCP trials: iperf3 from c1 to the server through the variant in
place, one stream (kind ``tcp``) or many concurrent connections (kind ``tcp_streams``,
iperf3 ``-P N``: N connections, each a NAT flow of its own, sharing the path).

Each trial gives the throughput the server received (Mbit/s), and the CPU time per
kilobyte it cost: all CPUs' busy time and the NET_RX softirq time (the softirq clock the
UDP trials use), both over the bytes received. The ``flows`` column holds the number of
connections.
"""

from __future__ import annotations

import json
import time

from labkit import measure, results
from labkit.errors import InputError, LabkitError
from labkit.experiments.nat.testbed import SERVER, NatLab

#: iperf3 allows at most 128 parallel streams
MAX_STREAMS = 128
KIND = "tcp_streams"


def check_streams(streams) -> None:
    """A number of concurrent connections iperf3 can open (0: no many-streams trial)."""
    if not isinstance(streams, int) or isinstance(streams, bool) or not (streams == 0 or 2 <= streams <= MAX_STREAMS):
        raise InputError(
            f"tcp_streams {streams!r}: 2..{MAX_STREAMS} concurrent TCP connections (iperf3 -P), "
            "or 0 for no many-connections trial"
        )


def iperf(lab: NatLab, seconds: float, port: int = 5201, streams: int = 1):
    """iperf3 TCP c1 -> srv with STREAMS parallel connections; the client's completed process."""
    # --forceflush: its "listening" line reaches the pipe at once, not when the buffer fills
    with lab.server.spawn(["iperf3", "-s", "-1", "-p", str(port), "--forceflush"], name="iperf3-server") as server:
        deadline = time.monotonic() + 5
        while "listening" not in server.output().lower() and time.monotonic() < deadline:
            time.sleep(0.05)
        argv = ["iperf3", "-c", SERVER, "-p", str(port), "-t", str(max(1, round(seconds))), "-J"]  # whole seconds
        if streams > 1:
            argv += ["-P", str(streams)]
        return lab.client(1).run(argv, check=False, timeout=seconds + 30)


def tcp_trial(
    lab: NatLab,
    variant: str,
    trial: int,
    rs: results.ResultSet,
    clock,
    *,
    seconds: float,
    offloads: str,
    streams: int = 1,
) -> None:
    """One iperf3 transfer of SECONDS with STREAMS connections through the variant in
    place; its rows (kind ``tcp`` for one stream, ``tcp_streams`` for several) go to RS."""
    out0 = lab.outside.stats()
    c0, s0 = measure.cpu_times(), clock.seconds()
    cp = iperf(lab, seconds, streams=streams)
    c1, s1 = measure.cpu_times(), clock.seconds()
    out1 = lab.outside.stats()
    try:
        received = json.loads(cp.stdout)["end"]["sum_received"]
        bps, nbytes, secs = received["bits_per_second"], received["bytes"], received["seconds"]
    except (ValueError, KeyError) as exc:
        raise LabkitError(
            f"iperf3 ({streams} stream(s)) through the {variant} NAT failed: {cp.stdout[-800:]}{cp.stderr[-400:]}"
        ) from exc
    cpu = c1 - c0
    kb = nbytes / 1000
    measures = {
        "tcp_mbps": (bps / 1e6, "Mbit/s"),
        "tcp_bytes": (nbytes, "bytes"),
        "tcp_seconds": (secs, "s"),
        "tcp_nat_out_skbs": (out1["tx_packets"] - out0["tx_packets"], "packets"),
        "tcp_cpu_busy_s": (cpu.busy, "s"),
        "tcp_cpu_ns_per_kb": (cpu.busy / kb * 1e9 if kb else float("nan"), "ns/kB"),
        "tcp_net_rx_ns_per_kb": ((s1 - s0) / kb * 1e9 if kb else float("nan"), "ns/kB"),
    }
    rs.add(variant, trial, 1514, measures, kind="tcp" if streams == 1 else KIND, offloads=offloads, flows=streams)
