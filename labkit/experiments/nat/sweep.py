"""The NAT experiment's sweep: small-packet UDP beyond the goal point, per variant, at
several frame sizes (``udp_sizes``, at the goal's flow count ``udp_flows``) and several
flow counts (``flow_counts`` distinct source ports, at the goal's frame size
``udp_size``). Rows of kind ``udp_sweep``, with ``size`` and ``flows`` columns: processed
and offered packets per second, NET_RX CPU time per packet (the softirq clock the goal
trial uses), the generator-limited flag, and what the NAT did with the flows
(``flows_set_up``: flows it translated; ``refused_pkts``: packets it dropped for want of
a port or of room in its table).

How it is kept cheap and fair. Each variant gets one freshly built testbed and one
generator for all its points (building and compiling cost seconds; nothing of that is
measured); before every point the NAT's flows are forgotten (the eBPF NAT's flow maps
cleared, netfilter's connection tracking table flushed), so every point starts from an
empty table, as a fresh testbed would. Points run in the same order for every variant;
variants rotate per trial. Two trials of ``sweep_count`` packets per point by default
(the spread of each point is their min..max).

Many flows. Flow f (0..N-1) is source port ``first_sport(N) + f``: from 1024, or for
N beyond 64512 from 65536 - N (65536 flows use every port, 0 included). A generator
that walks the whole port can send them (`FLOW_CAPACITY`: the in-kernel ``xdp``
generator, ``trafgen`` with one sending CPU, the kernel's ``pktgen``); ``testpmd`` does
not send an exact number of flows. With a generator named in ``generator``, `check`
refuses flow counts beyond it; with ``auto`` (the generator the capability probes pick
here, `capacity`) the flow counts beyond it are left out of the run and said so
(`beyond`).

The port space. Every flow goes to one server port, so each needs a port of its own
from the SNAT address's range (``port_range``, 10000 ports by default). Both kinds of
NAT face the same range: the eBPF NATs take ports from it, and the sweep's netfilter
rule maps UDP into it too (``--to-ports``; the goal trial's rule keeps source ports
where it can). A flow count beyond the range cannot be translated whole: the flows
that get no port are refused (the eBPF NAT drops their packets after PORT_PROBES
tries, counted as ``drop_no_port``; netfilter finds no unique tuple, and conntrack
drops the packet at confirmation, counted in its ``insert_failed`` statistic),
and every packet of a refused flow tries again. The rates at such a point are
therefore those of a NAT out of ports, said so in a caveat and in the interpretation.
"""

from __future__ import annotations

from labkit import measure, traffic
from labkit.errors import InputError, MissingDependency
from labkit.packets import check_size

KIND = "udp_sweep"
UDP_SIZES = [64, 512, 1500]
FLOW_COUNTS = [1, 16, 1024, 65536]
FIRST_SPORT = 1024
#: flows each generator can send as distinct source ports, each once per `flows` frames
#: (a backend not named: one)
FLOW_CAPACITY = {"xdp": 65536, "xdp_loop": 65536, "pktgen": 65536, "trafgen": 65536}
EBPF_NATS = ("tc_nat", "xdp_nat")
PURPOSE = "UDP sweep"  # what the sweep's generator serves, in the run's record of choices


def generator_name(generator: str, purpose: str = PURPOSE) -> str:
    """The backend GENERATOR stands for: itself, or for 'auto' the one traffic.choose picks
    here by the capability probes ('none' where no generator can run: the run says why)."""
    try:
        return traffic.choose(generator, purpose)
    except MissingDependency:
        return "none"


def capacity(generator: str, purpose: str = PURPOSE) -> tuple[str, int]:
    """(backend, how many distinct source ports it sends) for GENERATOR ('auto' resolved)."""
    name = generator_name(generator, purpose)
    return name, FLOW_CAPACITY.get(name, 1)


def too_many(flows: list, generator: str, purpose: str = PURPOSE) -> tuple[list, str]:
    """The flow counts of FLOWS that GENERATOR cannot send as distinct source ports, and why."""
    name, top = capacity(generator, purpose)
    many = [f for f in flows if f > top]
    return many, (
        f"the {name!r} generator sends at most {top} distinct source port{'s' if top > 1 else ''} "
        f"(generators that send every port: {', '.join(sorted(FLOW_CAPACITY))})"
        if many
        else ""
    )


def first_sport(flows: int) -> int:
    """The first source port of FLOWS consecutive ones."""
    return FIRST_SPORT if FIRST_SPORT + flows - 1 <= 65535 else 65536 - flows


