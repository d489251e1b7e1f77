"""The L2 forwarding experiment across machines: the generator on the inventory's sender,
the forwarders on its DUT, the sink on its receiver.

The inventory names three hosts; the DUT's two data-plane ports as
`labkit_interfaces: [IN, OUT]` (IN cabled to the sender, OUT to the receiver):

    sender (labkit_interface) -> IN  DUT  OUT -> receiver (labkit_interface)

The trial loop stays on the controlling machine, as in the local run. For each trial:

- the receiver host holds, for the whole run, the same bare XDP drop program the local
  run uses as its sink (`receiver_sink`, compiled by that host's bcc), with its interface
  in promiscuous mode (the forwarders' MAC rewrite writes l2fwd's 02:00:00:00:00:01, which
  a NIC would otherwise filter out); what it counts is what was forwarded;
- the DUT host holds the trial's variant (`dut_variant`): the local run's own set-up
  (`l2fwd.variant`: the XDP/tc forwarder, the bridge, DPDK's l2fwd over af_packet or AF_XDP
  ports, Open vSwitch) over the DUT's real ports, undone there when the trial ends;
- the sender host's generator (`across_hosts.RemoteGenerator`) offers the frames (trafgen
  for `auto`: the in-kernel generator needs an XDP program on its veth peer, another host here).

DPDK's l2fwd is built on the DUT host itself, against its own DPDK, in
`labkit_build_dir` (default /var/cache/labkit/build) before any host is changed; a DUT
without DPDK refuses the DPDK variants then, naming the host and what to install. A DUT
without Open vSwitch runs the other variants, the OVS ones marked as not run.

Counted per trial from each host's own counters: offered (the sender's interface), the
DUT's IN and OUT links, the forwarder's own counters (l2fwd's, OVS's, the XDP program's),
forwarded at the receiver; losses before, in and after the DUT from them. The CPU of
the controlling machine is neither host's: those columns are left empty. DPDK's and OVS's
own process time is read on the DUT (their own CPU per packet stays), and the DUT's idle
cost with no traffic is measured there. One-way latency needs one clock at both ends:
across machines there is none, so latency is not measured (a caveat says so).

This module does not import `labkit.experiments.l2fwd` (which imports it): the experiment
module is the one that defined the parameters' class, and the far side is handed its name.
"""
from __future__ import annotations

import importlib
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict

from labkit.errors import LabkitError, MissingDependency

#: where the DUT builds DPDK's l2fwd, unless its inventory sets labkit_build_dir
DEFAULT_BUILD_DIR = "/var/cache/labkit/build"
DPDK_VARIANTS, OVS_VARIANTS = ("dpdk_l2fwd", "dpdk_l2fwd_afxdp"), ("ovs", "ovs_afxdp")


