"""The XDP fast packet drop experiment: where in the receive path is a packet cheapest to drop?

On a sender -> receiver pair (veths in namespaces, real interfaces, or an inventory's two
hosts: the same run), the same offered load meets, one variant at a time:

- ``stack``: no filter; the kernel stack takes the packet up to UDP, which drops it (no
  listener on the port) — the cost of doing nothing special;
- ``iptables_raw``: an iptables DROP in the raw table's PREROUTING (before conntrack);
- ``tc``: the drop filter as a tc clsact ingress program (after the skb is built);
- ``xdp_generic``: the drop filter as XDP in generic (skb) mode;
- ``xdp_native``: the drop filter as XDP in native (driver) mode, before any skb.

Each variant is measured for several trials and packet sizes, in rotating order so drift
on a shared machine spreads over all of them. Besides the rates, the filter's own cost per
packet is measured with BPF_PROG_TEST_RUN next to a bare `return XDP_DROP` program. With
``latency`` on, the one-way latency of the traffic each variant lets through, with no load
and under a flood it drops (`xdp_drop_latency`); the load tests' tables and sentences are
in `xdp_drop_views`. Whether the receiver got XDP frames or socket buffers from the
generator is measured in every trial (`experiments.Feed`): with socket buffers native XDP
on a veth runs its slow path, and the interpretation says its ratios are about that path.
Each optional part (sweep, search, CPU at fixed loads, program costs, latency) can be
switched off, and one that cannot run here is skipped with its reason; the rest stands.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

from labkit import addresses, capabilities, measure, parameters, references, results, traffic
from labkit.dataplanes import softirq_clock
from labkit.errors import InputError, MissingDependency
from labkit.experiments import (
    FEED_MEANS,
    FEED_SKB,
    Feed,
    Result,
    View,
    across_hosts,
    check_run_shape,
    fed_by,
    saved_metadata,
    smoke_clamp,
    table_feed,
    trial_loop,
)
from labkit.experiments import xdp_drop_latency as latency
from labkit.experiments import xdp_drop_load as load
from labkit.experiments import xdp_drop_mlr as mlr_part
from labkit.experiments import xdp_drop_views as views
from labkit.experiments.xdp_drop_receiver import VARIANTS, drop_receiver, using
from labkit.testbed import inventory, runs, topology
from labkit.testbed.testbeds import testbed_for

EXPERIMENT = "xdp_drop"
NOTEBOOK = "01-xdp-drop"  # the notebook that runs this experiment
RULES = {"udp": "drop UDP (iptables -p udp, filter protocol rule)", "all": "drop everything"}
SKB_PATH = "socket-buffer feed: the skb path"  # beside each XDP ratio of a run fed socket buffers
SKB_MEANS = (
    f"with this feed {FEED_MEANS[FEED_SKB]}: the native vs generic and vs iptables ratios here are about the skb path."
)
#: how the comparison and the index show this experiment: only the fixed-count trials, since
#: sweeps and searches (kind sweep/search/cpu_at_load) are other questions and would blur the spread
VIEW = View(
    EXPERIMENT,
    "Packet drop",
    NOTEBOOK,
    select=(("kind", ("trial", None)),),
    references=(
        (references.XDP_PAPER_XDP_DROP, ("xdp_native", "xdp_generic"), "pps"),
        (references.XDP_PAPER_IPTABLES_RAW, ("iptables_raw",), "pps"),
        (references.POSTER_XDP_DROP, ("xdp_native", "xdp_generic"), "Mbit/s"),
    ),
)
#: a smoke run: one size, one trial, few packets, a two-point sweep, no binary search, a short MLRsearch (smoke_clamp)
SMOKE = {
    "sizes": 1,
    "trials": 1,
    "count": 20_000,
    "cost_repeat": 100_000,
    "cost_trials": 2,
    "sweep_steps": 2,
    "loss_thresholds": 0,
    "cpu_loads": 0,
    "point_s": 0.1,
    "mlr_final_trial_s": 0.1,
    "mlr_time_budget_s": 1.0,
    "latency_loads": 1,
    "latency_probes": 200,
}
#: the testbed's roles: where each is, on the namespace pair
ROLES = {"sender": ("snd", None), "receiver": ("rcv", None)}
#: the parts run only where every host is this machine (they read its CPU or run here)
LOCAL_PARTS = ("sweep", "search", "mlrsearch", "cpu_at_load", "program costs", "latency")
ACROSS_HOSTS = "across hosts (measured only on the namespace testbed or this machine's interfaces)"
plot_latency_cdf = latency.plot_cdf  # the notebook's latency CDF
# the load tests' table and sentences (xdp_drop_views), as the notebook calls them
search_table, load_interpretation, LOAD_KINDS, _interpret_load = (
    views.search_table,
    views.load_interpretation,
    views.LOAD_KINDS,
    views._interpret_load,
)
# MLRsearch's rows, its table, and its side-by-side with the binary search (xdp_drop_mlr)
mlr_found, mlr_table, side_by_side = mlr_part.found, mlr_part.mlr_table, mlr_part.side_by_side


@dataclass
class Params:
    sizes: list = field(default_factory=lambda: [64, 512, 1500])
    trials: int = 3
    count: int = 1_000_000  # packets offered per trial, variant and size
    variants: list = field(default_factory=lambda: list(VARIANTS))
    generator: str = "auto"
    flows: int = 1
    rate_pps: float | None = None
    rule: str = "udp"
    sender_if: str | None = None
    receiver_if: str | None = None
    dst_mac: str | None = None  # real interfaces: the receiver's MAC if the sender is elsewhere
    cost_repeat: int = 1_000_000
    cost_trials: int = 5  # 0: the program costs are not measured
    timeout_s: float = 60.0
    # offered-load sweep, NDR/PDR search and CPU at fixed loads, at the smallest size
    sweep_steps: int = 6  # rates from 10% of the generator's maximum up to it; 0: no sweep
    loss_thresholds: list = field(default_factory=lambda: [0.0, 0.005])  # NDR and PDR 0.5%; []: no search
    cpu_loads: list = field(default_factory=lambda: [0.5e6, 1e6, 2e6])  # pps; []: none
    point_s: float = 0.5  # seconds of traffic per sweep/search point
    # NDR/PDR by MLRsearch beside the binary search, on the same receiver (xdp_drop_mlr)
    mlr_loss_ratios: list = field(default_factory=lambda: [0.0, 0.005])  # [NDR, PDR] loss ratios; []: none
    mlr_final_trial_s: float = 1.0  # its longest trial (seconds): the one its bounds rest on
    mlr_width: float = 0.005  # its goal: upper - lower bound <= width x upper bound
    mlr_time_budget_s: float = 60.0  # per variant (seconds); the bounds found by then are reported
    latency: bool = True  # one-way latency of what each variant lets through (no load, then latency_loads)
    latency_loads: list = field(default_factory=lambda: [0.1, 0.5, 0.9])  # flood, fractions of each variant's PDR
    latency_probes: int = 2000  # probes per latency point
    latency_probe_rate: float = 4000.0  # probes per second
    progress: bool = True  # a text progress bar on stderr
    smoke: bool = False
    inventory: str | None = None  # an Ansible YAML inventory: sender and receiver on other machines

    def validate(self) -> "Params":
        # the values as given are checked first (types, then ranges); smoke shortens after
        parameters.check_fields(self)
        check_run_shape(self.variants, VARIANTS, self.trials, self.sizes, self.count)
        parameters.check_choice("generator", self.generator, traffic.backends_status(), extra=["auto"])
        parameters.check_interface(self.sender_if, "sender_if")
        parameters.check_interface(self.receiver_if, "receiver_if")
        if self.receiver_if and not self.sender_if:
            raise InputError(
                "receiver_if without sender_if: traffic must come from another machine; "
                "name the local sending interface with sender_if"
            )
        if self.rule not in RULES:
            raise InputError(f"rule {self.rule!r}: choose one of {sorted(RULES)}")
        if any(not 0 <= t < 1 for t in self.loss_thresholds):
            raise InputError(f"loss_thresholds {self.loss_thresholds}: ratios in [0, 1), e.g. [0, 0.005]")
        if any(not (isinstance(l, (int, float)) and l > 0) for l in self.cpu_loads):
            raise InputError(f"cpu_loads {self.cpu_loads}: positive rates in packets per second")
        mlr_part.settings(self)  # InputError on a bad MLRsearch setting
        if self.sweep_steps < 0 or self.point_s <= 0:
            raise InputError("sweep_steps must be >= 0 and point_s > 0")
        if self.cost_trials < 0 or self.cost_repeat < 1:
            raise InputError(
                f"cost_trials {self.cost_trials}, cost_repeat {self.cost_repeat}: cost_trials >= 0 "
                "(0: no program costs) and cost_repeat >= 1"
            )
        if self.latency:
            latency.check(self.latency_loads, self.latency_probes, self.latency_probe_rate)
        if self.inventory is not None:
            if self.sender_if or self.receiver_if:
                raise InputError(
                    "inventory with sender_if/receiver_if: name the interfaces in the inventory "
                    "(labkit_interface of the sender and the receiver), not both"
                )
            inventory.parse(self.inventory).require(list(ROLES))
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'trial' (the side-by-side trials), 'sweep', 'search' (NDR/PDR; `search_table` reads
    them), 'cpu_at_load', 'test_run' (rows of the program cost), 'costs' (one row per
    program and trial). The testbed is the namespace pair (or real interfaces), or the
    inventory's sender and receiver hosts: the same run on either."""
    p = Params(**kwargs).validate()
    capabilities.begin_run()  # this run's choices of backends, not an earlier run's in this process
    if p.inventory is None:
        runs.require_root("the XDP drop experiment")
    bed = testbed_for(
        topology.pair(sender_if=p.sender_if, receiver_if=p.receiver_if),
        ROLES,
        p.inventory,
        tools={
            "sender": across_hosts.GENERATOR_TOOLS[across_hosts.generator_for(p.generator, p.inventory is None)],
            "receiver": ["python:bcc", "iptables"],
        },
    )
    with bed, softirq_clock.SoftirqClock() if bed.local else nullcontext() as clock:
        snd, rcv = bed.end("sender"), bed.end("receiver")
        rs = results.ResultSet(EXPERIMENT, _jsonable(p), bed.prefix, data_dir)
        specs = {size: _spec(p, snd, rcv, size, p.rate_pps) for size in p.sizes}
        skipped = {**switched_off(p), **({} if bed.local else dict.fromkeys(LOCAL_PARTS, ACROSS_HOSTS))}
        with (
            bed.hold("receiver", drop_receiver, p.rule) as receiver,
            across_hosts.open_generator(bed, p.generator) as gen,
        ):
            feed = Feed(gen.name, real_interfaces=bool(p.receiver_if) or not bed.local)
            probes = {
                "snd": measure.link_probe(snd),
                "rcv": measure.link_probe(rcv),
                "rcv_stack": measure.snmp_probe(rcv.host),
            }

            def measure_one(variant, size, trial):
                with using(receiver, variant) as processed:
                    return measure.run_trial(
                        lambda: gen.send(specs[size]),
                        processed,
                        size=size,
                        probes=probes,
                        offered_probe=("snd", "tx_packets"),
                        clock=clock,
                    )

            def record(variant, size, trial, m):
                rs.add_measurement(variant, trial, m, generator=gen.name, flows=p.flows, kind="trial", feed=feed.add(m))

            trial_loop(p.variants, p.trials, measure_one, record, sizes=p.sizes, label=EXPERIMENT, show=p.progress)
            if bed.local and (p.sweep_steps or p.loss_thresholds or p.cpu_loads or p.mlr_loss_ratios):
                load.load_tests(p, gen, _spec(p, snd, rcv, min(p.sizes), None), receiver, clock, rs)
            costs = load.program_costs(receiver.value.filt if bed.local else None, snd, rcv, p, rs, skipped)
        cdf = _latency(p, rs, skipped) if bed.local else []
        if bed.local:
            _caveats(rs, p, feed.kind)
        else:
            across_hosts.blank_local_cpu(rs.rows)  # this machine's CPU is neither host's
            rs.caveat(
                f"across hosts ({snd.host.name} -> {rcv.host.name}): rates only (CPU is not measured across "
                "hosts), and load sweeps, searches, program costs and latency were not run"
            )
            if p.generator == "auto":
                rs.caveat(across_hosts.AUTO_ACROSS_HOSTS)
        run_dir = rs.save(
            bed, {"generator": gen.name, "rule": RULES[p.rule], "feed": feed.metadata(), "skipped_parts": skipped}
        )
    return _result(rs, p, run_dir, costs, cdf)


