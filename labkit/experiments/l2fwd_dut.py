"""The L2 forwarding experiment's device under test and receiver, on their hosts.

Each variant is a setup function over the DUT's two ports (IN from the sender, OUT to the
receiver), in a table from name to setup. `dut_side` holds the DUT for a whole run: what
variants share (the XDP/tc forwarder, the bare sink program) is built once, and one variant
is set up at a time (`use`, `off`), its own counters, CPU and idle cost read there. It runs
in this process on the namespace testbed and in the DUT's labkit session across hosts
(`labkit.testbed.bed`), unchanged; `receiver_sink` is the receiver's counting sink.

Parameters arrive as the experiment's `Params` turned into a dict (a remote session is
handed plain values), read here as attributes.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from functools import partial
from types import SimpleNamespace

from labkit import bpf, dpdk, measure, ovs
from labkit.dataplanes.xdp_fwd import XdpForwarder
from labkit.testbed.bridge import Bridge

BASELINE = "baseline_sink"
RECEIVER_MAC = dpdk.l2fwd_mac(1)  # what l2fwd writes for frames leaving port 1


class Setup:
    """A variant ready to forward: `own_counters()` its own counters, `own_cpu()` its own CPU."""

    def __init__(self, name):
        self.name = name
        self.l2fwd = None
        self.fwd = None
        self.ovs = None
        self.notes = {}  # how it was set up, for the run's metadata (e.g. AF_XDP copy or zero-copy)

    @property
    def kind(self) -> str | None:
        """Whose own process forwards: 'dpdk', 'ovs', or None (the kernel)."""
        return "dpdk" if self.l2fwd is not None else "ovs" if self.ovs is not None else None

    def own_counters(self) -> dict:
        if self.l2fwd is not None:
            st = self.l2fwd.next_stats()
            return {
                "l2fwd_rx_port0": st[0].received,
                "l2fwd_tx_port1": st[1].sent,
                "l2fwd_dropped": sum(s.dropped for s in st.values()),
                **self.l2fwd.socket_drops(),
            }
        if self.fwd is not None:
            c = self.fwd.counters()
            return {"prog_redirected": c["redirected"], "prog_refused": c["refused"]}
        if self.ovs is not None:
            st = self.ovs.port_stats()
            p0, p1 = self.ovs.ports
            return {
                "ovs_rx_port0": st[p0].get("rx_packets", 0),
                "ovs_tx_port1": st[p1].get("tx_packets", 0),
                "ovs_dropped": sum(v for s_ in st.values() for k, v in s_.items() if k.endswith("_dropped")),
            }
        return {}

    def own_cpu(self) -> float | None:
        """CPU seconds of the forwarder's own processes (DPDK's l2fwd, Open vSwitch's daemons)."""
        if self.l2fwd is not None:
            return self.l2fwd.proc.cpu_seconds()
        return self.ovs.cpu_seconds() if self.ovs is not None else None


# ---------------------------------------------------------------- the variants, as setups
@contextmanager
def _dpdk(afxdp: bool, dut: "Dut", s: Setup):
    p, d0, d1 = dut.p, dut.d0, dut.d1
    eal = dpdk.EalOptions(lcores=p.dpdk_lcores, memory_mb=p.dpdk_memory_mb)
    app = dpdk.L2fwdOptions(
        portmask=0x3,
        queues_per_lcore=p.dpdk_queues_per_lcore,
        stats_period_s=1,
        mac_updating=p.mac_updating,
        ring_size=p.dpdk_afxdp_ring if afxdp else None,
    )
    ports = (
        [dpdk.Port.af_xdp(d, busy_budget=p.dpdk_afxdp_busy_budget) for d in (d0, d1)]
        if afxdp
        else [dpdk.Port.af_packet(d, framecnt=p.dpdk_framecnt) for d in (d0, d1)]
    )
    with ExitStack() as st:
        if afxdp and p.dpdk_afxdp_busy_budget:  # preferred busy polling needs NAPI deferral on the ports
            st.enter_context(dpdk.BusyPollSettings(d0.host, [d0.name, d1.name]))
        s.l2fwd = l2 = st.enter_context(dpdk.L2fwd(d0.host, ports, eal, app))
        s.notes = _dpdk_notes(l2, p, afxdp, d0)
        l2.next_stats()  # its statistics run before traffic starts
        yield