def run(p, data_dir=None):
    """P: the experiment's validated Params with an inventory. Returns its Result."""
    from labkit import results, traffic
    from labkit.experiments import Result, across_hosts, trial_loop
    from labkit.experiments import l2fwd_views as views
    from labkit.testbed import inventory, runs

    ex = importlib.import_module(type(p).__module__)  # labkit.experiments.l2fwd
    inv = inventory.parse(p.inventory)
    inv.require(ex.HOST_ROLES, two_interfaces=("dut",))
    generator = "trafgen" if p.generator == "auto" else p.generator  # xdpgen needs its veth peer on its host
    generator_tools = across_hosts.GENERATOR_TOOLS.get(generator, [])
    tools = {"sender": generator_tools, "dut": ["python:bcc"], "receiver": ["python:bcc"]}
    dut_name = inv.role("dut").name
    build_dir = str(inv.role("dut").vars.get("labkit_build_dir") or DEFAULT_BUILD_DIR)
    with across_hosts.Testbed(inv, ex.HOST_ROLES, tools, two_interfaces=("dut",)) as bed:
        dut = bed.host("dut")
        in_if, out_if = bed.interfaces("dut")
        skipped = _check_dut(dut, dut_name, p, build_dir)  # before any host is changed
        snd, rcv = across_hosts.end(bed, "sender"), across_hosts.end(bed, "receiver")
        d0, d1 = across_hosts.end(bed, "dut", in_if), across_hosts.end(bed, "dut", out_if)
        params = {k: v for k, v in asdict(p).items() if k != "inventory"}
        factory = f"{__name__}:dut_variant"
        for name in [v for v in p.variants if v in OVS_VARIANTS + ("dpdk_l2fwd_afxdp",) and v not in skipped]:
            try:  # as on one machine: a forwarder that cannot start on the DUT is left out, the others run
                with dut.hold(factory, ex.__name__, in_if, out_if, name, params):
                    pass
            except LabkitError as exc:
                skipped[name] = f"host {dut_name}: {_first_line(exc)}"
        order = ([ex.BASELINE] if p.baseline else []) + [v for v in p.variants if v not in skipped]
        rs = results.ResultSet(ex.EXPERIMENT, asdict(p), runs.Run().prefix, data_dir)
        specs = {size: traffic.TrafficSpec(snd.mac, rcv.mac, snd.address or "10.11.0.1", rcv.address or "10.11.0.2",
                                           size=size, count=p.count, timeout_s=p.timeout_s).validate()
                 for size in p.sizes}
        notes, resources = {}, []
        with ExitStack() as stack:
            stack.enter_context(rcv.host.hold(f"{__name__}:receiver_sink", rcv.ifname))
            gen = stack.enter_context(across_hosts.RemoteGenerator(snd, generator))
            time.sleep(0.2)

            def measure_one(name, size, trial):
                with dut.hold(factory, ex.__name__, in_if, out_if, name, params) as setup:
                    notes[name] = setup("notes")
                    if p.idle_s > 0 and name not in {r["variant"] for r in resources}:
                        row = setup("idle", p.idle_s)
                        resources.append(row)
                        rs.add(name, 0, None, {"idle_busy_cores": (row["idle_busy_cores"], "cores"),
                                               "own_idle_busy_cores": (row["own_idle_busy_cores"], "cores"),
                                               "rss_mb": (row["rss_mb"], "MB")}, kind="idle")
                    return _trial(name, setup, gen, specs[size], snd, d0, d1, rcv, ex.BASELINE)

            def record(name, size, trial, measured):
                m, extra = measured
                rs.add_measurement(name, trial, m, generator=gen.name, kind="trial")
                rs.add(name, trial, size, extra, m.flags, generator=gen.name, kind="trial")

            trial_loop(order, p.trials, measure_one, record, sizes=p.sizes, label=ex.EXPERIMENT, show=p.progress)
        across_hosts.blank_local_cpu(rs.rows)  # this machine's CPU is neither host's
        veth = "driver: veth" in dut.run(["ethtool", "-i", in_if], check=False).stdout
        _caveats(rs, p, views.PORT_CAVEATS if veth else {}, snd, dut, rcv, skipped, notes)
        run_dir = rs.save(bed, {"generator": gen.name, "receiver_sink": f"xdp_drop_bare (native) on {rcv.ifname}",
                                "dut_ports": [in_if, out_if], "resources": resources, "variant_setup": notes,
                                "skipped_variants": skipped, "dut_build_dir": build_dir})
    import pandas as pd

    table = rs.table
    res, lat = pd.DataFrame(resources), views.latency_summary(table)
    parts = {"resources": res, "latency": lat, "latency_cdf": pd.DataFrame(columns=["variant", "trial"]),
             "overview": views.overview(ex.headline(table), res, lat)}
    return Result(ex.EXPERIMENT, table, ex.interpret(table, res), rs.caveats, run_dir, p, parts,
                  headline_of=ex.headline)


