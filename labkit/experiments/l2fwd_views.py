"""The L2 forwarding experiment's latency rows and the tables and sentences read from them
(labkit/experiments/l2fwd.py runs the experiment; this is what it records and shows of
latency, and the one table that puts every forwarder's numbers side by side).

- `record_latency`: a variant's latency profile (its PDR, then the probes' delay with no
  load and at fractions of that rate) as rows of kind 'latency', each point's HDR histogram
  among them (`latency_profile.record`), and its CDF points for the plot;
- `latency_summary`: per variant and load, the mean and spread over trials of p50, p90,
  p99, p99.9 and max (microseconds), p50 and p99 of every trial's probes together, the PDR;
- `overview`: forwarded Mpps, DUT CPU per packet, idle cost, memory, and p50/p99 at no
  load and at each load fraction, one row per variant;
- `interpret_latency`: the sentences about latency, each number from its variant's rows.
- `interpret_rates`: the sentences about rates, CPU, losses and idle cost;
- `fed_by`: the line saying which generator fed the run, as what, and what was skipped;
- `summary_view`: the headline's columns in reading order.
"""

from __future__ import annotations

from labkit import measure
from labkit.experiments import FEED_SKB, table_feed
from labkit.experiments import fed_by as _fed_by
from labkit.measure import latency_profile as latency

LOAD = latency.LOAD
#: what a socket-buffer feed means for the XDP forwarder (its native program on the DUT's first port)
SKB_FEED_NOTE = (
    f"the DUT got {FEED_SKB} from the generator: xdp_redirect's native program on dut0 then runs the "
    "veth's slow path (the skb is built first and converted for the program), so its rate and CPU "
    "here are those of the skb path, not of XDP frames"
)


def fed_by(meta: dict | None, table=None) -> str:
    """The run's generator, feed, backends and skipped parts in one line (META, its metadata),
    and where the DUT got socket buffers and xdp_redirect ran, what that means for it."""
    line = _fed_by(meta)
    feed = ((meta or {}).get("feed") or {}).get("receiver_got") or table_feed(table)
    if feed == FEED_SKB and table is not None and "xdp_redirect" in set(table["variant"]):
        line += f" Note: {SKB_FEED_NOTE}."
    return line


def summary_view(summary):
    """The summary with the columns a reader looks at first, in reading order."""
    cols = [
        "variant",
        "size",
        "offered_pps",
        "processed_pps",
        "processed_mbps",
        "loss_ratio",
        "dut_cpu_ns_per_pkt",
        "system_cpu_ns_per_pkt",
        "dpdk_cpu_ns_per_pkt",
        "ovs_cpu_ns_per_pkt",
        "lost_before_dut_pkts",
        "socket_dropped",
        "lost_in_dut_pkts",
        "lost_after_dut_pkts",
    ]
    s = summary[summary["size"].notna()] if "size" in summary.columns else summary
    return s[[c for c in cols if c in s.columns]].reset_index(drop=True)


def record_latency(rs, variant: str, trial: int, size, prof, **extra) -> list[dict]:
    """Rows of PROF (latency_profile.Profile) into RS; the CDF points, for the plot."""
    latency.record(rs, variant, trial, size, prof, **extra)
    return latency.cdf_rows(variant, trial, prof)


#: per variant and load: the PDR, the background rate, each percentile's mean over trials
#: with min and max (µs), p50/p99 of all trials' probes (their HDR histograms), probes received
#: (`labkit.measure.latency_profile.summary`)
latency_summary = latency.summary


