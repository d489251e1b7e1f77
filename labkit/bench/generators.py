"""Benchmark of the traffic generators, and the receiver comparison they make possible.

    df = bench_generators.run(smoke=False)     # a tidy pandas DataFrame, also printed by `make bench`

Part "generators": at 64 bytes, the in-kernel generator ("xdp", live frames), the loop
of XDP programs ("xdp_loop", no live frames), trafgen, testpmd txonly over net_af_packet
("testpmd") and over net_af_xdp ("testpmd_afxdp") each send into the same native-XDP drop
receiver (labkit.dataplanes.drop_filter.DropFilter, drop-all, which counts what it drops), several
trials each, interleaved. Per trial: offered_pps (the generator's own count over its own
time), received (the receiver's count) and received_pps. `lines` says it in one line per
generator: the median received rate (min..max) and its ratio to trafgen's median.

Part "receivers": XDP drop (native) against iptables raw-table DROP, both fed at full
speed by the fastest generator of part one that delivers XDP frames ("xdp" or
"xdp_loop"). The iptables receiver has no XDP program of its own, so the generator attaches
an XDP_PASS program to the receiving veth for the send (a caveat, in `notes`). Per trial:
received_pps, loss_ratio and the receive path's CPU per packet (NET_RX softirq time, the
loop generator's own polls left out: dataplanes.softirq_clock). `receiver_lines` says
it: a receiver that lost nothing kept up with its generator, so its rate is flagged as
generator-limited and no ratio of rates is quoted; the ratio of CPU per packet is.

Columns: part, generator, variant, trial, size, measure, value, unit, notes.
"""

from __future__ import annotations

import functools
import time

import pandas as pd

from labkit import traffic
from labkit.dataplanes.drop_filter import DropFilter
from labkit.dataplanes.softirq_clock import SoftirqClock
from labkit.testbed import netfilter, topology
from labkit.traffic import TrafficSpec

SIZE = 64
GENERATORS = ("xdp", "xdp_loop", "trafgen", "testpmd", "testpmd_afxdp")
#: the generators whose frames reach the receiver as XDP frames, and so can feed part two
XDP_FEEDS = ("xdp", "xdp_loop")


def _row(part, generator, variant, trial, measure, value, unit, notes=""):
    return {
        "part": part,
        "generator": generator,
        "variant": variant,
        "trial": trial,
        "size": SIZE,
        "measure": measure,
        "value": float(value),
        "unit": unit,
        "notes": notes,
    }


def _send(gen, spec, received):
    before = received()
    offered = gen.send(spec)
    time.sleep(0.2)
    got = received() - before
    return offered, got


def run(smoke: bool = False, trials: int | None = None) -> pd.DataFrame:
    trials = trials or (2 if smoke else 3)
    count = 200_000 if smoke else 3_000_000
    rows = []
    with topology.Topology(topology.pair()) as topo:
        snd, rcv = topo.iface("snd"), topo.iface("rcv")
        gens = {}
        status = traffic.backends_status()
        try:
            for name in GENERATORS:
                ok, why = status.get(name, (False, "backend not present"))
                if not ok:  # the reason's first part; doctor has the rest
                    rows.append(_into_drop(name, 0)("unavailable", float("nan"), "", why.split("; ")[0]))
                    continue
                gens[name] = traffic.generator(name, snd)
            # ---- generators into a native XDP drop receiver
            with DropFilter() as filt, filt.attach_xdp(rcv, "native"):
                filt.drop_all()
                for t in range(trials):
                    for name, gen in gens.items():
                        n = count if name in XDP_FEEDS else count // 3  # the slower ones: same order of seconds
                        spec = TrafficSpec.between(snd, rcv, size=SIZE, count=n, timeout_s=30)
                        offered, got = _send(gen, spec, filt.dropped)
                        rows += _generator_rows(name, t, offered, got)
            # ---- XDP drop vs iptables raw drop, fed by the fastest generator of XDP frames
            feed = fastest(pd.DataFrame(rows), XDP_FEEDS)
            gen = gens.get(feed)
            if gen is not None:
                spec = TrafficSpec.between(snd, rcv, size=SIZE, count=count)
                with SoftirqClock() as clock:
                    for t in range(trials):
                        with DropFilter() as filt, filt.attach_xdp(rcv, "native"):
                            filt.drop_all()
                            rows += _receiver_rows(feed, "xdp_drop_native", t, *_timed(gen, spec, filt.dropped, clock))
                        with netfilter.rule(topo.host("rcv"), "raw", "PREROUTING", "-i", rcv.name, "-j", "DROP") as r:
                            rows += _receiver_rows(
                                feed, "iptables_raw_drop", t, *_timed(gen, spec, lambda: r.counters()["packets"], clock)
                            )
        finally:
            for g in gens.values():
                g.close()
    rows += _multi_cpu_rows(trials, count)
    return pd.DataFrame(rows)