def _spec(p: Params, snd, rcv, size: int, rate_pps) -> traffic.TrafficSpec:
    spec = traffic.TrafficSpec.between(
        snd, rcv, size=size, count=p.count, flows=p.flows, rate_pps=rate_pps, timeout_s=p.timeout_s
    )
    if p.dst_mac:
        spec.dst_mac = addresses.check_mac(p.dst_mac)
    return spec.validate()


def switched_off(p: Params) -> dict:
    """{part: why} for the optional parts P leaves out (a smoke run leaves some out)."""
    smoke = ", in a smoke run" if p.smoke else ""
    off = {
        "sweep": (not p.sweep_steps, "sweep_steps = 0"),
        "search": (not p.loss_thresholds, "loss_thresholds = []"),
        "mlrsearch": (not p.mlr_loss_ratios, "mlr_loss_ratios = []"),
        "cpu_at_load": (not p.cpu_loads, "cpu_loads = []"),
        "program costs": (not p.cost_trials, "cost_trials = 0"),
        "latency": (not p.latency, "latency = False"),
    }
    return {part: why + smoke for part, (is_off, why) in off.items() if is_off}


def _latency(p: Params, rs, skipped: dict) -> list:
    """The latency part where it can run here (its CDF points); where it cannot, the reason
    goes into SKIPPED and the caveats, and the rest of the run stands."""
    why = latency.not_measured(p)
    if p.latency and not why:
        try:
            return latency.measure_all(p, rs, rs.table)
        except MissingDependency as exc:
            why = f"latency was not measured: {str(exc).splitlines()[0]}"
    if why:
        skipped["latency"] = why.removeprefix("latency was not measured").lstrip(": ")
        rs.caveat(why)
    return []


