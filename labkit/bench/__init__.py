"""`make bench` / `labkit bench`: the workbench's benchmark, as code anyone can rerun.

1. XDP drop at 64 bytes: every drop variant, several trials, offered rate beside each
   figure; the XDP-vs-iptables ratio of CPU per packet; the filter's BPF_PROG_TEST_RUN cost
   against a bare `return XDP_DROP` (goal: at most 1.3x).
2. The eBPF NAT at 64 bytes, 16 flows: the XDP fast path and the tc NAT against iptables NAT
   and plain routing (goals: xdp_nat at least 4x iptables' rate at at most 0.25x its CPU per
   packet; the tc NAT's cost beyond routing at most 0.5x iptables'), and new flows per second.
3. L2 forwarding at 64 bytes: DPDK l2fwd over AF_XDP against af_packet, the ratio per trial
   with its spread (goal: at least 2.5x), beside XDP redirect (labkit.bench.l2fwd).
4. The traffic generators side by side into the same native-XDP drop receiver (xdp,
   xdp_loop, trafgen, testpmd over af_packet and over AF_XDP), one line each with its
   ratio to trafgen, where the generator benchmark module is present.

Numbers go to data/ like any run; the summary is printed. Never a pass/fail timing test.
"""

from __future__ import annotations

import pandas as pd

from labkit import results


def main(smoke: bool = False) -> int:
    from labkit.experiments import xdp_drop

    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    r = xdp_drop.run(
        sizes=[64],
        trials=2 if smoke else 5,
        count=100_000 if smoke else 2_000_000,
        cost_trials=3 if smoke else 10,
        smoke=False,
    )
    print("== XDP drop at 64 bytes ==")
    print(r.headline().to_string(index=False))
    trials = r.part("trial")  # the fixed-count trials only, not the sweeps and searches
    cpu = trials[trials["measure"] == "cpu_ns_per_pkt"].groupby("variant")["value"].mean()
    if {"xdp_native", "iptables_raw"} <= set(cpu.index):
        print(f"\nCPU per packet, xdp_native / iptables_raw: {cpu['xdp_native'] / cpu['iptables_raw']:.2f}")
    if {"xdp_generic", "iptables_raw"} <= set(cpu.index):
        print(f"CPU per packet, xdp_generic / iptables_raw: {cpu['xdp_generic'] / cpu['iptables_raw']:.2f}")
    c = r.costs.groupby("variant")["value"].agg(["mean", "min", "max"])
    print("\nBPF_PROG_TEST_RUN cost per packet (ns):")
    print(c.round(1).to_string())
    bare = c.loc["xdp_drop_bare", "mean"]
    for name in c.index:
        if name != "xdp_drop_bare":
            print(f"  {name}: {c.loc[name, 'mean'] / bare:.2f}x the bare program")
    print("\n" + r.interpretation)
    print(f"\ntable: {r.run_dir}")
    nat_ratios(smoke)
    from labkit.bench import l2fwd as bench_l2fwd

    print("\n" + "\n".join(bench_l2fwd.main(smoke)))
    try:
        from labkit.bench import generators as bench_generators
    except ImportError:
        return 0
    g = bench_generators.run(smoke=smoke)
    rs = results.ResultSet("bench_generators", {"smoke": smoke})
    for r in g.to_dict("records"):
        extra = {k: r[k] for k in ("part", "generator", "notes")}
        rs.add(r["variant"], r["trial"], r["size"], {r["measure"]: (r["value"], r["unit"])}, **extra)
    print(f"\ntable: {rs.save()}")
    print("\n== Generators into a native-XDP drop receiver, 64 bytes ==")
    print(bench_generators.summary(g).to_string(index=False))
    print("\n".join(bench_generators.lines(g)))
    print("\n".join(bench_generators.receiver_lines(g)))
    return 0


def nat_ratios(smoke: bool = False) -> None:
    """The NAT's goals as ratios measured in one run (rotating order, several trials)."""
    from labkit.experiments import nat

    r = nat.run(
        variants=["routing", "tc_nat", "xdp_nat", "iptables"],
        trials=2 if smoke else 5,
        udp_count=100_000 if smoke else 1_000_000,
        new_flows=2000 if smoke else 8000,
        checks=False,
        tcp_seconds=1.0 if smoke else 3.0,
    )
    udp = r.part("udp")
    stats = udp.groupby(["measure", "variant"])["value"].agg(["mean", "min", "max"])
    print("\n== eBPF NAT, 64-byte UDP, 16 flows ==")
    print(r.headline().to_string(index=False))
    pps, cpu = stats.loc["processed_pps"]["mean"], stats.loc["cpu_ns_per_pkt"]["mean"]
    if {"xdp_nat", "iptables"} <= set(pps.index):
        print(
            f"\nxdp_nat / iptables: {pps['xdp_nat'] / pps['iptables']:.2f}x the rate (goal >= 4), "
            f"{cpu['xdp_nat'] / cpu['iptables']:.2f}x the CPU per packet (goal <= 0.25)"
        )
    if {"tc_nat", "iptables", "routing"} <= set(cpu.index):
        extra_tc, extra_ipt = cpu["tc_nat"] - cpu["routing"], cpu["iptables"] - cpu["routing"]
        print(
            f"CPU per packet beyond routing: tc_nat {extra_tc:.0f} ns, iptables {extra_ipt:.0f} ns: "
            f"{extra_tc / extra_ipt:.2f}x (goal <= 0.5)"
        )
    for line in nat.progtime.sentences(r.table):
        print(line)
    new = r.part("newflow")
    if len(new):
        rate = new[new["measure"] == "processed_pps"].groupby("variant")["value"].mean()
        print("new flows per second: " + ", ".join(f"{v} {x / 1e3:.0f}k" for v, x in rate.items()))
    print(f"table: {r.run_dir}")