def overview(headline, resources, lat):
    """The L2 table: per variant at the smallest size, forwarded Mpps, DUT CPU per packet,
    cores busy with no traffic (the machine's, and the forwarder's own processes'), the
    forwarder's resident memory, and p50/p99 latency
    (microseconds) at no load and at each load fraction of its PDR."""
    import pandas as pd

    if headline is None or headline.empty:
        return pd.DataFrame()
    h = headline[headline["size"] == headline["size"].min()].set_index("variant")
    out = pd.DataFrame(index=h.index)
    out["forwarded_mpps"] = h["processed_pps"] / 1e6
    if "dut_cpu_ns_per_pkt" in h.columns:
        out["dut_cpu_ns_per_pkt"] = h["dut_cpu_ns_per_pkt"]
    if resources is not None and len(resources):
        r = resources.set_index("variant")
        out["idle_busy_cores"] = r["idle_busy_cores"].reindex(out.index)  # the whole machine's, other work too
        if "own_idle_busy_cores" in r.columns:
            out["own_idle_busy_cores"] = r["own_idle_busy_cores"].reindex(out.index)  # the forwarder's processes
        out["rss_mb"] = r["rss_mb"].reindex(out.index)
    if lat is not None and len(lat):
        out["pdr_mpps"] = lat.groupby("variant")["pdr_mpps"].first().reindex(out.index)
        for (f, label), g in lat.groupby([LOAD, "load"]):
            g = g.set_index("variant")
            out[f"p50_us ({label})"] = g["p50_us"].reindex(out.index)
            out[f"p99_us ({label})"] = g["p99_us"].reindex(out.index)
    return out.reset_index()


def interpret_latency(lat, table) -> str:
    """Sentences about latency: who is fastest at no load, how the tail grows under load."""
    if lat is None or lat.empty:
        return ""
    idle = lat[lat[LOAD] == 0].set_index("variant")
    if idle.empty or idle["p50_us"].isna().all():
        return ""
    order = idle["p50_us"].sort_values()
    parts = [
        f"{v} {idle.loc[v, 'p50_us']:.1f} µs (p99 {idle.loc[v, 'p99_us']:.1f}, trials "
        f"{idle.loc[v, 'p50_us_min']:.1f}–{idle.loc[v, 'p50_us_max']:.1f})"
        for v in order.index
    ]
    how = latency.sent_by(lat)
    lines = [
        f"\nOne-way latency with no load (probes at a low rate{', ' + how if how else ''}, median p50): "
        + "; ".join(parts)
        + "."
    ]
    top = lat[LOAD].max()
    if top > 0:
        hi = lat[lat[LOAD] == top].set_index("variant")
        grow = [
            f"{v} p99 {hi.loc[v, 'p99_us']:.1f} µs at {hi.loc[v, 'load_mpps']:.3f} Mpps"
            for v in order.index
            if v in hi.index and hi.loc[v, "p99_us"] == hi.loc[v, "p99_us"]
        ]
        if grow:
            lines.append(
                f"Under background load at {top:.0%} of each forwarder's own PDR: "
                + "; ".join(grow)
                + ". Each forwarder is loaded to its own rate, so a slow one is "
                "probed under a light absolute load."
            )
    polled = [v for v in order.index if v in PORT_CAVEATS and v != "ovs"]
    if polled:
        lines.append(
            f"The polling forwarders ({', '.join(polled)}) wait for their thread to run: on two shared CPUs "
            "a polling thread that the scheduler has set aside delays every packet that arrives meanwhile "
            "(and l2fwd holds a lone packet up to its 100 µs transmit drain), which sets their tail here; "
            "on isolated cores it would not. The kernel forwarders run in the receiving softirq."
        )
    return "\n".join(lines + latency.histogram_lines(lat))


ACROSS_HOSTS_LATENCY = (
    "across hosts: a one-way delay needs the sender's and the receiver's timestamps on one "
    "clock, which separate machines do not share"
)