@contextmanager
def _ovs(port_type: str, dut: "Dut", s: Setup):
    p, d0, d1 = dut.p, dut.d0, dut.d1
    with ovs.OvsSwitch(d0.host, [d0, d1], port_type=port_type, xdp_mode=p.ovs_xdp_mode, pmd_cpus=p.ovs_pmd_cpus) as sw:
        sw.forward(0, 1, **({"set_dst": RECEIVER_MAC, "set_src": d1.mac} if p.mac_updating else {}))
        s.ovs, s.notes = sw, {"ovs_port_type": port_type, "ovs_version": ovs.status()[1]}
        if port_type == "afxdp":
            s.notes["ovs_xdp_mode"] = p.ovs_xdp_mode
        yield


@contextmanager
def _xdp_redirect(dut: "Dut", s: Setup):
    s.fwd = dut.forwarder()
    with s.fwd.attach_xdp(dut.p.xdp_mode):
        yield


@contextmanager
def _tc_redirect(dut: "Dut", s: Setup):
    s.fwd = dut.forwarder()
    with s.fwd.attach_tc():
        yield


@contextmanager
def _bridge(dut: "Dut", s: Setup):
    with Bridge(dut.d0.host, [dut.d0, dut.d1]):
        yield


@contextmanager
def _baseline(dut: "Dut", s: Setup):
    with bpf.attach_xdp(dut.d0, dut.sink_fn(), "native"):
        yield


#: each variant: how it is set up on the DUT's ports
SETUPS = {
    "dpdk_l2fwd": partial(_dpdk, False),
    "dpdk_l2fwd_afxdp": partial(_dpdk, True),
    "xdp_redirect": _xdp_redirect,
    "bridge": _bridge,
    "tc_redirect": _tc_redirect,
    "ovs": partial(_ovs, "system"),
    "ovs_afxdp": partial(_ovs, "afxdp"),
    BASELINE: _baseline,
}
VARIANTS = [v for v in SETUPS if v != BASELINE]
DPDK_VARIANTS, OVS_VARIANTS = ("dpdk_l2fwd", "dpdk_l2fwd_afxdp"), ("ovs", "ovs_afxdp")


def _dpdk_notes(l2, p, afxdp: bool, d0) -> dict:
    """How l2fwd was tuned, for the run's metadata: ports and their options, lcore, burst,
    and for AF_XDP the socket mode (copy or zero-copy), the XDP hook the driver attached,
    ring size, busy polling and the NAPI settings it needs."""
    notes = {
        "ports": [str(x) for x in l2.ports],
        "port_options": {str(x): dict(x.devargs) for x in l2.ports},
        "lcores": p.dpdk_lcores,
        "burst": 32,
        "stats_period_s": l2.app.stats_period_s,
        "mac_updating": p.mac_updating,
        "memory_mb": p.dpdk_memory_mb,
        "hugepages": False,
    }
    if afxdp:
        notes.update(
            {
                "af_xdp_socket_mode": l2.socket_modes(),
                "xdp_hook": bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED"),
                "ring_size": p.dpdk_afxdp_ring,
                "busy_budget": p.dpdk_afxdp_busy_budget,
                "napi_settings": dict(dpdk.BUSY_POLL_SETTINGS) if p.dpdk_afxdp_busy_budget else {},
            }
        )
    else:
        notes.update({"framecnt": p.dpdk_framecnt, "qdisc_bypass": "driver default (on)"})
    return notes