def _result(rs, p: Params, run_dir, costs, cdf) -> Result:
    import pandas as pd

    table = rs.table
    lat = latency.summary(table)
    text = "\n".join(t for t in (interpret(table, costs, saved_metadata(run_dir)), latency.interpret(lat)) if t)
    return Result(
        EXPERIMENT,
        table,
        text,
        rs.caveats,
        run_dir,
        p,
        {"costs": costs, "latency": lat, "latency_cdf": pd.DataFrame(cdf)},
        headline_of=headline,
    )


def _jsonable(p: Params) -> dict:
    from dataclasses import asdict

    return asdict(p)


def _caveats(rs: results.ResultSet, p: Params, feed: str | None) -> None:
    if p.receiver_if:
        return
    rs.caveat(
        "namespace testbed: sender and receiver share this machine's 2 CPUs, so rates are relative, not NIC numbers"
    )
    if feed == FEED_SKB:
        rs.caveat(f"the receiver got {FEED_SKB}: {SKB_MEANS}")
    lossy = {
        r["variant"] for r in rs.rows if r["measure"] == "processed_pps" and measure.LOSS_BEFORE_HOOK in r["flags"]
    }
    if "xdp_native" in lossy:
        rs.caveat(
            "native XDP on a veth lost part of the flood in the veth's own ring before the program ran "
            "(see the lost_at:* measures); a rate is only honest with offered, processed and lost side by side"
        )