def hosts_caveats(rs, p, veth: bool, snd, dut, rcv, skipped=()) -> None:
    """What a run across hosts says about itself: where each count came from, which
    columns are empty, which generator `auto` was, where the DUT's ports are veths."""
    rs.caveat(
        f"across hosts ({snd.host.name} -> {dut.name} -> {rcv.host.name}): rates and losses from each host's "
        "counters; the whole-machine CPU columns are empty (this machine's CPU is neither host's), DPDK's and "
        "OVS's own process time was read on the DUT"
    )
    if p.generator == "auto":
        from labkit.experiments.across_hosts import AUTO_ACROSS_HOSTS

        rs.caveat(AUTO_ACROSS_HOSTS)
    if p.latency:
        rs.caveat(f"latency not measured {ACROSS_HOSTS_LATENCY}")
    rs.caveat(
        f"the receiver ({rcv.host.name}) counts arrivals with a bare XDP drop program (native) on {rcv.name}, "
        "in promiscuous mode for the run, in every variant"
    )
    for v in [v for v in p.variants if v in PORT_CAVEATS and veth and v not in skipped]:  # the DUT's ports are veths
        rs.caveat(PORT_CAVEATS[v], v)


#: what each forwarder's ports are, said beside its numbers
PORT_CAVEATS = {
    "dpdk_l2fwd": "DPDK runs over net_af_packet on the veths (no PMD for veth, no hugepages): l2fwd's packets still "
    "cross the kernel's packet sockets, so this is DPDK's cost on virtual ports, not on a NIC",
    "dpdk_l2fwd_afxdp": "DPDK runs over net_af_xdp on the veths: an XDP program redirects each port's frames into an "
    "AF_XDP socket, which a veth serves in copy mode only (it has no zero-copy), and l2fwd's "
    "transmit is a system call per burst that builds an skb per frame; preferred busy polling finds "
    "no NAPI of its own to poll on a veth; with a NIC driver that has XSK zero-copy neither copy "
    "happens",
    "ovs": "Open vSwitch's userspace datapath over system ports: it reads and writes the veths through packet "
    "sockets from its main thread, which loses frames in the socket between polls (OVS documents system "
    "ports on the userspace datapath as a testing path)",
    "ovs_afxdp": "Open vSwitch's userspace datapath over afxdp ports: a PMD thread polls AF_XDP sockets (copy mode "
    "on veths), the OVS counterpart of DPDK over AF_XDP; no openvswitch kernel module is used",
}


def interpret_ports(table, resources, baseline: str, caveats=(), lcores=None) -> list[str]:
    """Sentences comparing port types: DPDK over AF_XDP against af_packet (rate, where the
    packets were lost; what bounds both only where CAVEATS say the ports were veths, with
    l2fwd's LCORES), Open vSwitch against the others, idle cost of polling forwarders."""
    rates = table[(table["measure"] == "processed_pps") & (table["variant"] != baseline)]
    if rates.empty:
        return []
    size = rates["size"].min()
    at = rates[rates["size"] == size].groupby("variant")["value"]
    mean, lo, hi = at.mean(), at.min(), at.max()
    lines = []
    if {"dpdk_l2fwd", "dpdk_l2fwd_afxdp"} <= set(mean.index) and mean["dpdk_l2fwd"] > 0:
        lines += _dpdk_ports(table, size, mean, lo, hi, caveats, lcores)
    for v in ("ovs_afxdp", "ovs"):
        if v in mean.index:
            best = mean.drop(v).idxmax() if len(mean) > 1 else v
            lines.append(
                f"Open vSwitch ({'afxdp' if v == 'ovs_afxdp' else 'system'} ports) forwarded "
                f"{mean[v] / 1e6:.3f} Mpps (trials {lo[v] / 1e6:.3f}–{hi[v] / 1e6:.3f}), "
                f"{mean[v] / mean[best]:.2f}× {best}."
            )
    if resources is not None and len(resources) and "own_idle_busy_cores" in resources.columns:
        r = resources.set_index("variant")
        polling = [
            f"{v} {r.loc[v, 'own_idle_busy_cores']:.2f} cores ({r.loc[v, 'rss_mb']:.0f} MB resident)"
            for v in r.index
            if v in PORT_CAVEATS
        ]
        if polling:
            lines.append(
                "Idle cost of the user-space forwarders' own processes (polling with no traffic): "
                + ", ".join(polling)
                + "."
            )
    return lines