def check(udp_sizes, flow_counts, count, trials, generator: str) -> None:
    """Sweep parameters this testbed and generator can run (raised before the kernel is
    touched). With generator 'auto' flow counts beyond what it picks here are not refused:
    the run leaves them out (`beyond`)."""
    for name, value in (("udp_sizes", udp_sizes), ("flow_counts", flow_counts)):
        if not isinstance(value, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in value):
            raise InputError(f"{name} {value!r}: a list of whole numbers ([] for none)")
        if len(set(value)) != len(value):
            raise InputError(f"{name} {value!r}: each at most once")
    for s in udp_sizes:
        check_size(s)
    bad = [f for f in flow_counts if not 1 <= f <= 65536]
    if bad:
        raise InputError(f"flow_counts {bad}: 1..65536 distinct source ports")
    if not isinstance(count, int) or isinstance(count, bool) or not 1000 <= count <= 50_000_000:
        raise InputError(f"sweep_count {count!r}: packets per sweep point, 1000..50000000")
    if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 20:
        raise InputError(f"sweep_trials {trials!r}: 1..20 trials per sweep point")
    if generator != "auto" and flow_counts:
        many, why = too_many(flow_counts, generator)
        if many:
            raise InputError(
                f"flow_counts {many}: {why}; keep flow_counts within it, or use one of those generators (or 'auto')"
            )


def beyond(flow_counts: list, generator: str) -> dict:
    """{part: why} where the generator ('auto' resolved) cannot send some of FLOW_COUNTS here
    ({} when it can send them all)."""
    many, why = too_many(flow_counts, generator)
    if not many:
        return {}
    every = len(many) == len(flow_counts)
    return {"UDP sweep by flow count" if every else f"UDP sweep at {', '.join(map(str, many))} flows": why}


def check_count(count: int, flow_counts: list) -> None:
    """Every flow sends at least once per point."""
    if flow_counts and count < max(flow_counts):
        raise InputError(
            f"sweep_count {count}: below the largest flow count {max(flow_counts)}, so some flows "
            "would send nothing; send at least that many packets per point"
        )


def points(udp_sizes: list, flow_counts: list, size: int, flows: int) -> list[tuple[int, int]]:
    """(size, flows) of every sweep point: the sizes at FLOWS, the flow counts at SIZE, each once."""
    return list(dict.fromkeys([(s, flows) for s in udp_sizes] + [(size, f) for f in flow_counts]))


# ---------------------------------------------------------------- reading it
def rows(table):
    """The sweep's rows of TABLE (none if it ran no sweep)."""
    if table is None or "kind" not in table.columns:
        return table.iloc[0:0] if table is not None else table
    return table[table["kind"] == KIND]


def _goal(table, t, column: str):
    """The goal trial's COLUMN (its size or flow count: the run's udp_size / udp_flows, on
    its rows of kind 'udp'); for a table without them, the most frequent value among the
    sweep's rows T."""
    if {"kind", column} <= set(table.columns):
        goal = table[table["kind"] == "udp"][column].dropna()
        if len(goal):
            return goal.iloc[0]
    return t[column].mode().iloc[0] if len(t) else None


def by_size(table, flows: int | None = None):
    """Sweep rows at one flow count (the goal's), grouped by frame size (for plots.grouped_bars)."""
    t = rows(table)
    if not len(t):
        return t
    flows = flows if flows is not None else _goal(table, t, "flows")
    return t[t["flows"] == flows]


def by_flows(table, size: int | None = None):
    """Sweep rows at one frame size (the goal's), with the flow count in the ``size`` column,
    so plots.grouped_bars groups them by flow count (``group_label=flows_label``)."""
    t = rows(table)
    if not len(t):
        return t
    size = size if size is not None else _goal(table, t, "size")
    return t[t["size"] == size].assign(size=lambda d: d["flows"])


def flows_label(n) -> str:
    return f"{int(n)} flow" + ("" if int(n) == 1 else "s")


def _means(t, measure_: str, key: str):
    return t[t["measure"] == measure_].groupby(["variant", key])["value"].agg(["mean", "min", "max"])


def _sentence(t, key: str, unit: str, a: str = "xdp_nat", b: str = "iptables") -> str | None:
    pps, cpu = _means(t, "processed_pps", key), _means(t, "cpu_ns_per_pkt", key)
    keys = sorted(set(t[key]))
    if not {a, b} <= set(t["variant"]):
        return None
    parts = []
    for k in keys:
        try:
            ra = pps.loc[(a, k), "mean"] / pps.loc[(b, k), "mean"]
            rc = cpu.loc[(a, k), "mean"] / cpu.loc[(b, k), "mean"]
        except (KeyError, ZeroDivisionError):
            continue
        parts.append(
            f"{int(k)}{unit if k != 1 else unit.rstrip('s')}: {ra:.2f}× the rate, {rc:.2f}× the CPU per packet"
        )
    if not parts:
        return None
    return f"{a} against {b} by {'frame size' if key == 'size' else 'flow count'}: " + "; ".join(parts) + "."