def headline(table):
    """One row per variant and size of the side-by-side trials: offered and processed Mpps
    (mean, min..max), loss, CPU per packet, and the flags raised in any trial."""
    import pandas as pd

    if "kind" in table.columns:
        table = table[table["kind"] == "trial"]
    t = table[table["measure"].isin(["offered_pps", "processed_pps", "loss_ratio", "cpu_ns_per_pkt"])]
    if t.empty:
        return pd.DataFrame()
    g = t.groupby(["variant", "size", "measure"])["value"]
    stats = g.agg(["mean", "min", "max"]).unstack("measure")
    flags = (
        table[table["measure"] == "processed_pps"]
        .groupby(["variant", "size"])["flags"]
        .agg(lambda f: ", ".join(sorted({x for v in f for x in str(v).split(";") if x})))
    )
    out = pd.DataFrame(
        {
            "offered Mpps": stats[("mean", "offered_pps")] / 1e6,
            "processed Mpps": stats[("mean", "processed_pps")] / 1e6,
            "min..max": [
                f"{a / 1e6:.3f}..{b / 1e6:.3f}"
                for a, b in zip(stats[("min", "processed_pps")], stats[("max", "processed_pps")])
            ],
            "loss %": stats[("mean", "loss_ratio")] * 100,
            "CPU ns/pkt": stats[("mean", "cpu_ns_per_pkt")],
            "flags": flags,
        }
    ).round({"offered Mpps": 3, "processed Mpps": 3, "loss %": 2, "CPU ns/pkt": 0})
    return out.reset_index().sort_values(["size", "processed Mpps"], ascending=[True, False]).reset_index(drop=True)