#: the issue's goal for DPDK over AF_XDP against af_packet, forwarded rate at 64 bytes
AFXDP_GOAL = 2.5
#: socket drops within this share of the loss before l2fwd: that loss is l2fwd's own backlog
BACKLOG_TOLERANCE = 0.10


def trial_ratios(table, size=None):
    """Per trial at SIZE (default the smallest): dpdk_l2fwd_afxdp's forwarded rate over
    dpdk_l2fwd's, a pandas Series indexed by trial (empty if either is missing). The one
    reading of that ratio: the interpretation and `make bench` both take it from here."""
    import pandas as pd

    t = (
        table[(table["measure"] == "processed_pps") & (table["kind"] == "trial")]
        if "kind" in table.columns
        else table.iloc[0:0]
    )
    if t.empty:
        return pd.Series(dtype=float)
    t = t[t["size"] == (t["size"].min() if size is None else size)]
    per = t.pivot_table(index="trial", columns="variant", values="value")
    if not {"dpdk_l2fwd", "dpdk_l2fwd_afxdp"} <= set(per.columns):
        return pd.Series(dtype=float)
    return (per["dpdk_l2fwd_afxdp"] / per["dpdk_l2fwd"]).dropna()


def on_veths(caveats) -> bool:
    """Whether CAVEATS (a run's) say its DPDK ports were the namespace testbed's veths: the
    port caveats are recorded only there."""
    marks = [PORT_CAVEATS["dpdk_l2fwd"], PORT_CAVEATS["dpdk_l2fwd_afxdp"]]
    return any(str(c).startswith(m) for c in caveats or () for m in marks)


