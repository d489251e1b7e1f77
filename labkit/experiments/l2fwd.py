"""The L2 forwarding experiment: DPDK l2fwd (over af_packet and AF_XDP) vs XDP redirect vs the
Linux bridge vs tc redirect vs Open vSwitch's userspace datapath, in rate, CPU and latency.

Topology: sender ``snd`` -> device under test ``dut`` with two ports (``dut0`` from the
sender, ``dut1`` to the receiver) -> receiver ``rcv``. The DUT's ports carry no address.
On the same topology, in one run, one variant at a time (in rotating order per trial):

- ``dpdk_l2fwd``: DPDK's l2fwd over net_af_packet ports on dut0/dut1, one polling lcore,
  MAC updating on (dst 02:00:00:00:00:01, src the egress port's MAC);
- ``dpdk_l2fwd_afxdp``: the same l2fwd over net_af_xdp ports (an AF_XDP socket per port,
  copy mode on veths), tuned as DPDK's guide says: rings of ``dpdk_afxdp_ring`` descriptors,
  the lcore away from the generator's CPU, preferred busy polling where it helps
  (``dpdk_afxdp_busy_budget``, with the interfaces' NAPI deferral set for the run; off by
  default: on a veth the driver's busy poll finds no NAPI of its own to run, and the NAPI
  deferral it needs leaves the veth's NAPI waiting for it, so skb senders such as trafgen
  stall); how it was tuned goes into the run's
  metadata (``variant_setup``), and the kernel's drop counters of l2fwd's sockets into the
  rows (``socket_dropped``: lost at the socket before l2fwd saw the packet);
- ``ovs`` / ``ovs_afxdp``: Open vSwitch's userspace datapath (its own ovsdb-server and
  ovs-vswitchd for the run, labkit.ovs) with one flow dut0 -> dut1 and the same MAC
  rewrite, over ``system`` ports (packet sockets) or ``afxdp`` ports (a PMD thread polling
  AF_XDP sockets, pinned by ``ovs_pmd_cpus``);
- ``xdp_redirect``: bpf/xdp_fwd.c on dut0 and dut1, redirecting through a devmap with the
  same MAC rewrite;
- ``bridge``: a Linux bridge over dut0 and dut1;
- ``tc_redirect`` (optional): the same forwarding as a tc clsact ingress program;
- ``baseline_sink``: not a forwarder: dut0 drops everything with a bare XDP program. It
  measures what the generator and the delivery into the DUT cost, which the DUT CPU per
  packet of the forwarders is computed against.

The receiver's interface has the MAC l2fwd writes (02:00:00:00:00:01) and a bare XDP drop
program as the sink in every variant: it counts what arrives, keeps the receiver's CPU
cost the same for all, and is what XDP_REDIRECT into a veth needs to deliver at all (the
egress veth's peer must have an XDP program).

Measured per trial, variant and frame size: offered (the generator's own rate),
forwarded at the receiver (``processed_*``), lost and where (generator -> DUT -> receiver
counters), CPU of the whole machine per forwarded packet, the DUT's share of it against the
baseline, and for DPDK its own process's CPU, memory and hugepages; per variant once, the
CPU it burns with no traffic at all (``idle_busy_cores``). With ``latency`` on, per trial
and forwarder at the smallest frame size: its no-drop rate and the one-way latency of
probes (bpf/latency.c; the receiver's sink is then the probe sink) with no load and with
background load at ``latency_loads`` of that rate (labkit.measure.latency_profile).
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from labkit import bpf, capabilities, dpdk, measure, ovs, parameters, references, results, traffic
from labkit.dataplanes import softirq_clock
from labkit.dataplanes.latency_probe import LatencyProbe
from labkit.dataplanes.xdp_fwd import XdpForwarder
from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.experiments import Feed, Result, View, check_run_shape, saved_metadata, smoke_clamp, trial_loop
from labkit.experiments import l2fwd_views as views
from labkit.measure import latency_profile as latency_profile
from labkit.testbed import inventory, runs, topology
from labkit.testbed.bridge import Bridge

EXPERIMENT = "l2fwd"
NOTEBOOK = "02-l2-forwarding"  # the notebook that runs this experiment
VARIANTS = ["dpdk_l2fwd", "dpdk_l2fwd_afxdp", "xdp_redirect", "bridge", "tc_redirect", "ovs", "ovs_afxdp"]
DPDK_VARIANTS, OVS_VARIANTS = ("dpdk_l2fwd", "dpdk_l2fwd_afxdp"), ("ovs", "ovs_afxdp")
BASELINE = "baseline_sink"
HOST_ROLES = ("sender", "dut", "receiver")  # what an inventory must name for this experiment
RECEIVER_MAC = dpdk.l2fwd_mac(1)  # what l2fwd writes for frames leaving port 1
SENDER_ADDR, RECEIVER_ADDR = "10.11.0.1/24", "10.11.0.2/24"
#: how the comparison and the index show this experiment: the DUT's CPU beyond the baseline sink,
#: since DPDK polls in user space where softirq time would not see it
VIEW = View(EXPERIMENT, "L2 forwarding", NOTEBOOK, cpu="dut_cpu_ns_per_pkt",
            cpu_label="DUT CPU per forwarded packet (beyond the baseline sink)", exclude=(BASELINE,),
            select=(("kind", ("trial", None)),),
            references=((references.XDP_PAPER_DPDK_DROP, ("dpdk_l2fwd",), "pps"),))
#: a smoke run: one size, one trial, few packets, a short idle window (see smoke_clamp)
plot_latency_cdf = views.plot_latency_cdf  # the notebook's latency CDF
SMOKE = {"sizes": 1, "trials": 1, "count": 20_000, "idle_s": 0.5, "latency_probes": 200, "ndr_iterations": 5}


@dataclass
class Params:
    sizes: list = field(default_factory=lambda: [64, 512, 1500])
    trials: int = 3
    count: int = 200_000
    variants: list = field(default_factory=lambda: list(VARIANTS))
    baseline: bool = True  # measure the baseline sink too (needed for DUT CPU per packet)
    generator: str = "auto"  # the in-kernel generator where it works, else trafgen
    xdp_mode: str = "native"  # XDP mode of xdp_redirect on the DUT ports
    dpdk_lcores: str = "1"  # l2fwd's lcore(s) (-l)
    dpdk_memory_mb: int = 512  # l2fwd's -m
    dpdk_queues_per_lcore: int | None = None  # -q; None: enough for the lcores
    dpdk_framecnt: int = 4096  # frames in each net_af_packet ring (the PMD's default 512 overflows under load)
    dpdk_afxdp_ring: int = 4096  # descriptors per AF_XDP ring (l2fwd is built with it; its own is 1024)
    dpdk_afxdp_busy_budget: int = 0  # net_af_xdp busy_budget; 0 (off) on veths: it polls nothing there and stalls them; 64 on a NIC
    ovs_xdp_mode: str = "native"  # xdp-mode of Open vSwitch's afxdp ports: native or generic
    ovs_pmd_cpus: str = "0x2"  # CPU mask of Open vSwitch's PMD threads (CPU 1: away from the generator)
    mac_updating: bool = True
    idle_s: float = 1.0  # the no-traffic window per variant (busy-polling cost)
    timeout_s: float = 60.0
    latency: bool = True  # one-way latency per forwarder at the smallest size (no load, then latency_loads)
    latency_loads: list = field(default_factory=lambda: [0.5, 0.9])  # background, fractions of the no-drop rate
    latency_probes: int = 2000  # probes per latency point
    latency_probe_rate: float = 2000.0  # probes per second
    ndr_loss: float = 0.001  # loss ratio that still counts as no drop in the no-drop-rate search
    ndr_iterations: int = 8  # trials of that search (binary search steps)
    progress: bool = True  # a text progress bar on stderr
    smoke: bool = False
    inventory: str | None = None  # an Ansible YAML inventory: sender, DUT and receiver on other machines

    def validate(self) -> "Params":
        # the values as given are checked first (types, then ranges); smoke shortens after
        parameters.check_fields(self)
        parameters.check_choice("generator", self.generator, traffic.backends_status(), extra=["auto"])
        check_run_shape(self.variants, VARIANTS, self.trials, self.sizes, self.count)
        if self.xdp_mode not in bpf.XDP_MODES:
            raise InputError(f"xdp_mode {self.xdp_mode!r}: choose 'native' or 'generic'")
        if self.idle_s < 0:
            raise InputError("idle_s must be >= 0 (0 skips the no-traffic window)")
        if set(DPDK_VARIANTS) & set(self.variants):
            # everything about l2fwd that can be checked without the kernel
            eal = dpdk.EalOptions(lcores=self.dpdk_lcores, memory_mb=self.dpdk_memory_mb)
            eal.lcore_ids()
            dpdk.L2fwdOptions(portmask=0x3, queues_per_lcore=self.dpdk_queues_per_lcore,
                              ring_size=self.dpdk_afxdp_ring).validate(2, len(eal.lcore_ids()))
            dpdk.Port.af_xdp("x", busy_budget=self.dpdk_afxdp_busy_budget)
        if self.ovs_xdp_mode not in ovs.XDP_MODES:
            raise InputError(f"ovs_xdp_mode {self.ovs_xdp_mode!r}: choose one of {ovs.XDP_MODES}")
        if self.latency:
            latency_profile.check(self.latency_loads, self.latency_probes, self.latency_probe_rate, self.ndr_loss)
            if not 1 <= self.ndr_iterations <= 30:
                raise InputError(f"ndr_iterations {self.ndr_iterations}: 1..30 steps of the search")
        if self.inventory is not None:
            inventory.parse(self.inventory).require(HOST_ROLES)
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def spec() -> topology.TopologySpec:
    """sender -> dut (two ports) -> receiver; the receiver has the MAC l2fwd writes."""
    return topology.TopologySpec(
        hosts=["snd", "dut", "rcv"],
        links=[topology.LinkSpec("snd", "dut", SENDER_ADDR, None, a_name="snd0", b_name="dut0"),
               topology.LinkSpec("dut", "rcv", None, RECEIVER_ADDR, b_mac=RECEIVER_MAC, a_name="dut1", b_name="rcv0")])


# ---------------------------------------------------------------- the XDP/tc forwarder


# ---------------------------------------------------------------- one variant, set up
class Setup:
    """A variant ready to forward: `extra()` gives its own counters, `cpu()` its own CPU."""

    def __init__(self, name):
        self.name = name
        self.l2fwd = None
        self.fwd = None
        self.ovs = None
        self.notes = {}  # how it was set up, for the run's metadata (e.g. AF_XDP copy or zero-copy)

    def own_counters(self) -> dict:
        if self.l2fwd is not None:
            st = self.l2fwd.next_stats()
            return {"l2fwd_rx_port0": st[0].received, "l2fwd_tx_port1": st[1].sent,
                    "l2fwd_dropped": sum(s.dropped for s in st.values()), **self.l2fwd.socket_drops()}
        if self.fwd is not None:
            c = self.fwd.counters()
            return {"prog_redirected": c["redirected"], "prog_refused": c["refused"]}
        if self.ovs is not None:
            st = self.ovs.port_stats()
            p0, p1 = self.ovs.ports
            return {"ovs_rx_port0": st[p0].get("rx_packets", 0), "ovs_tx_port1": st[p1].get("tx_packets", 0),
                    "ovs_dropped": sum(v for s_ in st.values() for k, v in s_.items() if k.endswith("_dropped"))}
        return {}

    def own_cpu(self) -> float | None:
        """CPU seconds of the forwarder's own processes (DPDK's l2fwd, Open vSwitch's daemons)."""
        if self.l2fwd is not None:
            return self.l2fwd.proc.cpu_seconds()
        return self.ovs.cpu_seconds() if self.ovs is not None else None


