"""How a NAT run reads: its headline table, its interpretation, and what a notebook cell
says for a part the run left out. The parts a parameter can leave out are declared here
(`PARTS`); the run records which it left out and why (metadata "skipped_parts", the
Result's part 'skipped'), and the interpretation's first line says so, beside which
generator fed the run and which backend served its new flows and its sweep."""

from __future__ import annotations

from labkit import measure
from labkit.experiments import FEED_SKB, Result, fed_by
from labkit.experiments.nat import progtime, sweep

#: names of earlier runs: read as today's
ALIASES = {"ebpf": "tc_nat"}
#: the parts of a run that a parameter can leave out: part -> the kind of its rows
PARTS = {
    "correctness checks": "check",
    "new flows": "newflow",
    "TCP with many connections": "tcp_streams",
    "UDP sweep by frame size": "udp_sweep",
    "UDP sweep by flow count": "udp_sweep",
    "programs' own time": "prog",
}


def kind_of(part: str) -> str:
    """The kind of rows PART of a run (a name of PARTS, or 'UDP sweep at N flows') holds."""
    return PARTS.get(part) or ("udp_sweep" if part.startswith("UDP sweep") else "")


def left_out(result: Result, what: str) -> str:
    """One line saying why RESULT has nothing of WHAT (a kind of rows, or a part of PARTS):
    switched off, or nothing here could run it."""
    sk = result.parts.get("skipped")
    whys = [f"{r.part} ({r.why})" for r in sk.itertuples() if what in (r.kind, r.part)] if sk is not None else []
    return "Not measured in this run: " + ("; ".join(whys) if whys else f"no {what} rows (see the caveats)")


def shown(result: Result, what: str, rows) -> bool:
    """For a notebook cell that shows WHAT (a kind of rows, or a part of PARTS) from ROWS:
    True where there is something to show; else it prints `left_out`'s line and is False.
    A part of PARTS the run left out is not shown even where ROWS holds other parts' rows
    (the by-size sweep's cell without udp_sizes, say, holds the flow sweep's point at the
    goal size)."""
    sk = result.parts.get("skipped")
    off = what in PARTS and sk is not None and what in set(sk["part"])
    if len(rows) and not off:
        return True
    print(left_out(result, what))
    return False


def canonical(table):
    """TABLE with the variant names of earlier runs read as today's (``ebpf`` -> ``tc_nat``)."""
    if table is None or "variant" not in getattr(table, "columns", ()):
        return table
    return table.assign(variant=table["variant"].replace(ALIASES))


def headline(table):
    """One row per variant: UDP, new flows and TCP side by side (a part the run left out
    reads "not run")."""
    import pandas as pd

    table = canonical(table)
    rows = []
    perf = table[table["kind"].isin(["udp", "tcp", "newflow"])] if "kind" in table.columns else table
    for variant, g in perf.groupby("variant", sort=False):
        udp = g[g["kind"] == "udp"] if "kind" in g.columns else g
        new = g[g["kind"] == "newflow"] if "kind" in g.columns else g.iloc[0:0]

        def stat(measure_, f="mean", t=g):
            v = t[t["measure"] == measure_]["value"]
            return getattr(v, f)() if len(v) else float("nan")

        rows.append(
            {
                "variant": variant,
                "UDP Mpps": stat("processed_pps", t=udp) / 1e6,
                "UDP min..max": f"{stat('processed_pps', 'min', udp) / 1e6:.3f}..{stat('processed_pps', 'max', udp) / 1e6:.3f}",
                "offered Mpps": stat("offered_pps", t=udp) / 1e6,
                "UDP NET_RX ns/pkt": stat("cpu_ns_per_pkt", t=udp),
                "UDP CPU ns/pkt (all)": stat("system_cpu_ns_per_pkt", t=udp),
                "new flows k/s": stat("processed_pps", t=new) / 1e3,
                "new flow NET_RX ns": stat("cpu_ns_per_pkt", t=new),
                "TCP Mbit/s": stat("tcp_mbps"),
                "TCP min..max": f"{stat('tcp_mbps', 'min'):.0f}..{stat('tcp_mbps', 'max'):.0f}",
                "TCP NET_RX ns/kB": stat("tcp_net_rx_ns_per_kb"),
                "TCP CPU ns/kB (all)": stat("tcp_cpu_ns_per_kb"),
                "trials": int((udp["measure"] == "processed_pps").sum()),
            }
        )
    out = pd.DataFrame(rows).round(
        {
            "UDP Mpps": 3,
            "offered Mpps": 3,
            "UDP NET_RX ns/pkt": 0,
            "UDP CPU ns/pkt (all)": 0,
            "new flows k/s": 1,
            "new flow NET_RX ns": 0,
            "TCP Mbit/s": 0,
            "TCP NET_RX ns/kB": 0,
            "TCP CPU ns/kB (all)": 0,
        }
    )
    if len(out) and "kind" in perf.columns and not (perf["kind"] == "newflow").any():
        out[["new flows k/s", "new flow NET_RX ns"]] = "not run"
    return out