def _check_dut(dut, name: str, p, build_dir: str) -> dict:
    """What the DUT host cannot run: DPDK refused (MissingDependency naming the host and what
    to install), OVS {variant: why} to skip. l2fwd is built there now, before any change."""
    from labkit import ovs

    wanted = [v for v in DPDK_VARIANTS if v in p.variants]
    if wanted:
        rings = sorted({None if v == "dpdk_l2fwd" else p.dpdk_afxdp_ring for v in wanted}, key=str)
        try:
            dut.call(build_l2fwd_here, build_dir, rings)
        except MissingDependency as exc:
            raise MissingDependency(f"host {name} (role dut) cannot run {', '.join(wanted)}: "
                                    f"{_first_line(exc)}; install DPDK there (`labkit provision INVENTORY`), "
                                    "or leave those variants out") from None
        except LabkitError as exc:
            raise LabkitError(f"host {name} (role dut) cannot run {', '.join(wanted)}: building DPDK's l2fwd in "
                              f"{build_dir} there failed: {_first_line(exc)}; set labkit_build_dir of {name} to a "
                              "folder root can write, or leave those variants out") from None
    skipped = {}
    if set(OVS_VARIANTS) & set(p.variants):
        ok, why = dut.call(ovs.status)
        if not ok:
            skipped.update({v: f"host {name}: {why}" for v in OVS_VARIANTS if v in p.variants})
    return skipped


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _trial(name, setup, gen, tspec, snd, d0, d1, rcv, baseline):
    """One variant's measurement, counters read on each host; losses before, in and after the DUT."""
    from labkit import measure

    own0, cpu0 = setup("own_counters"), setup("own_cpu")
    counted = d0 if name == baseline else rcv
    m = measure.run_trial(lambda: gen.send(tspec), lambda: counted.counters()["rx_packets"], size=tspec.size,
                          probes={"snd": snd.counters, "dut0": d0.counters, "dut1": d1.counters, "rcv": rcv.counters},
                          offered_probe=("snd", "tx_packets"), settle_s=0.1)
    own1, cpu1 = setup("own_counters"), setup("own_cpu")
    extra = {k: (own1[k] - own0.get(k, 0), "packets") for k in own1}
    kind = setup("kind")
    if cpu0 is not None and kind:
        own = cpu1 - cpu0
        extra[f"{kind}_cpu_s"] = (own, "s")
        extra[f"{kind}_cpu_ns_per_pkt"] = (own / m.processed * 1e9 if m.processed else float("nan"), "ns/packet")
    if name != baseline:
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


def _caveats(rs, p, port_caveats: dict, snd, dut, rcv, skipped: dict, notes: dict) -> None:
    rs.caveat(f"across hosts ({snd.host.name} -> {dut.name} -> {rcv.host.name}): rates and losses from each host's "
              "counters; the whole-machine CPU columns are empty (this machine's CPU is neither host's), DPDK's and "
              "OVS's own process time was read on the DUT")
    if p.generator == "auto":
        rs.caveat("generator auto across hosts: trafgen (the in-kernel generator needs an XDP program on its veth "
                  "peer, which is on another host here); name generator=xdp to use it from a NIC")
    if p.latency:
        rs.caveat("latency not measured across hosts: a one-way delay needs the sender's and the receiver's "
                  "timestamps on one clock, which separate machines do not share")
    rs.caveat(f"the receiver ({rcv.host.name}) counts arrivals with a bare XDP drop program (native) on {rcv.ifname}, "
              "in promiscuous mode for the run, in every variant")
    for v in [v for v in p.variants if v in port_caveats and v not in skipped]:  # the DUT's ports are veths
        rs.caveat(port_caveats[v], v)
    for v, why in skipped.items():
        rs.caveat(f"not run: {why}", v)
    modes = notes.get("dpdk_l2fwd_afxdp", {}).get("af_xdp_socket_mode")
    if modes:
        rs.caveat("net_af_xdp sockets ran in " + ", ".join(f"{m} mode on {k}" for k, m in modes.items()),
                  "dpdk_l2fwd_afxdp")


# ---------------------------------------------------------------- on the far hosts
def build_l2fwd_here(build_dir: str, rings: list) -> list:
    """On the DUT: DPDK's l2fwd built in BUILD_DIR for each ring size of RINGS (None:
    l2fwd's own); this session's l2fwd runs use those builds."""
    import os
    from pathlib import Path

    from labkit.dpdk import build

    os.environ["LABKIT_L2FWD_BUILD_DIR"] = str(Path(build_dir) / "l2fwd")  # this host's session only
    return [str(build.build_l2fwd(ring_size=r)) for r in rings]