@contextmanager
def variant(name: str, topo, p: Params, fwd: XdpForwarder | None, sink_fn):
    d0, d1 = topo.iface("dut", "snd"), topo.iface("dut", "rcv")
    s = Setup(name)
    if name in DPDK_VARIANTS:
        afxdp = name == "dpdk_l2fwd_afxdp"
        eal = dpdk.EalOptions(lcores=p.dpdk_lcores, memory_mb=p.dpdk_memory_mb)
        app = dpdk.L2fwdOptions(portmask=0x3, queues_per_lcore=p.dpdk_queues_per_lcore, stats_period_s=1,
                                mac_updating=p.mac_updating, ring_size=p.dpdk_afxdp_ring if afxdp else None)
        ports = ([dpdk.Port.af_xdp(d, busy_budget=p.dpdk_afxdp_busy_budget) for d in (d0, d1)] if afxdp
                 else [dpdk.Port.af_packet(d, framecnt=p.dpdk_framecnt) for d in (d0, d1)])
        with ExitStack() as st:
            if afxdp and p.dpdk_afxdp_busy_budget:  # preferred busy polling needs NAPI deferral on the ports
                st.enter_context(dpdk.BusyPollSettings(topo.host("dut"), [d0.name, d1.name]))
            s.l2fwd = l2 = st.enter_context(dpdk.L2fwd(topo.host("dut"), ports, eal, app))
            s.notes = _dpdk_setup(l2, p, afxdp, d0)
            l2.next_stats()  # its statistics run before traffic starts
            yield s
    elif name in OVS_VARIANTS:
        port_type = "afxdp" if name == "ovs_afxdp" else "system"
        with ovs.OvsSwitch(topo.host("dut"), [d0, d1], port_type=port_type, xdp_mode=p.ovs_xdp_mode,
                           pmd_cpus=p.ovs_pmd_cpus) as sw:
            macs = {"set_dst": RECEIVER_MAC, "set_src": d1.mac} if p.mac_updating else {}
            sw.forward(0, 1, **macs)
            s.ovs, s.notes = sw, {"ovs_port_type": port_type, "ovs_version": ovs.status()[1]}
            if port_type == "afxdp":
                s.notes["ovs_xdp_mode"] = p.ovs_xdp_mode
            yield s
    elif name == "xdp_redirect":
        with fwd.attach_xdp(p.xdp_mode):
            s.fwd = fwd
            yield s
    elif name == "tc_redirect":
        with fwd.attach_tc():
            s.fwd = fwd
            yield s
    elif name == "bridge":
        with Bridge(topo.host("dut"), [d0, d1]):
            yield s
    elif name == BASELINE:
        with bpf.attach_xdp(d0, sink_fn, "native"):
            yield s
    else:
        raise InputError(f"unknown variant {name!r}")