def _multi_cpu_rows(trials: int, count: int) -> list:
    """The in-kernel generator on every CPU, into a veth with one queue per CPU (so the
    sending CPUs do not share one XDP ring): what this machine can offer at most."""
    import os

    ncpu = len(os.sched_getaffinity(0))
    ok, _ = traffic.backends_status().get("xdp", (False, ""))
    if ncpu < 2 or not ok:
        return []
    name = f"xdp ({ncpu} CPUs, {ncpu} queues)"
    rows = []
    with topology.Topology(topology.pair(queues=ncpu)) as topo:
        snd, rcv = topo.iface("snd"), topo.iface("rcv")
        with DropFilter() as filt, filt.attach_xdp(rcv, "native"), traffic.generator("xdp", snd) as gen:
            filt.drop_all()
            spec = TrafficSpec.between(snd, rcv, size=SIZE, count=count * ncpu, cpus=ncpu, timeout_s=30)
            for t in range(trials):
                offered, got = _send(gen, spec, filt.dropped)
                rows += _generator_rows(name, t, offered, got)
    return rows


def _into_drop(name, t):
    """The rows of trial T of generator NAME into the native XDP drop receiver, by measure."""
    return functools.partial(_row, "generators", name, "xdp_drop_native", t)


def _generator_rows(name, t, offered, got):
    """One trial of generator NAME into the native XDP drop receiver."""
    row = _into_drop(name, t)
    return [
        row("offered_pps", offered.pps, "pps", "; ".join(offered.notes)),
        row("offered", offered.packets, "packets"),
        row("received", got, "packets"),
        row("received_pps", got / offered.seconds if offered.seconds else float("nan"), "pps"),
    ]


def _timed(gen, spec, received, clock):
    """One send: what was offered, what the receiver counted, and the receive path's NET_RX
    time (the generator's own polls left out, where the clock can tell them apart)."""
    s0 = clock.seconds()
    offered, got = _send(gen, spec, received)
    return offered, got, clock.seconds() - s0


def _receiver_rows(feed, variant, t, offered, got, net_rx_s):
    row = functools.partial(_row, "receivers", feed, variant, t)
    return [
        row("offered_pps", offered.pps, "pps", "; ".join(offered.notes)),
        row("received", got, "packets"),
        row("received_pps", got / offered.seconds, "pps"),
        row("loss_ratio", 1 - got / offered.packets, "ratio"),
        row("cpu_ns_per_pkt", net_rx_s * 1e9 / got if got else float("nan"), "ns/packet"),
    ]


#: a receiver that lost less than this share kept up with its generator: its rate is the
#: generator's, not the receiver's
KEPT_UP = 0.01


