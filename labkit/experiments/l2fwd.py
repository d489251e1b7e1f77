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
CPU it burns with no traffic at all (``idle_busy_cores``). With ``latency`` on, at the
smallest frame size, as FD.io CSIT measures latency: per forwarder its PDR (loss at most
0.5%, by MLRsearch, in its first trial), and per trial and forwarder the one-way latency of
probes (bpf/latency.c; the receiver's sink is then the probe sink, keeping every probe's
delay for an HDR histogram per point) with no load and with background load at
``latency_loads`` of that PDR (labkit.measure.latency_profile).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from labkit import bpf, capabilities, dpdk, measure, ovs, parameters, references, results, traffic
from labkit.dataplanes import softirq_clock
from labkit.dataplanes.latency_probe import LatencyProbe
from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.experiments import (
    Feed,
    Result,
    View,
    across_hosts,
    check_run_shape,
    l2fwd_dut,
    l2fwd_record,
    saved_metadata,
    smoke_clamp,
    trial_loop,
)
from labkit.experiments import l2fwd_views as views
from labkit.experiments.l2fwd_dut import BASELINE, DPDK_VARIANTS, OVS_VARIANTS, RECEIVER_MAC, VARIANTS
from labkit.measure import latency_profile as latency_profile
from labkit.testbed import inventory, runs, topology
from labkit.testbed.testbeds import testbed_for

EXPERIMENT = "l2fwd"
NOTEBOOK = "02-l2-forwarding"  # the notebook that runs this experiment
#: the testbed's roles: where each is on the namespace topology (the DUT: its port from the
#: sender, then its port to the receiver)
ROLES = {"sender": ("snd", None), "dut": [("dut", "snd"), ("dut", "rcv")], "receiver": ("rcv", None)}
#: where a remote DUT builds DPDK's l2fwd, unless its inventory sets labkit_build_dir
DEFAULT_BUILD_DIR = "/var/cache/labkit/build"
ACROSS_HOSTS_CPU = (
    "across hosts: the receive-path CPU is read on this machine, which is no host's (DPDK's and "
    "OVS's own process time is still read on the DUT)"
)
SENDER_ADDR, RECEIVER_ADDR = "10.11.0.1/24", "10.11.0.2/24"
#: how the comparison and the index show this experiment: the DUT's CPU beyond the baseline sink,
#: since DPDK polls in user space where softirq time would not see it
VIEW = View(
    EXPERIMENT,
    "L2 forwarding",
    NOTEBOOK,
    cpu="dut_cpu_ns_per_pkt",
    cpu_label="DUT CPU per forwarded packet (beyond the baseline sink)",
    exclude=(BASELINE,),
    select=(("kind", ("trial", None)),),
    references=((references.XDP_PAPER_DPDK_DROP, ("dpdk_l2fwd",), "pps"),),
)
#: a smoke run: one size, one trial, few packets, a short idle window (see smoke_clamp)
plot_latency_cdf = views.plot_latency_cdf  # the notebook's latency CDF
plot_latency_percentiles = views.plot_latency_percentiles  # the notebook's HDR percentile curves
SMOKE = {"sizes": 1, "trials": 1, "count": 20_000, "idle_s": 0.5, "latency_probes": 200, "ndr_iterations": 25}
SEARCH_TRIAL_S = {False: 0.5, True: 0.2}  # the PDR search's final trial (s), by smoke


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
    dpdk_afxdp_busy_budget: int = (
        0  # net_af_xdp busy_budget; 0 (off) on veths: it polls nothing there and stalls them; 64 on a NIC
    )
    ovs_xdp_mode: str = "native"  # xdp-mode of Open vSwitch's afxdp ports: native or generic
    ovs_pmd_cpus: str = "0x2"  # CPU mask of Open vSwitch's PMD threads (CPU 1: away from the generator)
    mac_updating: bool = True
    idle_s: float = 1.0  # the no-traffic window per variant (busy-polling cost)
    timeout_s: float = 60.0
    latency: bool = True  # one-way latency per forwarder at the smallest size (no load, then latency_loads)
    latency_loads: list = field(default_factory=lambda: [0.1, 0.5, 0.9])  # background, fractions of the PDR (0.5% loss)
    latency_probes: int = 2000  # probes per latency point
    latency_probe_rate: float = 2000.0  # probes per second
    ndr_loss: float = 0.001  # the NDR's loss ratio in the latency part's MLRsearch (which finds the PDR beside it)
    ndr_iterations: int = 20  # that search's time budget, in final trials (0.5 s each; 0.2 s in a smoke run)
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
            dpdk.L2fwdOptions(
                portmask=0x3, queues_per_lcore=self.dpdk_queues_per_lcore, ring_size=self.dpdk_afxdp_ring
            ).validate(2, len(eal.lcore_ids()))
            dpdk.Port.af_xdp("x", busy_budget=self.dpdk_afxdp_busy_budget)
        if self.ovs_xdp_mode not in ovs.XDP_MODES:
            raise InputError(f"ovs_xdp_mode {self.ovs_xdp_mode!r}: choose one of {ovs.XDP_MODES}")
        if self.latency:
            latency_profile.check(self.latency_loads, self.latency_probes, self.latency_probe_rate, self.ndr_loss)
            if not 1 <= self.ndr_iterations <= 60:
                raise InputError(f"ndr_iterations {self.ndr_iterations}: 1..60 final trials of the PDR search's budget")
        if self.inventory is not None:
            inventory.parse(self.inventory).require(list(ROLES), two_interfaces=("dut",))
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def spec() -> topology.TopologySpec:
    """sender -> dut (two ports) -> receiver; the receiver has the MAC l2fwd writes."""
    return topology.TopologySpec(
        hosts=["snd", "dut", "rcv"],
        links=[
            topology.LinkSpec("snd", "dut", SENDER_ADDR, None, a_name="snd0", b_name="dut0"),
            topology.LinkSpec("dut", "rcv", None, RECEIVER_ADDR, b_mac=RECEIVER_MAC, a_name="dut1", b_name="rcv0"),
        ],
    )