# ---------------------------------------------------------------- the run
def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'trial' (the side-by-side trials), 'idle' (rows of the no-traffic window), 'resources'
    (what each variant takes from the machine: the poster's conclusion, measured)."""
    p = Params(**kwargs).validate()
    capabilities.begin_run()  # this run's choices of backends, not an earlier run's in this process
    if p.inventory is not None:
        from labkit.experiments import l2fwd_hosts
        return l2fwd_hosts.run(p, data_dir)
    runs.require_root("the L2 forwarding experiment")
    if "dpdk_l2fwd" in p.variants:
        dpdk.build_l2fwd()  # before any namespace: a missing DPDK fails early
    if "dpdk_l2fwd_afxdp" in p.variants:
        dpdk.build_l2fwd(ring_size=p.dpdk_afxdp_ring)
    sp = spec()
    sp.validate()
    skipped = {v: ovs.status()[1] for v in OVS_VARIANTS if v in p.variants and not ovs.status()[0]}
    order_all = ([BASELINE] if p.baseline else []) + [v for v in p.variants if v not in skipped]
    with topology.Topology(sp) as topo:
        snd, rcv = topo.iface("snd"), topo.iface("rcv")
        d0, d1 = topo.iface("dut", "snd"), topo.iface("dut", "rcv")
        rs = results.ResultSet(EXPERIMENT, asdict(p), topo.run.prefix, data_dir)
        resources, off = [], switched_off(p)
        with ExitStack() as stack:
            bare = stack.enter_context(bpf.load("xdp_minimal"))
            sink_fn = bare.function("xdp_drop_bare")
            probe = _latency_probe(stack, p, snd, rcv, off)
            stack.enter_context(bpf.attach_xdp(rcv, probe.sink() if probe else sink_fn, "native"))
            fwd = None
            if {"xdp_redirect", "tc_redirect"} & set(p.variants):
                fwd = stack.enter_context(XdpForwarder([d0, d1], p.mac_updating))
            gen = stack.enter_context(traffic.generator(p.generator, snd))
            feed = Feed(gen.name)
            clock = stack.enter_context(softirq_clock.SoftirqClock())
            time.sleep(0.2)
            specs = {size: traffic.TrafficSpec.between(snd, rcv, size=size, count=p.count, timeout_s=p.timeout_s)
                     for size in p.sizes}
            for s in specs.values():
                s.validate()
            for name in [v for v in order_all if v in OVS_VARIANTS + ("dpdk_l2fwd_afxdp",)]:
                try:  # a forwarder that cannot start here is left out; the others still run
                    with variant(name, topo, p, fwd, sink_fn):
                        pass
                except LabkitError as exc:
                    skipped[name] = str(exc).splitlines()[0]
                    order_all.remove(name)
            notes, cdfs = {}, []

            def measure_one(name, size, trial):
                with variant(name, topo, p, fwd, sink_fn) as setup:
                    notes[name] = setup.notes
                    if p.idle_s > 0 and name not in {r["variant"] for r in resources}:
                        resources.append(_idle(name, setup, p.idle_s, rs))
                    m, extra = _trial(name, setup, gen, specs[size], snd, d0, d1, rcv, clock)
                    prof = None
                    if probe is not None and name != BASELINE and size == min(p.sizes):
                        prof = latency_profile.profile(
                            probe, gen, specs[size], lambda: rcv.stats()["rx_packets"], loads=p.latency_loads,
                            probes=p.latency_probes, probe_rate=p.latency_probe_rate, ndr_loss=p.ndr_loss,
                            ndr_seconds=0.2 if p.smoke else 0.5, ndr_iterations=p.ndr_iterations)
                    return m, extra, prof

            def record(name, size, trial, measured):
                m, extra, prof = measured
                f = feed.add(m)
                rs.add_measurement(name, trial, m, generator=gen.name, kind="trial", feed=f)
                rs.add(name, trial, size, extra, m.flags, generator=gen.name, kind="trial", feed=f)
                if prof is not None:
                    cdfs.extend(views.record_latency(rs, name, trial, size, prof, generator=gen.name))

            # the baseline sink shows the generator's full speed; forwarders that kept up with it at
            # that speed are marked generator-limited by the loop
            trial_loop(order_all, p.trials, measure_one, record, sizes=p.sizes, label=EXPERIMENT, show=p.progress)
        _dut_cpu(rs)
        _caveats(rs, p, gen.name, probe is not None, feed.kind)
        for name, why in skipped.items():
            rs.caveat(f"not run: {why}", name)
        ax = notes.get("dpdk_l2fwd_afxdp", {})
        if ax.get("af_xdp_socket_mode"):  # copy or zero-copy, as the kernel offered it on each port
            rs.caveat("net_af_xdp sockets ran in " + ", ".join(f"{m} mode on {k}" for k, m in
                                                              ax["af_xdp_socket_mode"].items())
                      + f" (driver's XDP program: {ax.get('xdp_hook')}); rings of {ax.get('ring_size')} descriptors, "
                      f"busy_budget {ax.get('busy_budget')}, lcore {ax.get('lcores')}", "dpdk_l2fwd_afxdp")
        sink = "lat_sink (bpf/latency.c)" if probe else "xdp_drop_bare"
        run_dir = rs.save(topo, {"generator": gen.name, "receiver_sink": f"{sink} (native) on rcv0",
                                 "resources": resources, "variant_setup": notes, "skipped_variants": skipped,
                                 "feed": feed.metadata(), "skipped_parts": off})
    table = rs.table
    import pandas as pd

    res = pd.DataFrame(resources)
    lat = views.latency_summary(table)
    parts = {"resources": res, "latency": lat, "latency_cdf": pd.DataFrame(cdfs),
             "overview": views.overview(headline(table), res, lat)}
    text = (views.fed_by(saved_metadata(run_dir), table) + "\n" + interpret(table, res, rs.caveats, p.dpdk_lcores)
            + views.interpret_latency(lat, table))
    return Result(EXPERIMENT, table, text, rs.caveats, run_dir, p, parts, headline_of=headline)


def switched_off(p: Params) -> dict:
    """{part: why} for the optional parts P leaves out."""
    off = {"latency": (not p.latency, "latency = False"), "idle cost": (not p.idle_s, "idle_s = 0"),
           "DUT CPU per packet": (not p.baseline, "baseline = False: no baseline sink to subtract")}
    return {part: why for part, (is_off, why) in off.items() if is_off}


def _latency_probe(stack: ExitStack, p: Params, snd, rcv, off: dict):
    """The latency probe (entered into STACK) where latency is on and probes can be sent
    here; else None, the reason in OFF."""
    if not p.latency:
        return None
    try:
        return stack.enter_context(LatencyProbe(snd, dst_mac=rcv.mac, dst_ip=rcv.address))
    except MissingDependency as exc:
        off["latency"] = str(exc).splitlines()[0]
        return None


def _dpdk_setup(l2, p: Params, afxdp: bool, d0) -> dict:
    """How l2fwd was tuned, for the run's metadata: ports and their options, lcore, burst,
    and for AF_XDP the socket mode (copy or zero-copy), the XDP hook the driver attached,
    ring size, busy polling and the NAPI settings it needs."""
    notes = {"ports": [str(x) for x in l2.ports], "port_options": {str(x): dict(x.devargs) for x in l2.ports},
             "lcores": p.dpdk_lcores, "burst": 32, "stats_period_s": l2.app.stats_period_s,
             "mac_updating": p.mac_updating, "memory_mb": p.dpdk_memory_mb, "hugepages": False}
    if afxdp:
        notes.update({"af_xdp_socket_mode": l2.socket_modes(), "xdp_hook": bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED"),
                      "ring_size": p.dpdk_afxdp_ring, "busy_budget": p.dpdk_afxdp_busy_budget,
                      "napi_settings": dict(dpdk.BUSY_POLL_SETTINGS) if p.dpdk_afxdp_busy_budget else {}})
    else:
        notes.update({"framecnt": p.dpdk_framecnt, "qdisc_bypass": "driver default (on)"})
    return notes


def _trial(name, setup, gen, tspec, snd, d0, d1, rcv, clock):
    """One variant's measurement and its own extra measures."""
    own0 = setup.own_counters()
    cpu0 = setup.own_cpu()
    processed = (lambda: d0.stats()["rx_packets"]) if name == BASELINE else (lambda: rcv.stats()["rx_packets"])
    m = measure.run_trial(lambda: gen.send(tspec), processed, size=tspec.size,
                          probes={"snd": measure.link_probe(snd), "dut0": measure.link_probe(d0),
                                  "dut1": measure.link_probe(d1), "rcv": measure.link_probe(rcv)},
                          offered_probe=("snd", "tx_packets"), settle_s=0.1, clock=clock)
    cpu1 = setup.own_cpu()
    own1 = setup.own_counters()
    extra = {k: (own1[k] - own0.get(k, 0), "packets") for k in own1}
    if cpu0 is not None:
        own, who = cpu1 - cpu0, "dpdk" if setup.l2fwd is not None else "ovs"
        extra[f"{who}_cpu_s"] = (own, "s")
        extra[f"{who}_cpu_ns_per_pkt"] = (own / m.processed * 1e9 if m.processed else float("nan"), "ns/packet")
    if setup.l2fwd is not None or setup.ovs is not None:
        rx, tx = (extra["l2fwd_rx_port0"][0], extra["l2fwd_tx_port1"][0]) if setup.l2fwd is not None else \
            (extra["ovs_rx_port0"][0], extra["ovs_tx_port1"][0])
        extra["lost_before_dut_pkts"] = (max(0, m.offered.packets - rx), "packets")
        extra["lost_in_dut_pkts"] = (max(0, rx - tx), "packets")
        extra["lost_after_dut_pkts"] = (max(0, tx - m.processed), "packets")
    return m, extra


def _idle(name, setup, seconds, rs) -> dict:
    """CPU the machine burns in SECONDS with the variant set up and no traffic."""
    c0 = measure.cpu_times()
    own0 = setup.own_cpu()
    time.sleep(seconds)
    c1 = measure.cpu_times()
    busy = (c1 - c0).busy / seconds
    row = {"variant": name, "idle_busy_cores": busy}
    if setup.l2fwd is not None:
        r = setup.l2fwd.resources()
        row.update({"dpdk_idle_busy_cores": (setup.own_cpu() - own0) / seconds, "lcores": r.lcores,
                    "rss_mb": r.rss_mb, "memory_mb_reserved": r.memory_mb, "hugepages": r.hugepages,
                    "hugepages_used": r.hugepages_used})
    else:
        row.update({"dpdk_idle_busy_cores": 0.0, "lcores": 0, "rss_mb": setup.ovs.rss_mb() if setup.ovs else 0.0,
                    "memory_mb_reserved": 0, "hugepages": False, "hugepages_used": 0})
    own = setup.own_cpu()  # the forwarder's own processes (DPDK's lcore, OVS's PMD and main threads)
    row["own_idle_busy_cores"] = (own - own0) / seconds if own is not None else 0.0
    measures = {"idle_busy_cores": (busy, "cores"), "own_idle_busy_cores": (row["own_idle_busy_cores"], "cores")}
    if setup.l2fwd is not None:
        measures.update({"dpdk_idle_busy_cores": (row["dpdk_idle_busy_cores"], "cores"),
                         "dpdk_rss_mb": (row["rss_mb"], "MB"), "dpdk_hugepages_used": (row["hugepages_used"], "pages")})
    elif setup.ovs is not None:
        measures["ovs_rss_mb"] = (row["rss_mb"], "MB")
    rs.add(name, 0, None, measures, kind="idle")
    return row


def _dut_cpu(rs) -> None:
    """DUT CPU per forwarded packet: the kernel's receive-path time (exact NET_RX softirq
    time) per packet of a variant minus that of the baseline sink (delivery into the DUT's
    first port) in the same trial and size, plus, for DPDK, its own process's CPU time."""
    import pandas as pd

    t = pd.DataFrame(rs.rows)
    if t.empty or BASELINE not in set(t["variant"]):
        return
    per = t[t["measure"] == "cpu_ns_per_pkt"].set_index(["variant", "trial", "size"])["value"]
    own = t[t["measure"].isin(["dpdk_cpu_ns_per_pkt", "ovs_cpu_ns_per_pkt"])].set_index(
        ["variant", "trial", "size"])["value"]
    for (v, trial, size), value in per.items():
        if v == BASELINE:
            continue
        base = per.get((BASELINE, trial, size))
        if base is not None:
            dut = value - base + float(own.get((v, trial, size), 0.0))
            rs.add(v, trial, size, {"dut_cpu_ns_per_pkt": (dut, "ns/packet")}, kind="trial")


def headline(table):
    """One row per variant and size of the trials: the means of the measures a reader looks
    at first, in reading order."""
    if "kind" in table.columns:
        table = table[table["kind"].isin(["trial"]) | table["kind"].isna()]
    return views.summary_view(results.wide(results.summarize(table)))


def _caveats(rs, p: Params, generator: str, probed: bool, feed: str | None) -> None:
    rs.caveat("namespace testbed: generator, DUT and sink share this machine's 2 CPUs; compare variants as "
              "ratios within this run, not as NIC numbers")
    if feed == views.FEED_SKB and "xdp_redirect" in p.variants and p.xdp_mode == "native":
        rs.caveat(views.SKB_FEED_NOTE, "xdp_redirect")
    sink = "lat_sink (bpf/latency.c: probes histogrammed, the rest counted)" if probed else "xdp_drop_bare"
    rs.caveat("XDP_REDIRECT into a veth delivers only when the egress veth's peer has an XDP program: the "
              f"receiver runs {sink} (native) as its sink in every variant")
    for v in [v for v in p.variants if v in views.PORT_CAVEATS]:
        rs.caveat(views.PORT_CAVEATS[v], v)
    if set(DPDK_VARIANTS + OVS_VARIANTS) & set(p.variants):
        rs.caveat(f"the polling threads run on CPU(s) {p.dpdk_lcores} (l2fwd) and mask {p.ovs_pmd_cpus} (OVS PMD), "
                  f"the {generator} generator on CPU 0, where the DUT's receive softirq for its frames runs too; "
                  "every other process of this machine shares both CPUs")
    rs.caveat("DUT CPU per packet = NET_RX softirq time per forwarded packet minus the baseline sink's (delivery "
              "into the DUT's first port), plus the own process time of DPDK or Open vSwitch; it includes the "
              "receiver's XDP sink (tens of ns), the same for every variant")


def interpret(table, resources, caveats=(), lcores=None) -> str:
    """Sentences computed from the data (`l2fwd_views.interpret_rates`); CAVEATS (the run's)
    say whether its ports were veths, LCORES where l2fwd polled."""
    return views.interpret_rates(table, resources, BASELINE, caveats, lcores)