def _ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def _spread(s) -> str:
    return f"{s['mean'] / 1e6:.3f} Mpps ({s['min'] / 1e6:.3f}–{s['max'] / 1e6:.3f})"


def interpret(table, checks, cpu: bool = True, meta: dict | None = None) -> str:
    """Sentences computed from the data: which generator fed the run and as what, which
    backend served the new flows and the sweep, and the parts left out (from META, the run's
    metadata, where given); correctness per variant, then the fast path and the tc NAT
    against iptables and against their routing baselines, new flows, TCP, the programs' own
    time, and the issue's goals met or not. CPU=False (across hosts, where CPU is not
    measured) leaves out every clause about CPU and keeps the rest."""
    table = canonical(table)
    lines = [fed_by(meta)] if meta is not None else []
    skb = ((meta or {}).get("feed") or {}).get("receiver_got") == FEED_SKB
    if checks is not None and len(checks):
        checks = canonical(checks) if "variant" in checks.columns else checks
        by = checks.groupby("variant", sort=False) if "variant" in checks.columns else [("eBPF NAT", checks)]
        for v, c in by:
            failed = c[~c["ok"]]
            lines.append(
                f"Correctness through {v}: {int(c['ok'].sum())} of {len(c)} checks passed with real traffic "
                f"(offloads={c['offloads'].iloc[0]})"
                + ("." if failed.empty else "; FAILED: " + "; ".join(failed["check"]) + ".")
            )
    kind = table["kind"] if "kind" in table.columns else None

    def means(measure_, k="udp"):
        t = table[(table["measure"] == measure_) & ((kind == k) if kind is not None else True)]
        return t.groupby("variant")["value"].agg(["mean", "min", "max"])

    pps, tcp = means("processed_pps"), means("tcp_mbps", "tcp")
    cpu = means("cpu_ns_per_pkt") if cpu else pps.iloc[:0]  # no CPU: no variant has any
    have = set(pps.index)
    label = {"tc_nat": "eBPF NAT", "xdp_nat": "eBPF NAT with its XDP fast path"}
    for nat_, base in (("tc_nat", "routing"), ("xdp_nat", "xdp_routing")):
        if {nat_, "iptables"} <= have:
            e, i = pps.loc[nat_], pps.loc["iptables"]
            lines.append(
                f"Small-packet UDP ({nat_}): {label[nat_]} {_spread(e)} vs iptables NAT {_spread(i)}: "
                f"{_ratio(e['mean'], i['mean']):.2f}× the rate."
            )
            if {nat_, "iptables"} <= set(cpu.index):
                ce, ci = cpu.loc[nat_, "mean"], cpu.loc["iptables", "mean"]
                lines.append(
                    f"  NET_RX CPU per packet (all CPUs): {nat_} {ce:.0f} ns vs iptables {ci:.0f} ns "
                    f"({_ratio(ce, ci):.2f}×)."
                )
        if {nat_, base} <= have:
            ns = (
                f"{cpu.loc[nat_, 'mean'] - cpu.loc[base, 'mean']:+.0f} ns of NET_RX per packet, "
                if {nat_, base} <= set(cpu.index)
                else ""
            )
            lines.append(
                f"  {nat_} against its baseline {base}: {ns}"
                f"{_ratio(pps.loc[nat_, 'mean'], pps.loc[base, 'mean']):.0%} of its rate."
            )
    if {"tc_nat", "iptables", "routing"} <= have:
        r = pps.loc["routing", "mean"]
        lines.append(
            f"Against plain forwarding ({r / 1e6:.3f} Mpps): tc_nat keeps {_ratio(pps.loc['tc_nat', 'mean'], r):.0%}, "
            f"iptables {_ratio(pps.loc['iptables', 'mean'], r):.0%} of the rate."
        )
    if {"tc_nat", "iptables", "routing"} <= set(cpu.index):
        r = cpu.loc["routing", "mean"]
        me, mi = cpu.loc["tc_nat", "mean"] - r, cpu.loc["iptables", "mean"] - r
        lines.append(
            f"Marginal cost over plain routing: tc_nat {me:+.0f} ns, iptables {mi:+.0f} ns per packet "
            f"({_ratio(me, mi):.2f}× iptables'; the goal is at most 0.5×)."
        )
    udp = table[kind == "udp"] if kind is not None else table
    offered = udp[udp["measure"] == "offered_pps"].groupby("variant")["value"].mean()
    limited = udp[(udp["measure"] == "processed_pps") & udp["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]
    if len(limited):
        lines.append(
            "Generator-limited in some trials ("
            + ", ".join(
                f"{v}: {pps.loc[v, 'mean'] / 1e6:.3f} of {offered.get(v, float('nan')) / 1e6:.3f} Mpps offered"
                for v in sorted(set(limited["variant"]))
                if v in pps.index
            )
            + "): the variant forwarded (nearly) all "
            "that was offered, so those rates are lower bounds"
            + ("; CPU per packet is the better comparison." if len(cpu) else ".")
        )
    new = means("processed_pps", "newflow")
    if "iptables" in new.index:
        lines.append(
            "New flows per second (every packet a new flow): "
            + ", ".join(
                f"{v} {new.loc[v, 'mean'] / 1e3:.0f}k ({_ratio(new.loc[v, 'mean'], new.loc['iptables', 'mean']):.2f}× iptables)"
                for v in new.index
                if v != "iptables"
            )
            + f"; iptables {new.loc['iptables', 'mean'] / 1e3:.0f}k."
        )
    if {"tc_nat", "iptables"} <= set(tcp.index):
        for v in [v for v in ("tc_nat", "xdp_nat") if v in tcp.index]:
            e, i = tcp.loc[v], tcp.loc["iptables"]
            lines.append(
                f"TCP (iperf3, one stream): {v} {e['mean']:.0f} Mbit/s ({e['min']:.0f}–{e['max']:.0f}) vs "
                f"iptables {i['mean']:.0f} Mbit/s ({i['min']:.0f}–{i['max']:.0f}): "
                f"{_ratio(e['mean'], i['mean']):.2f}×."
            )
    lines += progtime.sentences(table)
    if {"xdp_nat", "iptables"} <= have:
        rate = _ratio(pps.loc["xdp_nat", "mean"], pps.loc["iptables", "mean"])
        goals = f"Goals: xdp_nat at {rate:.2f}× iptables' rate (goal ≥ 4×: {'met' if rate >= 4 else 'not met'})"
        if {"xdp_nat", "iptables"} <= set(cpu.index):
            c = _ratio(cpu.loc["xdp_nat", "mean"], cpu.loc["iptables", "mean"])
            goals += f" and {c:.2f}× its CPU per packet (goal ≤ 0.25×: {'met' if c <= 0.25 else 'not met'})"
        lines.append(
            goals
            + (
                f"; fed {FEED_SKB}, so the XDP fast path ran its skb path here and these ratios do "
                "not show its advantage."
                if skb
                else "."
            )
        )
    more = sweep.interpret(table)
    lines += [more] if more else []
    return "\n".join(lines) if lines else "Nothing was measured."