# ---------------------------------------------------------------- the run
def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'trial' (the side-by-side trials), 'idle' (rows of the no-traffic window), 'resources'
    (what each variant takes from the machine: the poster's conclusion, measured). The
    testbed is the namespace topology, or the inventory's sender, DUT and receiver hosts."""
    p = Params(**kwargs).validate()
    capabilities.begin_run()  # this run's choices of backends, not an earlier run's in this process
    if p.inventory is None:
        runs.require_root("the L2 forwarding experiment")
        l2fwd_dut.build_l2fwd_here(None, _rings(p))  # before any namespace: a missing DPDK fails early
    tools = {
        "sender": across_hosts.GENERATOR_TOOLS[across_hosts.generator_for(p.generator, p.inventory is None)],
        "dut": ["python:bcc"],
        "receiver": ["python:bcc"],
    }
    with testbed_for(spec(), ROLES, p.inventory, tools, two_interfaces=("dut",)) as bed:
        skipped = _unavailable(bed, p)  # before any host is changed
        snd, d0, d1, rcv = ends = (bed.end("sender"), bed.end("dut", 0), bed.end("dut", 1), bed.end("receiver"))
        rs = results.ResultSet(EXPERIMENT, asdict(p), bed.prefix, data_dir)
        resources, off, notes, cdfs = [], switched_off(p), {}, []
        if not bed.local:
            off.update({"latency": views.ACROSS_HOSTS_LATENCY, "DUT CPU per packet": ACROSS_HOSTS_CPU})
        with ExitStack() as stack:
            probe = _latency_probe(stack, p, snd, rcv, off) if bed.local else None
            if probe is not None:
                stack.enter_context(bpf.attach_xdp(rcv, probe.sink(), "native"))
            else:
                stack.enter_context(bed.hold("receiver", l2fwd_dut.receiver_sink))
            dut = stack.enter_context(bed.hold("dut", l2fwd_dut.dut_side, _params(p), port=None))
            gen = stack.enter_context(across_hosts.open_generator(bed, p.generator))
            feed = Feed(gen.name, real_interfaces=not bed.local)
            clock = stack.enter_context(softirq_clock.SoftirqClock()) if bed.local else None
            time.sleep(0.2)
            specs = {
                size: traffic.TrafficSpec.between(snd, rcv, size=size, count=p.count, timeout_s=p.timeout_s).validate()
                for size in p.sizes
            }
            for name in [v for v in p.variants if v in OVS_VARIANTS + ("dpdk_l2fwd_afxdp",) and v not in skipped]:
                try:  # a forwarder that cannot start here is left out; the others still run
                    with _using(dut, name):
                        pass
                except LabkitError as exc:
                    skipped[name] = _at(bed, _first_line(exc))
            order_all = ([BASELINE] if p.baseline else []) + [v for v in p.variants if v not in skipped]

            pdrs = {}  # forwarder -> the profile whose PDR its first latency trial searched; later trials take it

            def measure_one(name, size, trial):
                with _using(dut, name):
                    notes[name] = dut("notes")
                    if p.idle_s > 0 and name not in {r["variant"] for r in resources}:
                        resources.append(l2fwd_record.idle(rs, dut("idle", p.idle_s)))
                    m, extra = _trial(name, dut, gen, specs[size], ends, clock)
                    prof = None
                    if probe is not None and name != BASELINE and size == min(p.sizes):
                        prof = latency_profile.profile(
                            probe,
                            gen,
                            specs[size],
                            lambda: rcv.stats()["rx_packets"],
                            loads=p.latency_loads,
                            probes=p.latency_probes,
                            probe_rate=p.latency_probe_rate,
                            ndr_loss=p.ndr_loss,
                            search_trial_s=SEARCH_TRIAL_S[bool(p.smoke)],
                            search_budget_s=p.ndr_iterations * SEARCH_TRIAL_S[bool(p.smoke)],
                            searched=pdrs.get(name),
                        )
                        if name not in pdrs and prof.pdr_pps > 0:
                            pdrs[name] = prof
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
        if bed.local:
            l2fwd_record.dut_cpu(rs)
            l2fwd_record.caveats(rs, p, gen.name, probe is not None, feed.kind)
        else:
            across_hosts.blank_local_cpu(rs.rows)  # this machine's CPU is neither host's
            veth = "driver: veth" in bed.host("dut").run(["ethtool", "-i", d0.name], check=False).stdout
            views.hosts_caveats(rs, p, veth, snd, bed.host("dut"), rcv, skipped)
        for name, why in skipped.items():
            rs.caveat(f"not run: {why}", name)
        l2fwd_record.afxdp_caveat(rs, notes.get("dpdk_l2fwd_afxdp", {}))
        sink = "lat_sink (bpf/latency.c)" if probe else "xdp_drop_bare"
        run_dir = rs.save(
            bed,
            {
                "generator": gen.name,
                "receiver_sink": f"{sink} (native) on {rcv.name}",
                "resources": resources,
                "variant_setup": notes,
                "skipped_variants": skipped,
                "feed": feed.metadata(),
                "skipped_parts": off,
                "dut_ports": [d0.name, d1.name],
                **(
                    {} if bed.local else {"dut_build_dir": str(bed.var("dut", "labkit_build_dir") or DEFAULT_BUILD_DIR)}
                ),
            },
        )
    return _result(rs, p, run_dir, resources, cdfs)


def _result(rs, p: Params, run_dir, resources: list, cdfs: list) -> Result:
    import pandas as pd

    table = rs.table
    res = pd.DataFrame(resources)
    lat = views.latency_summary(table)
    parts = {
        "resources": res,
        "latency": lat,
        "latency_cdf": pd.DataFrame(cdfs, columns=None if cdfs else ["variant", "trial"]),
        "overview": views.overview(headline(table), res, lat),
    }
    text = (
        views.fed_by(saved_metadata(run_dir), table)
        + "\n"
        + interpret(table, res, rs.caveats, p.dpdk_lcores)
        + views.interpret_latency(lat, table)
    )
    return Result(EXPERIMENT, table, text, rs.caveats, run_dir, p, parts, headline_of=headline)


def _params(p: Params) -> dict:
    """P as the DUT's side reads it (plain values: a remote session is handed them)."""
    return {k: v for k, v in asdict(p).items() if k != "inventory"}


def _rings(p: Params) -> list:
    """The l2fwd builds P's DPDK variants need: None (l2fwd's own rings), the AF_XDP ring size."""
    wanted = [v for v in DPDK_VARIANTS if v in p.variants]
    return sorted({None if v == "dpdk_l2fwd" else p.dpdk_afxdp_ring for v in wanted}, key=str)


def _unavailable(bed, p: Params) -> dict:
    """{variant: why} for what the DUT cannot run (Open vSwitch missing). A remote DUT
    builds l2fwd first, against its own DPDK (in its labkit_build_dir); a DUT that cannot
    is an error naming the host and what to do, before any host is changed."""
    if not bed.local and _rings(p):
        wanted = ", ".join(v for v in DPDK_VARIANTS if v in p.variants)
        build_dir = str(bed.var("dut", "labkit_build_dir") or DEFAULT_BUILD_DIR)
        try:
            bed.call("dut", l2fwd_dut.build_l2fwd_here, build_dir, _rings(p))
        except MissingDependency as exc:
            raise MissingDependency(
                f"{bed.where('dut')} (role dut) cannot run {wanted}: {_first_line(exc)}; install DPDK there "
                "(`labkit provision INVENTORY`), or leave those variants out"
            ) from None
        except LabkitError as exc:
            raise LabkitError(
                f"{bed.where('dut')} (role dut) cannot run {wanted}: building DPDK's l2fwd in {build_dir} there "
                f"failed: {_first_line(exc)}; set labkit_build_dir of {bed.where('dut').split()[-1]} to a folder root can "
                "write, or leave those variants out"
            ) from None
    if not set(OVS_VARIANTS) & set(p.variants):
        return {}
    ok, why = bed.call("dut", ovs.status)
    return {} if ok else {v: _at(bed, why) for v in OVS_VARIANTS if v in p.variants}


def _at(bed, why: str) -> str:
    """WHY, prefixed by the DUT's host where it is another ('host h2: ...')."""
    return f"{bed.where('dut')}: {why}" if bed.where("dut") else why


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def _using(dut, name: str):
    """Variant NAME set up on the DUT (a testbed handle of `l2fwd_dut.dut_side`) meanwhile."""
    dut("use", name)
    try:
        yield
    finally:
        dut("off")


def switched_off(p: Params) -> dict:
    """{part: why} for the optional parts P leaves out."""
    off = {
        "latency": (not p.latency, "latency = False"),
        "idle cost": (not p.idle_s, "idle_s = 0"),
        "DUT CPU per packet": (not p.baseline, "baseline = False: no baseline sink to subtract"),
    }
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


def _trial(name, dut, gen, tspec, ends, clock):
    """One variant's measurement, each end's counters read on its host, and its own
    measures: the forwarder's counters and process CPU, losses before, in and after the DUT."""
    snd, d0, d1, rcv = ends
    own0, cpu0 = dut("own_counters"), dut("own_cpu")
    counted = d0 if name == BASELINE else rcv
    m = measure.run_trial(
        lambda: gen.send(tspec),
        lambda: counted.stats()["rx_packets"],
        size=tspec.size,
        probes={
            "snd": measure.link_probe(snd),
            "dut0": measure.link_probe(d0),
            "dut1": measure.link_probe(d1),
            "rcv": measure.link_probe(rcv),
        },
        offered_probe=("snd", "tx_packets"),
        settle_s=0.1,
        clock=clock,
    )
    own1, cpu1, kind = dut("own_counters"), dut("own_cpu"), dut("kind")
    extra = {k: (own1[k] - own0.get(k, 0), "packets") for k in own1}
    if cpu0 is not None and kind:
        own = cpu1 - cpu0
        extra[f"{kind}_cpu_s"] = (own, "s")
        extra[f"{kind}_cpu_ns_per_pkt"] = (own / m.processed * 1e9 if m.processed else float("nan"), "ns/packet")
    if name != BASELINE:
        if kind == "dpdk":
            rx, tx = extra["l2fwd_rx_port0"][0], extra["l2fwd_tx_port1"][0]
        elif kind == "ovs":
            rx, tx = extra["ovs_rx_port0"][0], extra["ovs_tx_port1"][0]
        else:  # the kernel forwarders: the DUT's own link counters
            rx, tx = m.probes["dut0"].get("rx_packets", 0), m.probes["dut1"].get("tx_packets", 0)
        extra["lost_before_dut_pkts"] = (max(0, m.offered.packets - rx), "packets")
        extra["lost_in_dut_pkts"] = (max(0, rx - tx), "packets")
        extra["lost_after_dut_pkts"] = (max(0, tx - m.processed), "packets")
    return m, extra


def headline(table):
    """One row per variant and size of the trials: the means of the measures a reader looks
    at first, in reading order."""
    if "kind" in table.columns:
        table = table[table["kind"].isin(["trial"]) | table["kind"].isna()]
    return views.summary_view(results.wide(results.summarize(table)))


def interpret(table, resources, caveats=(), lcores=None) -> str:
    """Sentences computed from the data (`l2fwd_views.interpret_rates`); CAVEATS (the run's)
    say whether its ports were veths, LCORES where l2fwd polled."""
    return views.interpret_rates(table, resources, BASELINE, caveats, lcores)