def receiver_lines(df: pd.DataFrame) -> list[str]:
    """XDP drop against iptables raw, fed by one generator: each one's rate (flagged where
    the generator limited it, and then no ratio of rates is quoted) and the ratio of their
    receive CPU per packet, with the goal."""
    d = df[df["part"] == "receivers"]
    if d.empty:
        return ["receivers: not measured (no generator of XDP frames works here)"]
    med = d.groupby(["variant", "measure"])["value"].median()
    feed = d["generator"].iloc[0]
    out, limited = [], []
    for v in ("xdp_drop_native", "iptables_raw_drop"):
        kept_up = med.get((v, "loss_ratio"), 1.0) < KEPT_UP
        limited += [v] if kept_up else []
        out.append(
            f"receiver {v} fed by {feed}: {med.get((v, 'received_pps'), float('nan')) / 1e6:.2f} Mpps"
            + (
                " (lost nothing: generator-limited, the rate generator and receiver reached together on "
                "shared CPUs, not the receiver's limit)"
                if kept_up
                else f" (lost {med.get((v, 'loss_ratio'), float('nan')):.0%}: the receiver's limit)"
            )
            + f", {med.get((v, 'cpu_ns_per_pkt'), float('nan')):.0f} ns receive CPU per packet"
        )
    if not limited:
        ratio = med[("xdp_drop_native", "received_pps")] / med[("iptables_raw_drop", "received_pps")]
        out.append(f"XDP native drop / iptables raw: {ratio:.2f}x the rate (both receivers saturated)")
    else:
        out.append(
            "XDP native drop / iptables raw: no ratio of rates ("
            + ", ".join(limited)
            + " generator-limited: lost nothing); compare their CPU per packet"
        )
    cpu = med.get(("xdp_drop_native", "cpu_ns_per_pkt")), med.get(("iptables_raw_drop", "cpu_ns_per_pkt"))
    if all(c and c == c for c in cpu):
        out.append(f"receive CPU per packet, XDP native drop / iptables raw: {cpu[0] / cpu[1]:.2f}x (goal <= 0.25)")
    return out


def _received_pps(df: pd.DataFrame) -> pd.Series:
    """Each generator's received_pps trials into the drop receiver (part "generators")."""
    return df[(df["part"] == "generators") & (df["measure"] == "received_pps")].groupby("generator")["value"]


def fastest(df: pd.DataFrame, among=GENERATORS) -> str | None:
    """The generator among AMONG with the highest median received rate, None if none ran."""
    medians = _received_pps(df).median()
    medians = medians[[g for g in medians.index if g in among]]
    return None if medians.empty else str(medians.idxmax())


def lines(df: pd.DataFrame) -> list[str]:
    """One line per generator: `generator NAME: X.XX Mpps into xdp drop, R.RRx trafgen`
    (median received rate over the trials, their min..max), or `unavailable: REASON`."""
    grouped = _received_pps(df)
    stats = grouped.agg(["median", "min", "max"])
    base = stats["median"].get("trafgen")
    out = []
    for name in df["generator"].unique():
        if name in stats.index:
            m = stats.loc[name]
            ratio = f"{m['median'] / base:.2f}x trafgen" if base else "trafgen unavailable"
            out.append(
                f"generator {name}: {m['median'] / 1e6:.2f} Mpps into xdp drop, {ratio} "
                f"(median of {int(grouped.count()[name])}, {m['min'] / 1e6:.2f}..{m['max'] / 1e6:.2f})"
            )
        else:
            why = df[(df["generator"] == name) & (df["measure"] == "unavailable")]["notes"]
            if len(why):
                out.append(f"generator {name}: unavailable: {why.iloc[0]}")
    return out


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max per part, generator, variant and measure."""
    d = df[df["measure"].isin(["offered_pps", "received_pps", "loss_ratio"])]
    return (
        d.groupby(["part", "generator", "variant", "measure"])["value"]
        .agg(["mean", "min", "max", "count"])
        .reset_index()
    )


if __name__ == "__main__":
    import sys

    df = run(smoke="--smoke" in sys.argv)
    pd.set_option("display.width", 200)
    print(summary(df).to_string(index=False))
    print("\n".join(lines(df)))
