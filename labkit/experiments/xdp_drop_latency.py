"""One-way latency through 01-xdp-drop's receivers: how much does dropping a flood at XDP,
at tc or in iptables delay the traffic that still gets through?

A drop program ends the path of what it matches, so latency is measured for what each
variant lets through. The testbed gets a third host for it:

    lsnd --(flood + probes)--> lrcv (the variant on its ingress; forwards IPv4) --> lsink

- the **flood** is the experiment's own traffic (UDP to the receiver's address, destination port
  `traffic.TrafficSpec.dport`, 9), at 10%, 50% and 90% (`latency_loads`) of each variant's
  own PDR (the highest rate it drops losing at most 0.5%, as FD.io CSIT measures latency); each
  variant drops it where it always does: ``stack`` at UDP (no listener), ``iptables_raw``
  in raw PREROUTING, ``tc`` and ``xdp_*`` in the drop filter (bpf/drop_filter.c). The
  rule here is "drop UDP to the flood's port" whatever the experiment's ``rule`` is,
  since "drop UDP" (or everything) would drop the probes too;
- the **probes** (bpf/latency.c, `dataplanes.latency.LatencyProbe`: UDP to port 7,
  stamped by the sender's XDP program as they leave) pass the variant's hook, are routed
  by rcv to the sink, and the sink's XDP program keeps every probe's delay, which goes into
  an HDR histogram per point (stored with the run: `labkit.measure.hdr`). Every probe
  crosses the same path in every variant: receive on rcv, the variant's hook, IP
  forwarding, a veth, the sink. What differs is what the flood costs beside them.

The probes are XDP frames, which a veth delivers only to a peer in NAPI mode: for
``stack``, ``iptables_raw`` and ``tc``, a bare native XDP_PASS program sits on rcv's
receiving veth while the probes run (`LatencyProbe.peer_ready`, as the in-kernel
generator does for its sends); ``xdp_native`` has its own filter there; ``xdp_generic``
cannot have a native program beside it, so GRO is turned on for it instead (NAPI without
a program). Where live frames are refused, the probes are sent with AF_PACKET and stamped
at the sender's tc egress instead: they arrive as socket buffers and need none of this
(the XDP_PASS program is then not attached). Latency thus makes sense for all five
variants, each measured; the caveats say what each one pays for the probes' delivery.
It does not on real interfaces or across an inventory's hosts (no sink host behind the receiver, no shared clock): `not_measured`
says so, as a caveat of the run.

    cdf = xdp_drop_latency.measure_all(p, rs, search_rows)   # rows of kind 'latency' into rs
    lat = xdp_drop_latency.summary(rs.table)             # percentiles with spread, per variant and load
    xdp_drop_latency.interpret(lat)                      # the sentences
    xdp_drop_latency.plot_percentiles(rs.table)          # the histograms by percentile, CSIT's axes

The PDR each load is a fraction of comes from the experiment's own PDR search (its rows of
measure pdr_pps at loss 0.5%) where it ran, else from a short MLRsearch here.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from labkit import bpf, progress, traffic
from labkit.dataplanes.drop_filter import DropFilter
from labkit.dataplanes.latency_probe import LIVE_FRAMES, LatencyProbe, sink_neighbour
from labkit.errors import InputError
from labkit.experiments import l2fwd_views as views
from labkit.experiments import rotated
from labkit.experiments import xdp_drop_receiver as receiver
from labkit.measure import latency_profile as latency_profile
from labkit.measure import mlr
from labkit.testbed import netfilter, topology
from labkit.traffic.xdpgen import GroOn

LOAD = views.LOAD
SENDER_ADDR, RECEIVER_ADDR = "10.11.0.1/24", "10.11.0.2/24"
FORWARD_ADDR, SINK_ADDR = "10.12.0.1/24", "10.12.0.2/24"
FLOOD_PORT = traffic.TrafficSpec.dport  # the generator's default destination port: what the filters drop
NDR_LOSS = 0.001  # the short search's "no drop" (its PDR: latency_profile.PDR_LOSS)
SEARCH_BUDGET_S = {False: 15.0, True: 3.0}  # the short search's time budget, by smoke
PASS_PROGRAM = "a bare native XDP_PASS program on the receiver's veth (probe delivery)"  # peer_ready's
#: what each variant pays so that the probes (XDP frames) reach rcv's veth at all
DELIVERY = {
    "stack": PASS_PROGRAM,
    "iptables_raw": PASS_PROGRAM,
    "tc": PASS_PROGRAM,
    "xdp_generic": "GRO turned on on the receiver's veth (probe delivery beside a generic program)",
    "xdp_native": "nothing: its own native filter puts the veth in NAPI mode",
}
#: instead of PASS_PROGRAM for probes sent with AF_PACKET (live frames refused)
SKB_DELIVERY = "nothing: AF_PACKET probes arrive as socket buffers, which need no XDP program on the receiver's veth"


def check(loads, probes, probe_rate) -> None:
    """The latency parameters, before the kernel is touched."""
    latency_profile.check(loads, probes, probe_rate, NDR_LOSS)


def not_measured(p) -> str | None:
    """Why latency is not measured in this run (None: it is)."""
    if not p.latency:
        return None
    if p.inventory is not None:
        return "latency was not measured across hosts (its probe sink needs the namespace testbed's shared clock)"
    if p.sender_if or p.receiver_if:
        return (
            "latency was not measured on real interfaces: the probes need a sink host behind the receiver "
            "and one clock at both ends (the namespace testbed)"
        )
    return None


def spec() -> topology.TopologySpec:
    """snd -> rcv -> sink; rcv forwards, so what its hook lets through reaches the sink. The
    hosts are named lsnd, lrcv and lsink, so that they live beside the experiment's own pair
    (a run's namespaces share its prefix)."""
    return topology.TopologySpec(
        hosts=["lsnd", "lrcv", "lsink"],
        links=[
            topology.LinkSpec("lsnd", "lrcv", SENDER_ADDR, RECEIVER_ADDR),
            topology.LinkSpec("lrcv", "lsink", FORWARD_ADDR, SINK_ADDR),
        ],
        forwarding=["lrcv"],
    )


@contextmanager
def _iptables_flood(rcv, filt: DropFilter, rule: str):
    with netfilter.rule(
        rcv.host, "raw", "PREROUTING", "-i", rcv.name, "-p", "udp", "--dport", str(FLOOD_PORT), "-j", "DROP"
    ) as r:
        yield lambda: r.counters()["packets"]


@contextmanager
def _xdp_generic_napi(rcv, filt: DropFilter, rule: str):
    with GroOn(rcv), filt.attach_xdp(rcv, "generic"):  # NAPI mode beside a generic program
        yield filt.dropped


#: each variant as the latency part sets it up: the receiver's own set-ups, with iptables
#: dropping only the flood's port and generic XDP beside GRO
SETUPS = {**receiver.SETUPS, "iptables_raw": _iptables_flood, "xdp_generic": _xdp_generic_napi}


def variant(name: str, rcv, filt: DropFilter):
    """VARIANT on rcv's ingress, dropping UDP to FLOOD_PORT; yields its drop counter."""
    if name not in SETUPS:
        raise InputError(f"unknown variant {name!r}")
    return SETUPS[name](rcv, filt, "udp")


def search_pdr(search_rows) -> dict:
    """{variant: PDR (pps)}: the median of the experiment's PDR searches (loss ratio
    `latency_profile.PDR_LOSS`, 0.5%), from its rows of measure pdr_pps: MLRsearch's where
    it ran (kind `mlr.KIND`), else the binary search's."""
    if search_rows is None or not len(search_rows) or "measure" not in search_rows.columns:
        return {}
    t = search_rows[search_rows["measure"] == "pdr_pps"]
    if "threshold" in t.columns:  # first: a search at another loss ratio is no PDR here
        t = t[(t["threshold"] - latency_profile.PDR_LOSS).abs() < 1e-9]
    if "kind" in t.columns:
        t = t[t["kind"] != latency_profile.KIND]
        if (t["kind"] == mlr.KIND).any():
            t = t[t["kind"] == mlr.KIND]
    return {v: float(x) for v, x in t.groupby("variant")["value"].median().items() if x > 0}


def measure_all(p, rs, search_rows=None) -> list[dict]:
    """Every variant of P, every trial (rotated), at the smallest size: the probes with no
    load and under the flood at each of P.latency_loads of the variant's PDR. Rows of kind
    'latency' (each point's HDR histogram among them) go into RS; returns the CDF points."""
    size = min(p.sizes)
    pdr = search_pdr(search_rows)
    sp = spec()
    sp.validate()
    cdfs = []
    with topology.Topology(sp) as topo, ExitStack() as stack:
        snd, rcv = topo.iface("lsnd"), topo.iface("lrcv", "lsnd")
        out, sink = topo.iface("lrcv", "lsink"), topo.iface("lsink")
        filt = stack.enter_context(DropFilter())
        filt.clear()
        filt.drop_port(FLOOD_PORT)
        probe = stack.enter_context(LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=sink.address))
        stack.enter_context(sink_neighbour(rcv.host, sink.address, sink.mac, out.name))
        stack.enter_context(bpf.attach_xdp(sink, probe.sink(), "native"))
        gen = stack.enter_context(traffic.generator(p.generator, snd))
        flood = traffic.TrafficSpec.between(
            snd, rcv, size=size, count=p.count, flows=p.flows, timeout_s=p.timeout_s
        ).validate()
        steps = [(t, v) for t in range(p.trials) for v in rotated(p.variants, t)]
        for trial, name in progress.iterate(steps, "latency", p.progress, unit="variant"):
            with variant(name, rcv, filt) as dropped:
                prof = latency_profile.profile(
                    probe,
                    gen,
                    flood,
                    dropped,
                    loads=p.latency_loads,
                    probes=p.latency_probes,
                    probe_rate=p.latency_probe_rate,
                    ndr_loss=NDR_LOSS,
                    search_trial_s=0.2 if p.smoke else 0.5,
                    search_budget_s=SEARCH_BUDGET_S[bool(p.smoke)],
                    pdr_pps=pdr.get(name),
                )
            cdfs += views.record_latency(rs, name, trial, size, prof, generator=gen.name)
    source = (
        "the experiment's PDR search (MLRsearch where it ran)"
        if pdr
        else f"a short MLRsearch here (PDR: loss <= {latency_profile.PDR_LOSS:.1%})"
    )
    rs.caveat(
        f"latency: probes (UDP port 7) pass each variant's hook on the receiver, which forwards them to a sink host "
        f"that keeps every probe's delay (an HDR histogram per point); the flood (UDP port {FLOOD_PORT}) is dropped "
        f"by the variant under a port rule, at fractions of the variant's own PDR from {source}"
    )
    for name in p.variants:
        how = SKB_DELIVERY if probe.method != LIVE_FRAMES and DELIVERY[name] == PASS_PROGRAM else DELIVERY[name]
        rs.caveat(f"latency probes reach the receiver through {how}", name)
    return cdfs