def _dpdk_ports(table, size, mean, lo, hi, caveats=(), lcores=None) -> list[str]:
    """DPDK over AF_XDP against af_packet: the ratio (per trial where both ran), the goal,
    where the packets were lost, and, on veths (CAVEATS say so), what bounds each there."""
    t = table[(table["size"] == size) & (table["kind"] == "trial")]
    by = t.groupby(["measure", "variant"])["value"]
    tot, avg = by.sum(), by.mean()
    a, p = "dpdk_l2fwd_afxdp", "dpdk_l2fwd"

    def get(s, m, v):
        return float(s.get((m, v), float("nan")))

    share = {v: get(tot, "lost_before_dut_pkts", v) / get(tot, "offered_pkts", v) for v in (a, p)}
    r = trial_ratios(table, size)
    ratio = mean[a] / mean[p]
    spread = f", per trial {r.min():.2f}–{r.max():.2f}" if len(r) > 1 else ""
    goal = "meets" if ratio >= AFXDP_GOAL else "misses"
    lines = [
        f"DPDK l2fwd over AF_XDP forwarded {ratio:.2f}× its rate over af_packet at {int(size)} bytes{spread} "
        f"({goal} the goal of {AFXDP_GOAL}×): {mean[a] / 1e6:.3f} Mpps (trials {lo[a] / 1e6:.3f}–{hi[a] / 1e6:.3f}) "
        f"against {mean[p] / 1e6:.3f} (trials {lo[p] / 1e6:.3f}–{hi[p] / 1e6:.3f}). Offered packets lost before "
        f"l2fwd saw them: AF_XDP {share[a]:.0%} of {get(avg, 'offered_pps', a) / 1e6:.2f} Mpps offered, "
        f"af_packet {share[p]:.0%} of {get(avg, 'offered_pps', p) / 1e6:.2f} Mpps offered."
    ]
    sock = {v: get(tot, "socket_dropped", v) / get(tot, "offered_pkts", v) for v in (a, p)}
    if sock[a] == sock[a] and sock[p] == sock[p]:
        xsk = get(tot, "xsk_rx_dropped", a) + get(tot, "xsk_rx_ring_full", a)  # what the AF_XDP socket dropped
        fill = get(tot, "xsk_fill_ring_empty", a) / xsk if xsk > 0 else float("nan")
        why = (
            (
                f" ({fill:.0%} of those because its fill ring was empty: l2fwd had not yet returned the buffers, "
                "it did not keep up)"
            )
            if fill == fill
            else ""
        )
        text = (
            f"The kernel's own socket counters say where: {sock[a]:.0%} of the offered packets were dropped at "
            f"l2fwd's AF_XDP socket{why} and {sock[p]:.0%} at its packet socket (ring full)"
        )
        backlog = [v for v in (a, p) if share[v] > 0 and abs(sock[v] - share[v]) <= BACKLOG_TOLERANCE * share[v]]
        if backlog == [a, p]:
            text += ", so in both the losses before the DUT are l2fwd's own backlog, not the veth's"
        elif backlog:
            other = p if backlog == [a] else a
            text += (
                f"; over {'AF_XDP' if backlog == [a] else 'af_packet'} that is the loss before l2fwd (its own "
                f"backlog), over {'AF_XDP' if other == a else 'af_packet'} the sockets account for "
                f"{sock[other]:.0%} of the {share[other]:.0%} lost before it, the rest was lost elsewhere"
            )
        lines.append(text + ".")
    ca, cp = get(avg, "dpdk_cpu_ns_per_pkt", a), get(avg, "dpdk_cpu_ns_per_pkt", p)
    if ca == ca and cp == cp and ca > 0 and on_veths(caveats):
        where = f"l2fwd's lcore on CPU(s) {lcores}" if lcores not in (None, "") else "l2fwd's lcore"
        lines.append(
            f"What bounds both on these veths is {where} (it polls, so its CPU per forwarded packet, {ca:.0f} ns over "
            f"AF_XDP and {cp:.0f} ns over af_packet, is the time it was given over what it forwarded, not its work "
            "per packet). On a veth both port types transmit the same way: a system call per burst, an skb "
            "built per frame and handed to the veth, and the receiving veth's NAPI (which converts that skb for its "
            "XDP program, copying it) runs inside the same call on l2fwd's CPU; a perf profile of such a run on a "
            "machine of this kind (not this run's measurement) put the transmit call at about three quarters of "
            "l2fwd's time over AF_XDP, half of it the receiver's NAPI. AF_XDP saves only the receive side (an XDP "
            "redirect and one copy into the socket instead of an skb and a packet-socket copy), and that side runs "
            "on the generator's CPU in both, which is why the af_packet variant is offered less: its skbs are built "
            "in the generator's softirq. The lcore also shares its CPU with every other process of the machine. "
            "With a NIC (zero-copy AF_XDP, the NIC's own transmit) neither copy nor skb happens, and the ratio is "
            "not bounded this way."
        )
    return lines


def plot_latency_cdf(cdf, trial: int = 0):
    """The probes' delay CDF per forwarder, one panel per load (`reporting.plots.latency_cdf`)."""
    from labkit.reporting import plots

    return plots.latency_cdf(cdf, trial)


def plot_latency_percentiles(table):
    """Each forwarder's probes by percentile, one curve per load, from the HDR histograms of
    TABLE (a run's) merged over trials (`reporting.plots.latency_percentiles`, CSIT's axes)."""
    from labkit.reporting import plots

    return plots.latency_percentiles(table, loaded="background at {:.0%} of its PDR")


