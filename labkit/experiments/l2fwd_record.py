"""What the L2 forwarding run adds to its record beside the trials: the DUT's idle rows,
its CPU per forwarded packet beyond the baseline sink, and the run's caveats. P is the
experiment's `Params`."""

from __future__ import annotations

from labkit.experiments import l2fwd_views as views
from labkit.experiments.l2fwd_dut import BASELINE, DPDK_VARIANTS, OVS_VARIANTS


def idle(rs, row: dict) -> dict:
    """The rows of ROW (the DUT's busy cores with a variant set up and no traffic)."""
    measures = {
        "idle_busy_cores": (row["idle_busy_cores"], "cores"),
        "own_idle_busy_cores": (row["own_idle_busy_cores"], "cores"),
    }
    if row["lcores"]:
        measures.update(
            {
                "dpdk_idle_busy_cores": (row["dpdk_idle_busy_cores"], "cores"),
                "dpdk_rss_mb": (row["rss_mb"], "MB"),
                "dpdk_hugepages_used": (row["hugepages_used"], "pages"),
            }
        )
    elif row["rss_mb"]:
        measures["ovs_rss_mb"] = (row["rss_mb"], "MB")
    rs.add(row["variant"], 0, None, measures, kind="idle")
    return row


def afxdp_caveat(rs, ax: dict) -> None:
    if ax.get("af_xdp_socket_mode"):  # copy or zero-copy, as the kernel offered it on each port
        rs.caveat(
            "net_af_xdp sockets ran in "
            + ", ".join(f"{m} mode on {k}" for k, m in ax["af_xdp_socket_mode"].items())
            + f" (driver's XDP program: {ax.get('xdp_hook')}); rings of {ax.get('ring_size')} descriptors, "
            f"busy_budget {ax.get('busy_budget')}, lcore {ax.get('lcores')}",
            "dpdk_l2fwd_afxdp",
        )


def dut_cpu(rs) -> None:
    """DUT CPU per forwarded packet: the kernel's receive-path time (exact NET_RX softirq
    time) per packet of a variant minus that of the baseline sink (delivery into the DUT's
    first port) in the same trial and size, plus, for DPDK, its own process's CPU time."""
    import pandas as pd

    t = pd.DataFrame(rs.rows)
    if t.empty or BASELINE not in set(t["variant"]):
        return
    per = t[t["measure"] == "cpu_ns_per_pkt"].set_index(["variant", "trial", "size"])["value"]
    own = t[t["measure"].isin(["dpdk_cpu_ns_per_pkt", "ovs_cpu_ns_per_pkt"])].set_index(["variant", "trial", "size"])[
        "value"
    ]
    for (v, trial, size), value in per.items():
        if v == BASELINE:
            continue
        base = per.get((BASELINE, trial, size))
        if base is not None:
            dut = value - base + float(own.get((v, trial, size), 0.0))
            rs.add(v, trial, size, {"dut_cpu_ns_per_pkt": (dut, "ns/packet")}, kind="trial")


def caveats(rs, p, generator: str, probed: bool, feed: str | None) -> None:
    rs.caveat(
        "namespace testbed: generator, DUT and sink share this machine's 2 CPUs; compare variants as "
        "ratios within this run, not as NIC numbers"
    )
    if feed == views.FEED_SKB and "xdp_redirect" in p.variants and p.xdp_mode == "native":
        rs.caveat(views.SKB_FEED_NOTE, "xdp_redirect")
    sink = "lat_sink (bpf/latency.c: every probe's delay kept, the rest counted)" if probed else "xdp_drop_bare"
    rs.caveat(
        "XDP_REDIRECT into a veth delivers only when the egress veth's peer has an XDP program: the "
        f"receiver runs {sink} (native) as its sink in every variant"
    )
    for v in [v for v in p.variants if v in views.PORT_CAVEATS]:
        rs.caveat(views.PORT_CAVEATS[v], v)
    if set(DPDK_VARIANTS + OVS_VARIANTS) & set(p.variants):
        rs.caveat(
            f"the polling threads run on CPU(s) {p.dpdk_lcores} (l2fwd) and mask {p.ovs_pmd_cpus} (OVS PMD), "
            f"the {generator} generator on CPU 0, where the DUT's receive softirq for its frames runs too; "
            "every other process of this machine shares both CPUs"
        )
    rs.caveat(
        "DUT CPU per packet = NET_RX softirq time per forwarded packet minus the baseline sink's (delivery "
        "into the DUT's first port), plus the own process time of DPDK or Open vSwitch; it includes the "
        "receiver's XDP sink (tens of ns), the same for every variant"
    )