# ---------------------------------------------------------------- the DUT for a run
class Dut:
    """The DUT's two ports for a whole run, one variant set up at a time."""

    def __init__(self, ports, params: dict):
        self.d0, self.d1 = ports
        self.p = SimpleNamespace(**params)
        self._run, self._trial, self.setup = ExitStack(), ExitStack(), None
        self._fwd = self._sink = None

    def forwarder(self) -> XdpForwarder:
        """The XDP/tc forwarder over both ports, built on first use and kept for the run."""
        if self._fwd is None:
            self._fwd = self._run.enter_context(XdpForwarder([self.d0, self.d1], self.p.mac_updating))
        return self._fwd

    def sink_fn(self):
        if self._sink is None:
            self._sink = self._run.enter_context(bpf.load("xdp_minimal")).function("xdp_drop_bare")
        return self._sink

    def use(self, name: str) -> None:
        self.off()
        self._trial = ExitStack()
        s = Setup(name)
        self._trial.enter_context(SETUPS[name](self, s))
        self.setup = s

    def off(self) -> None:
        self.setup = None
        self._trial.close()

    def close(self) -> None:
        try:
            self.off()
        finally:
            self._run.close()

    def own_counters(self) -> dict:
        return self.setup.own_counters()

    def own_cpu(self):
        return self.setup.own_cpu()

    def kind(self):
        return self.setup.kind

    def notes(self) -> dict:
        return self.setup.notes

    def idle(self, seconds: float) -> dict:
        """This host's busy cores in SECONDS with the variant set up and no traffic, its own
        processes' share, and what DPDK or Open vSwitch holds (memory, hugepages)."""
        s = self.setup
        c0, own0 = measure.cpu_times(), s.own_cpu()
        time.sleep(seconds)
        c1, own1 = measure.cpu_times(), s.own_cpu()
        own = (own1 - own0) / seconds if own0 is not None else 0.0
        row = {
            "variant": s.name,
            "idle_busy_cores": (c1 - c0).busy / seconds,
            "dpdk_idle_busy_cores": 0.0,
            "lcores": 0,
            "rss_mb": s.ovs.rss_mb() if s.ovs else 0.0,
            "memory_mb_reserved": 0,
            "hugepages": False,
            "hugepages_used": 0,
            "own_idle_busy_cores": own,
        }
        if s.l2fwd is not None:
            r = s.l2fwd.resources()
            row.update(
                dpdk_idle_busy_cores=own,
                lcores=r.lcores,
                rss_mb=r.rss_mb,
                memory_mb_reserved=r.memory_mb,
                hugepages=r.hugepages,
                hugepages_used=r.hugepages_used,
            )
        return row


@contextmanager
def dut_side(ports, params: dict):
    """The DUT over PORTS ([IN, OUT]) with the experiment's PARAMS; undone on exit."""
    dut = Dut(ports, params)
    try:
        yield dut
    finally:
        dut.close()


@contextmanager
def variant(name: str, ports, params: dict):
    """Variant NAME alone set up over PORTS; yields its `Setup`."""
    with dut_side(ports, params) as dut:
        dut.use(name)
        yield dut.setup


def build_l2fwd_here(build_dir: str | None, rings: list) -> list:
    """DPDK's l2fwd built on this host for each ring size of RINGS (None: l2fwd's own), in
    BUILD_DIR (a remote session's; None: the project's build/); its l2fwd runs use them."""
    import os
    from pathlib import Path

    if build_dir:
        os.environ["LABKIT_L2FWD_BUILD_DIR"] = str(Path(build_dir) / "l2fwd")  # this session only
    return [str(dpdk.build_l2fwd(ring_size=r)) for r in rings]


# ---------------------------------------------------------------- the receiver
@contextmanager
def receiver_sink(iface):
    """A bare XDP drop program (native) on IFACE, counting what arrives; a real interface
    is in promiscuous mode meanwhile (the forwarders write l2fwd's MAC, which a NIC would
    filter out; recorded for `labkit clean`; as it was after). Undone on exit."""
    with ExitStack() as stack:
        fn = stack.enter_context(bpf.load("xdp_minimal")).function("xdp_drop_bare")
        if iface.real:
            stack.enter_context(_promiscuous(iface))
        stack.enter_context(bpf.attach_xdp(iface, fn, "native"))
        yield None


IFF_PROMISC = 0x100


@contextmanager
def _promiscuous(iface):
    """IFACE in promiscuous mode (unless it was already), recorded as a foreign change."""
    from labkit.testbed import runs

    with iface.host.ipr() as ipr:
        already = bool(ipr.link("get", index=iface.ifindex)[0]["flags"] & IFF_PROMISC)
    if already:
        yield
        return

    def promisc(on: bool):
        with iface.host.ipr() as ipr:
            ipr.link("set", index=iface.ifindex, flags=IFF_PROMISC if on else 0, change=IFF_PROMISC)

    with runs.foreign_change({"kind": "promisc", "ifname": iface.name}, lambda: promisc(True), lambda: promisc(False)):
        yield