#: per variant and load: percentiles (µs) with min and max over trials, p50/p99 of all trials'
#: probes (their HDR histograms), PDR and background load (Mpps), probes received
#: (`labkit.measure.latency_profile.summary`)
summary = latency_profile.summary


def table(lat):
    """SUMMARY for reading: per variant and load, the PDR and the flood reached (Mpps), p50
    and p99 (µs, mean over trials, with min..max), p50 and p99 of every trial's probes
    together (their merged HDR histogram), p99.9 and max, probes received."""
    import pandas as pd

    if lat is None or not len(lat):
        return pd.DataFrame()
    rng = lambda q: [f"{a:.1f}..{b:.1f}" for a, b in zip(lat[f"{q}_us_min"], lat[f"{q}_us_max"])]  # noqa: E731
    return pd.DataFrame(
        {
            "variant": lat["variant"],
            "load": lat["load"],
            "PDR Mpps": lat["pdr_mpps"].round(3),
            "flood Mpps": lat["load_mpps"].round(3),
            "p50 µs": lat["p50_us"].round(1),
            "p50 min..max": rng("p50"),
            "p99 µs": lat["p99_us"].round(1),
            "p99 min..max": rng("p99"),
            "p50 µs (all trials)": lat["p50_us_all"].round(1),
            "p99 µs (all trials)": lat["p99_us_all"].round(1),
            "p99.9 µs": lat["p99.9_us"].round(1),
            "max µs": lat["max_us"].round(1),
            "probes": lat["probes"].astype(int),
        }
    )