def interpret(table) -> str:
    """Sentences computed from the sweep's rows and the many-connections TCP rows of TABLE."""
    lines = []
    t = rows(table)
    if len(t) and "flows" in t.columns:
        s, f = by_size(table), by_flows(table).assign(size=lambda d: d["flows"])
        for sub, key, unit in ((s, "size", " B"), (f, "flows", " flows")):
            for a in ("xdp_nat", "tc_nat"):
                line = _sentence(sub, key, unit, a)
                if line:
                    lines.append("Sweep: " + line)
        pps = _means(f, "processed_pps", "flows")
        lo_, hi_ = (min(f["flows"]), max(f["flows"])) if len(f) else (None, None)
        if lo_ is not None and lo_ != hi_:
            kept = [
                f"{v} {pps.loc[(v, hi_), 'mean'] / pps.loc[(v, lo_), 'mean']:.0%}"
                for v in dict.fromkeys(f["variant"])
                if (v, hi_) in pps.index and (v, lo_) in pps.index
            ]
            lines.append(
                f"From {int(lo_)} to {int(hi_)} flows each variant keeps this share of its rate: "
                + ", ".join(kept)
                + "."
            )
        setup = f[f["measure"] == "flows_set_up"].groupby(["variant", "flows"])["value"].mean()
        refused = f[f["measure"] == "refused_pkts"].groupby(["variant", "flows"])["value"].mean()
        short = [(v, n) for (v, n), got in setup.items() if got < 0.99 * n]
        if short:
            lines.append(
                "Flows beyond the port range were refused: "
                + "; ".join(
                    f"{v} at {int(n)} flows set up {setup[(v, n)]:.0f} and refused {refused.get((v, n), float('nan')):.0f} "
                    "packets"
                    for v, n in short
                )
                + "."
            )
        lim = t[(t["measure"] == "processed_pps") & t["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]
        if len(lim):
            lines.append(
                "Generator-limited sweep points (rates are lower bounds): "
                + ", ".join(
                    f"{r.variant} {int(r.size)} B/{flows_label(r.flows)}"
                    for r in lim.drop_duplicates(["variant", "size", "flows"]).itertuples()
                )
                + "."
            )
    tcp = table[table["kind"] == "tcp_streams"] if {"kind", "flows"} <= set(table.columns) else table.iloc[0:0]
    if len(tcp):
        mb, ck = _means(tcp, "tcp_mbps", "flows"), _means(tcp, "tcp_net_rx_ns_per_kb", "flows")
        n = int(mb.index[0][1])
        base = mb.loc[("iptables", n), "mean"] if ("iptables", n) in mb.index else float("nan")
        lines.append(
            f"TCP with {n} concurrent connections (iperf3 -P; mean, min–max over trials): "
            + ", ".join(
                f"{v} {r['mean']:.0f} Mbit/s ({r['min']:.0f}–{r['max']:.0f}"
                + (f", {r['mean'] / base:.2f}× iptables" if v != "iptables" and base == base else "")
                + f"; {ck.loc[(v, k), 'mean']:.0f} ns NET_RX per kB)"
                for (v, k), r in mb.iterrows()
            )
            + "."
        )
        lines += _xdp_tcp_sentence(mb, ck, n)
    return "\n".join(lines)


def _xdp_tcp_sentence(mb, ck, n: int) -> list[str]:
    """Why the XDP variants carry TCP slower than the kernel path on a veth testbed, when
    they do: read from xdp_routing against routing (the same forwarding, no NAT)."""
    have = {v for v, _ in mb.index}
    if not {"xdp_routing", "routing"} <= have:
        return []
    xr, r = mb.loc[("xdp_routing", n), "mean"], mb.loc[("routing", n), "mean"]
    if xr >= 0.9 * r:
        return []
    nat_cost = (
        f"; the translation itself costs xdp_nat {ck.loc[('xdp_nat', n), 'mean'] - ck.loc[('xdp_routing', n), 'mean']:+.0f} "
        "ns NET_RX per kB beyond xdp_routing"
        if "xdp_nat" in have
        else ""
    )
    return [
        f"TCP through the XDP path is slower here before any NAT: xdp_routing {xr:.0f} Mbit/s vs routing {r:.0f} "
        f"({xr / r:.2f}×). While an XDP variant runs, the senders' checksum offload is off (XDP rewrites full "
        "checksums), which also turns off their segmentation offload, so TCP crosses the veths as MTU-sized "
        "frames, each through the XDP programs on its own, where the kernel path forwards 64 kB segments"
        f"{nat_cost}. From a NIC both paths receive MTU-sized frames (the kernel path then merges them with GRO, "
        "which redirected frames skip), so the gap there is of another size, which this testbed does not measure."
    ]