class _DutPorts:
    """The DUT host's two ports, shaped as the local run's topology is read by `l2fwd.variant`."""

    def __init__(self, in_if: str, out_if: str):
        from labkit.experiments.across_hosts import local_interface
        from labkit.testbed.hosts import ROOT_HOST

        self.ports = {"snd": local_interface(in_if), "rcv": local_interface(out_if)}
        self._host = ROOT_HOST

    def iface(self, host: str, towards: str):
        return self.ports[towards]

    def host(self, name: str):
        return self._host


class _DutSide:
    def __init__(self, setup):
        self.setup = setup

    def own_counters(self) -> dict:
        return self.setup.own_counters()

    def own_cpu(self):
        return self.setup.own_cpu()

    def kind(self):
        return "dpdk" if self.setup.l2fwd is not None else "ovs" if self.setup.ovs is not None else None

    def notes(self) -> dict:
        return self.setup.notes

    def idle(self, seconds: float) -> dict:
        """The DUT's busy cores with the variant set up and no traffic, and its own processes' share."""
        from labkit import measure

        c0, own0 = measure.cpu_times(), self.own_cpu()
        time.sleep(seconds)
        c1, own1 = measure.cpu_times(), self.own_cpu()
        own = (own1 - own0) / seconds if own0 is not None else 0.0
        row = {"variant": self.setup.name, "idle_busy_cores": (c1 - c0).busy / seconds, "own_idle_busy_cores": own,
               "dpdk_idle_busy_cores": 0.0, "lcores": 0, "rss_mb": 0.0, "memory_mb_reserved": 0, "hugepages": False,
               "hugepages_used": 0}
        if self.setup.l2fwd is not None:
            r = self.setup.l2fwd.resources()
            row.update(dpdk_idle_busy_cores=own, lcores=r.lcores, rss_mb=r.rss_mb, memory_mb_reserved=r.memory_mb,
                       hugepages=r.hugepages, hugepages_used=r.hugepages_used)
        elif self.setup.ovs is not None:
            row["rss_mb"] = self.setup.ovs.rss_mb()
        return row


@contextmanager
def dut_variant(experiment: str, in_if: str, out_if: str, name: str, params: dict):
    """On the DUT: variant NAME of EXPERIMENT (its module's `variant`) set up over IN_IF
    and OUT_IF; undone on exit."""
    from labkit import bpf
    from labkit.dataplanes.xdp_fwd import XdpForwarder

    ex = importlib.import_module(experiment)
    p = ex.Params(**params)
    ports = _DutPorts(in_if, out_if)
    with ExitStack() as stack:
        fwd = sink_fn = None
        if name in ("xdp_redirect", "tc_redirect"):
            fwd = stack.enter_context(XdpForwarder([ports.ports["snd"], ports.ports["rcv"]], p.mac_updating))
        if name == ex.BASELINE:
            sink_fn = stack.enter_context(bpf.load("xdp_minimal")).function("xdp_drop_bare")
        setup = stack.enter_context(ex.variant(name, ports, p, fwd, sink_fn))
        yield _DutSide(setup)


@contextmanager
def receiver_sink(ifname: str):
    """On the receiver: a bare XDP drop program (native) on IFNAME, which is in promiscuous
    mode meanwhile (recorded in the session for `labkit clean`; as it was after). Undone on exit."""
    from labkit import bpf
    from labkit.experiments.across_hosts import local_interface

    iface = local_interface(ifname)
    with ExitStack() as stack:
        fn = stack.enter_context(bpf.load("xdp_minimal")).function("xdp_drop_bare")
        stack.enter_context(_promiscuous(iface))
        stack.enter_context(bpf.attach_xdp(iface, fn, "native"))
        yield None


IFF_PROMISC = 0x100


@contextmanager
def _promiscuous(iface):
    """IFACE in promiscuous mode (unless it was already), recorded as a foreign change."""
    from labkit.testbed import runs
    from labkit.testbed.hosts import netlink

    with netlink() as ipr:
        already = bool(ipr.link("get", index=iface.ifindex)[0]["flags"] & IFF_PROMISC)
    if already:
        yield
        return

    def promisc(on: bool):
        with netlink() as ipr:
            ipr.link("set", index=iface.ifindex, flags=IFF_PROMISC if on else 0, change=IFF_PROMISC)

    with runs.foreign_change({"kind": "promisc", "ifname": iface.name}, lambda: promisc(True), lambda: promisc(False)):
        yield