def interpret(lat) -> str:
    """Sentences computed from SUMMARY: the fastest at no load, and per variant how the
    tail of what passes grew under the flood it dropped."""
    if lat is None or not len(lat):
        return ""
    idle = lat[lat[LOAD] == 0].set_index("variant")
    if idle.empty or idle["p50_us"].isna().all():
        return ""
    order = idle["p50_us"].sort_values().index
    parts = [
        f"{v} p50 {idle.loc[v, 'p50_us']:.1f} µs (trials {idle.loc[v, 'p50_us_min']:.1f}–"
        f"{idle.loc[v, 'p50_us_max']:.1f}), p99 {idle.loc[v, 'p99_us']:.1f}"
        for v in order
    ]
    how = latency_profile.sent_by(lat)
    lines = [
        f"One-way latency of the traffic each variant lets through (probes {how + ', ' if how else ''}"
        "forwarded by the receiver to a sink), with no flood: " + "; ".join(parts) + "."
    ]
    top = lat[LOAD].max()
    if top > 0:
        hi = lat[lat[LOAD] == top].set_index("variant")
        grow = {
            v: hi.loc[v, "p99_us"] / idle.loc[v, "p99_us"]
            for v in order
            if v in hi.index and hi.loc[v, "p99_us"] == hi.loc[v, "p99_us"] and idle.loc[v, "p99_us"] > 0
        }
        if grow:
            ranked = sorted(grow, key=lambda v: hi.loc[v, "p99_us"])
            lines.append(
                f"Under a flood the variant drops, at {top:.0%} of its own PDR: "
                + "; ".join(
                    f"{v} p99 {hi.loc[v, 'p99_us']:.1f} µs (trials {hi.loc[v, 'p99_us_min']:.1f}–"
                    f"{hi.loc[v, 'p99_us_max']:.1f}; {grow[v]:.1f}× its no-load p99) beside a flood of "
                    f"{hi.loc[v, 'load_mpps']:.2f} Mpps" + _short(hi.loc[v, "load_mpps"], top * hi.loc[v, "pdr_mpps"])
                    for v in ranked
                )
                + "."
            )
            best, worst = ranked[0], ranked[-1]
            if best != worst and hi.loc[best, "p99_us"] > 0:
                lines.append(
                    f"Passing traffic waited least behind a flood dropped by {best} and most behind one "
                    f"dropped by {worst} ({hi.loc[worst, 'p99_us'] / hi.loc[best, 'p99_us']:.1f}× the p99). "
                    "Each variant is flooded at its own rate, so a variant with a higher PDR "
                    "carries a heavier flood here: compare p99 together with the Mpps beside it."
                )
    return "\n".join(lines + latency_profile.histogram_lines(lat))


def _short(reached: float, target: float) -> str:
    """' (target T: the generator fell short)' where the flood reached under 90% of its target."""
    return f" (target {target:.2f}: the generator fell short)" if reached < 0.9 * target else ""


def plot_cdf(cdf, trial: int = 0):
    """The probes' delay CDF per variant, one panel per load, titled for a flood the variant
    drops, plain tick labels (`reporting.plots.latency_cdf`). Returns the figure."""
    from labkit.reporting import plots

    return plots.latency_cdf(cdf, trial, loaded="a flood it drops, at {:.0%} of its PDR", plain=True)


def plot_percentiles(table):
    """Each variant's probes by percentile, one curve per flood, from the HDR histograms of
    TABLE (a run's) merged over trials (`reporting.plots.latency_percentiles`, CSIT's axes)."""
    from labkit.reporting import plots

    return plots.latency_percentiles(table, loaded="a flood it drops, at {:.0%} of its PDR")