def interpret(table, costs, meta: dict | None = None) -> str:
    """A few sentences computed from the data: which generator fed the run and as what (from
    META, the run's metadata, where given), which variant dropped fastest, by what ratio,
    how CPU per packet compares, what limited the run, and where the search found each
    variant's no-drop rate. Where the receiver got socket buffers, the XDP comparisons say
    they are about the skb path."""
    full = table
    head = [fed_by(meta)] if meta is not None else []
    feed = ((meta or {}).get("feed") or {}).get("receiver_got") or table_feed(table)
    skb = feed == FEED_SKB
    table = table[table["kind"] == "trial"] if "kind" in table.columns else table
    rates = table[table["measure"] == "processed_pps"]
    if rates.empty:
        return "\n".join(head + ["No rates were measured."])
    size = rates["size"].min()
    at = rates[rates["size"] == size].groupby("variant")["value"].agg(["mean", "min", "max"])
    at = at.sort_values("mean", ascending=False)
    best, worst = at.index[0], at.index[-1]
    lines = head + [
        f"At {int(size)}-byte frames, {best} processed the most: {at.loc[best, 'mean'] / 1e6:.2f} "
        f"Mpps (trials {at.loc[best, 'min'] / 1e6:.2f}–{at.loc[best, 'max'] / 1e6:.2f}), "
        f"{at.loc[best, 'mean'] / at.loc[worst, 'mean']:.2f}× {worst} "
        f"({at.loc[worst, 'mean'] / 1e6:.2f} Mpps)."
    ]
    path = f" ({SKB_PATH})" if skb else ""
    for a, b in (("xdp_native", "iptables_raw"), ("xdp_generic", "iptables_raw"), ("xdp_native", "stack")):
        if a in at.index and b in at.index:
            lines.append(f"{a} vs {b}: {at.loc[a, 'mean'] / at.loc[b, 'mean']:.2f}× the rate{path}.")
    if skb and {"xdp_native", "xdp_generic"} & set(at.index):
        lines.append(
            f"The receiver got {FEED_SKB}: {SKB_MEANS} An XDP-native advantage over generic XDP, tc or "
            "iptables cannot show in this run; a generator that delivers XDP frames (generator xdp or "
            "xdp_loop, where they can run) can show it."
        )
    cpu = table[(table["measure"] == "cpu_ns_per_pkt") & (table["size"] == size)].groupby("variant")["value"].mean()
    if "iptables_raw" in cpu and any(v in cpu for v in ("xdp_native", "xdp_generic")):
        xdp = "xdp_native" if "xdp_native" in cpu else "xdp_generic"
        lines.append(
            f"CPU per packet on the receiving side: {xdp} {cpu[xdp]:.0f} ns, iptables_raw "
            f"{cpu['iptables_raw']:.0f} ns ({cpu[xdp] / cpu['iptables_raw']:.2f}× iptables"
            + (f"; {SKB_PATH})." if skb else ").")
        )
    flags = table[(table["measure"] == "processed_pps") & (table["size"] == size)]
    limited = sorted(set(flags[flags["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]["variant"]))
    lossy = sorted(set(flags[flags["flags"].str.contains(measure.LOSS_BEFORE_HOOK, na=False)]["variant"]))
    off = table[(table["measure"] == "offered_pps") & (table["size"] == size)].groupby("variant")["value"].mean()
    if limited:
        lines.append(
            "Generator-limited: "
            + ", ".join(
                f"{v} ({at.loc[v, 'mean'] / 1e6:.2f} of {off.get(v, float('nan')) / 1e6:.2f} Mpps offered)"
                for v in limited
            )
            + " processed (nearly) all that was offered, so for them the rate is the generator's, a lower bound; "
            "compare their CPU per packet instead, or raise the offered load."
        )
    if lossy:
        lines.append(f"Lost before the hook (>1% of offered): {', '.join(lossy)}; see the lost_at:* measures.")
    if costs is not None and len(costs):
        c = costs.groupby("variant")["value"].mean()
        bare = c.get("xdp_drop_bare")
        if bare:
            parts = [f"{n} {v:.0f} ns ({v / bare:.2f}× bare)" for n, v in c.items() if n != "xdp_drop_bare"]
            lines.append(f"Program cost (BPF_PROG_TEST_RUN): bare XDP_DROP {bare:.0f} ns; " + "; ".join(parts) + ".")
    if "kind" in full.columns:
        lines += _interpret_load(full) + mlr_part.interpret(full)
    ref = references.XDP_PAPER_XDP_DROP
    if "xdp_native" in at.index:
        lines.append(
            f"For scale: {ref.label} {ref.value / 1e6:.0f} Mpps per core on bare metal; this run: "
            f"{at.loc['xdp_native', 'mean'] / 1e6:.2f} Mpps, "
            f"{at.loc['xdp_native', 'mean'] * size * 8 / 1e6:.0f} Mbit/s "
            f"(the poster reported {references.POSTER_XDP_DROP.value:.0f} Mbit/s)"
            + (f"; fed {FEED_SKB}, so not XDP's fast path." if skb else ".")
        )
    return "\n".join(lines)
