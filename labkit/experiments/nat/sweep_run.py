"""Running the NAT's UDP sweep (`labkit.experiments.nat.sweep` says what it measures and
reads its rows): each variant set up as the goal trial sets it up, one trial per point,
the NAT's own counters around it, flows forgotten between points."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from labkit import measure, traffic
from labkit.experiments import rotated
from labkit.experiments.nat.sweep import EBPF_NATS, KIND, PURPOSE, first_sport, points
from labkit.experiments.nat.testbed import INSIDE_NET, NAT_OUTSIDE, NatLab
from labkit.testbed import netfilter


@contextmanager
def _variant(lab: NatLab, variant: str, nat, port_range, target: str):
    """The variant as the goal trial sets it up, except netfilter's NAT, which maps UDP into
    PORT_RANGE as the eBPF NATs do (everything else as the goal trial's rule)."""
    if variant != "iptables":
        with lab.variant(variant, nat):
            yield
        return
    host, base = lab.topo.host("nat"), ["-s", INSIDE_NET, "-o", lab.outside.name]
    lo, hi = port_range
    to = ["--to-ports", f"{lo}-{hi}"] if target == "MASQUERADE" else ["--to-source", f"{NAT_OUTSIDE}:{lo}-{hi}"]
    rest = ["--to-source", NAT_OUTSIDE] if target == "SNAT" else []
    with (
        netfilter.rule(host, "nat", "POSTROUTING", *base, "-j", target, *rest),
        netfilter.rule(host, "nat", "POSTROUTING", *base, "-p", "udp", "-j", target, *to),
    ):  # inserted first
        yield


@contextmanager
def _conntrack(lab: NatLab):
    """pyroute2's Conntrack in the NAT host's namespace, used there: it opens its netlink
    socket on first use, so every call must happen inside the namespace. Like
    hosts.netlink, it lifts a Jupyter kernel's running-loop mark while it works (pyroute2's
    synchronous API drives an asyncio loop of its own)."""
    import asyncio.events

    from pyroute2 import Conntrack

    running = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        with lab.topo.host("nat").entered():
            ct = Conntrack()
            try:
                yield ct
            finally:
                ct.close()
    finally:
        asyncio.events._set_running_loop(running)


def _forget_flows(lab: NatLab, variant: str, nat) -> None:
    """An empty flow table before a point, as on a fresh testbed."""
    if variant in EBPF_NATS:
        nat.clear_flows()
    elif variant == "iptables":
        with _conntrack(lab) as ct:
            ct.flush()


def _nat_counters(lab: NatLab, variant: str, nat) -> dict:
    """{'flows_set_up': n, 'refused_pkts': n} so far (differences over a point count)."""
    if variant in EBPF_NATS:
        st = nat.stats()
        return {
            "flows_set_up": st["out_snat_new"]["packets"],
            "refused_pkts": st["drop_no_port"]["packets"] + st["drop_table_full"]["packets"],
        }
    if variant == "iptables":
        with _conntrack(lab) as ct:
            refused = sum(s.get("insert_failed", 0) for s in ct.stat())  # its "drop" counts them again
            return {"flows_set_up": ct.count(), "refused_pkts": refused}
    return {}


def _point(lab: NatLab, gen, variant: str, nat, size: int, flows: int, count: int, clock, timeout_s: float):
    spec = lab.c1_udp(size=size, count=count, flows=flows, sport=first_sport(flows), timeout_s=timeout_s)
    _forget_flows(lab, variant, nat)
    before = _nat_counters(lab, variant, nat)
    m = lab.c1_trial(gen, spec, clock)
    after = _nat_counters(lab, variant, nat)
    if variant == "iptables":  # a flushed table: what is in it now was set up by this point
        after["flows_set_up"], before["flows_set_up"] = after["flows_set_up"], 0
    return m, {k: after[k] - before[k] for k in after}


def run(p, nat, clock, rs, warm_up, flow_counts: list | None = None) -> None:
    """Every sweep point of Params P for every variant of P, into the ResultSet RS; NAT is
    the loaded eBPF NAT, CLOCK the softirq clock, WARM_UP(lab) resolves neighbours.
    FLOW_COUNTS (default P's) are the flow counts this run sweeps."""
    flow_counts = p.flow_counts if flow_counts is None else flow_counts
    pts = points(p.udp_sizes, flow_counts, p.udp_size, p.udp_flows)
    if not pts:
        return
    from labkit import progress

    with progress.bar(len(pts) * p.sweep_trials * len(p.variants), "nat sweep points", p.progress) as bar:
        for trial in range(p.sweep_trials):
            done = {}
            for variant in rotated(p.variants, trial):
                with NatLab(p.clients, p.offloads) as lab, _variant(lab, variant, nat, p.port_range, p.iptables_target):
                    warm_up(lab)
                    with ExitStack() as stack:
                        gen = stack.enter_context(traffic.generator(p.generator, lab.client_iface(1), PURPOSE))
                        if p.server_sink:
                            stack.enter_context(lab.server_sink())
                        for size, flows in pts:
                            done[variant, size, flows] = _point(
                                lab, gen, variant, nat, size, flows, p.sweep_count, clock, p.timeout_s
                            )
                            bar.update()
            for size, flows in pts:
                measure.mark_generator_limited([done[v, size, flows][0] for v in p.variants])
                for v in p.variants:
                    m, counted = done[v, size, flows]
                    extra = dict(kind=KIND, offloads=p.offloads, flows=flows)
                    rs.add_measurement(v, trial, m, **extra)
                    units = {"flows_set_up": "flows", "refused_pkts": "packets"}
                    rs.add(v, trial, size, {k: (n, units[k]) for k, n in counted.items()}, m.flags, **extra)
    caveats(rs, p, flow_counts)


def caveats(rs, p, flow_counts: list) -> None:
    lo, hi = p.port_range
    rs.caveat(
        f"UDP sweep: {p.sweep_trials} trial(s) of {p.sweep_count} packets per point, each variant's points on "
        "one testbed with its NAT's flows forgotten before each point; netfilter mapped UDP into the port "
        f"range {lo}-{hi} as the eBPF NATs do (the goal trial's rule keeps source ports where it can)"
    )
    over = [f for f in flow_counts if f > hi - lo + 1]
    if over:
        rs.caveat(
            f"UDP sweep: {', '.join(map(str, over))} flows exceed the {hi - lo + 1} ports of one SNAT address's "
            "range: the NATs refused the flows beyond it (their packets dropped, each trying again), so the "
            "rates there are those of a NAT out of ports (see flows_set_up and refused_pkts)"
        )