def interpret_rates(table, resources, baseline: str, caveats=(), lcores=None) -> str:
    """Sentences computed from the data: which forwarder was fastest at the smallest frames,
    by what ratio, at what DUT CPU per packet, who limited the run, and what DPDK cost idle.
    CAVEATS (the run's) and LCORES (l2fwd's) go to `interpret_ports`."""
    rates = table[(table["measure"] == "processed_pps") & (table["variant"] != baseline)]
    if rates.empty:
        return "No forwarding rates were measured."
    size = rates["size"].min()
    at = (
        rates[rates["size"] == size]
        .groupby("variant")["value"]
        .agg(["mean", "min", "max"])
        .sort_values("mean", ascending=False)
    )
    off = table[(table["measure"] == "offered_pps") & (table["size"] == size)].groupby("variant")["value"].mean()
    best, worst = at.index[0], at.index[-1]
    lines = [
        f"At {int(size)}-byte frames, {best} forwarded the most: {at.loc[best, 'mean'] / 1e6:.3f} Mpps "
        f"(trials {at.loc[best, 'min'] / 1e6:.3f}–{at.loc[best, 'max'] / 1e6:.3f}; offered "
        f"{off.get(best, float('nan')) / 1e6:.3f} Mpps)"
        + (
            f", {at.loc[best, 'mean'] / at.loc[worst, 'mean']:.2f}× {worst} ({at.loc[worst, 'mean'] / 1e6:.3f} Mpps)."
            if at.loc[worst, "mean"] > 0
            else f"; {worst} forwarded nothing."
        )
    ]
    parts = [
        f"{v} {at.loc[v, 'mean'] / 1e6:.3f} of {off.get(v, float('nan')) / 1e6:.3f} Mpps offered" for v in at.index
    ]
    lines.append("Forwarded vs offered: " + "; ".join(parts) + ".")
    cpu = table[(table["measure"] == "dut_cpu_ns_per_pkt") & (table["size"] == size)].groupby("variant")["value"].mean()
    if len(cpu):
        lines.append(
            "DUT CPU per forwarded packet (receive-path softirq time beyond the baseline sink's, plus "
            "DPDK's or Open vSwitch's own process time): "
            + ", ".join(f"{v} {c:.0f} ns" for v, c in cpu.sort_values().items())
            + "."
        )
        if "dpdk_l2fwd" in cpu.index:
            lines.append(
                "DPDK's CPU per packet is mostly polling: its lcore is busy whether packets come or not, "
                "so its cost per packet falls as the offered rate rises and is worst at low load."
            )
    fl = table[(table["measure"] == "processed_pps") & (table["size"] == size) & (table["variant"] != baseline)]
    limited = sorted(set(fl[fl["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]["variant"]))
    lossy = sorted(set(fl[fl["flags"].str.contains(measure.LOSS_BEFORE_HOOK, na=False)]["variant"]))
    if limited:
        lines.append(
            f"Generator-limited (forwarded ≥98% of offered): {', '.join(limited)}: their rate is the "
            "generator's, a lower bound; compare their CPU per packet instead."
        )
    if lossy:
        lines.append(f"Lost more than 1% of offered: {', '.join(lossy)} (see the lost_* and lost_at:* measures).")
    if resources is not None and len(resources):
        r = resources.set_index("variant")
        if "dpdk_l2fwd" in r.index:
            d = r.loc["dpdk_l2fwd"]
            others = [v for v in r.index if v not in ("dpdk_l2fwd", baseline)]
            other_idle = ", ".join(f"{v} {r.loc[v, 'idle_busy_cores']:.2f}" for v in others)
            lines.append(
                f"With no traffic at all, DPDK l2fwd kept {d['dpdk_idle_busy_cores']:.2f} of its "
                f"{int(d['lcores'])} lcore(s) busy polling (machine busy {d['idle_busy_cores']:.2f} cores; "
                f"other variants: {other_idle} cores), held {d['rss_mb']:.0f} MB resident of "
                f"{int(d['memory_mb_reserved'])} MB reserved, and used {int(d['hugepages_used'])} hugepages "
                f"({'hugepages on' if d['hugepages'] else 'run with --no-huge'}). The XDP and kernel "
                "variants need no dedicated core, reservation or hugepages: the poster's conclusion, measured."
            )
    return "\n".join(lines + interpret_ports(table, resources, baseline, caveats, lcores))
