"""`make bench`, L2 forwarding: DPDK l2fwd over net_af_xdp against net_af_packet at 64 bytes,
in one run with interleaved trials (the issue's goal: at least 2.5x), beside XDP redirect.

    lines = bench_l2fwd.main(smoke=False)      # printed by `make bench`

Per trial the two DPDK variants run back to back (rotating order), so their ratio is taken
trial by trial: the mean ratio and its spread over trials, each variant's forwarded rate,
what was lost before l2fwd saw it, and l2fwd's own CPU per forwarded packet. The
interpretation of the run (`l2fwd_views.interpret_ports`) says what bounds each.
"""

from __future__ import annotations

VARIANTS = ["dpdk_l2fwd", "dpdk_l2fwd_afxdp", "xdp_redirect"]


def ratios(table):
    """Per trial at the smallest size: dpdk_l2fwd_afxdp's forwarded rate over dpdk_l2fwd's,
    as a pandas Series indexed by trial (`l2fwd_views.trial_ratios`, which the
    interpretation reads too)."""
    from labkit.experiments import l2fwd_views

    return l2fwd_views.trial_ratios(table)


def summary(table):
    """Mean, min and max over trials of the measures the ratio is read with, per variant."""
    ms = [
        "offered_pps",
        "processed_pps",
        "lost_before_dut_pkts",
        "socket_dropped",
        "lost_in_dut_pkts",
        "dpdk_cpu_ns_per_pkt",
        "dut_cpu_ns_per_pkt",
    ]
    t = table[table["measure"].isin(ms) & (table["kind"] == "trial")]
    return t.groupby(["variant", "measure"])["value"].agg(["mean", "min", "max", "count"]).reset_index()


def main(smoke: bool = False, trials: int | None = None) -> list[str]:
    """Run the comparison and return the lines `make bench` prints."""
    from labkit.experiments import l2fwd

    r = l2fwd.run(
        variants=VARIANTS,
        sizes=[64],
        trials=trials or (2 if smoke else 5),
        count=100_000 if smoke else 1_000_000,
        latency=False,
        idle_s=0.5,
        progress=False,
    )
    rt = ratios(r.table)
    lines = [
        "== L2 forwarding at 64 bytes: DPDK l2fwd over AF_XDP vs af_packet ==",
        summary(r.table).to_string(index=False),
    ]
    if len(rt):
        pps = r.table[(r.table["measure"] == "processed_pps") & (r.table["kind"] == "trial")]
        mean = pps.groupby("variant")["value"].mean()
        lines.append(
            f"\nl2fwd AF_XDP / af_packet forwarded rate at 64 bytes: "
            f"{mean['dpdk_l2fwd_afxdp'] / mean['dpdk_l2fwd']:.2f}x the mean rates; trial by trial "
            f"{rt.mean():.2f}x (min {rt.min():.2f}, max {rt.max():.2f}, {len(rt)} trials); goal >= 2.5"
        )
    lines += ["", r.interpretation, f"table: {r.run_dir}"]
    return lines
