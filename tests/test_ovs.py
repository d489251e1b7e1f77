"""Open vSwitch for real: a switch of the run's own (ovsdb-server and ovs-vswitchd in the
DUT's namespace, a private folder) forwards between veths with system and afxdp ports,
with its MAC rewrite checked on the received frames; bad input is refused before anything
starts; nothing (daemon, folder, bridge device, XDP program, AF_XDP socket) is left after
a normal exit, an error, or a crash followed by `labkit clean`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import bpf, cleanup, dpdk, ovs, traffic
from labkit.errors import InputError, MissingDependency

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")
N = 2000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def needs_ovs():
    ok, why = ovs.status()
    if not ok:
        pytest.skip(why)


def ovs_daemons(folder) -> list[int]:
    """PIDs of OVS daemons whose command line names FOLDER."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if str(folder).encode() in cmd and (b"ovsdb-server" in cmd or b"ovs-vswitchd" in cmd):
                out.append(int(d))
    return out


def links(host) -> set:
    with host.ipr() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}


def assert_nothing_left(sw, host, ports):
    assert not ovs_daemons(sw.dir), "no OVS daemon of the switch runs"
    assert not sw.dir.exists(), "its folder is gone"
    assert sw.bridge not in links(host) and "ovs-netdev" not in links(host), "no bridge or datapath device"
    assert not any(bpf.xdp_state(p).get("IFLA_XDP_ATTACHED") for p in ports), "no XDP program"
    assert dpdk.xsk_sockets(host) == 0, "no AF_XDP socket"


@pytest.mark.parametrize("port_type", ["system", "afxdp"])
def test_switch_forwards_with_mac_rewrite(fwd_topo, capture, port_type):
    snd, rcv = fwd_topo.iface("snd"), fwd_topo.iface("rcv")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    dut = fwd_topo.host("dut")
    cap = capture(rcv)
    with ovs.OvsSwitch(dut, [d0, d1], port_type=port_type, xdp_mode="native") as sw:
        assert sw.dir.name.startswith(fwd_topo.run.prefix + "-ovs") and len(ovs_daemons(sw.dir)) == 2
        assert sw.bridge in links(dut), "the netdev bridge's device is in the DUT's namespace"
        if port_type == "afxdp":
            assert bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED") == "xdp", "afxdp port in native XDP mode"
            assert dpdk.xsk_sockets(dut) >= 2
        sw.forward(0, 1, set_dst="02:00:00:00:00:01", set_src=d1.mac)
        spec = traffic.TrafficSpec.between(snd, d0, count=N, size=64, rate_pps=10_000)
        spec.dst_ip = rcv.address
        assert traffic.generator("trafgen", snd).send(spec).packets == N
        frames = cap.udp_from(cap.frames(N), snd)
        stats = sw.port_stats()
        assert "n_packets=" in sw.flows()
        assert sw.cpu_seconds() > 0 and sw.rss_mb() > 1, "both daemons' CPU time and memory are read"
    if port_type == "afxdp":
        assert len(frames) == N, f"{len(frames)} of {N} frames went through OVS ({port_type} ports)"
    else:
        # a system port's packet socket overflows between polls of OVS's main thread: here
        # about half arrive even at 10 kpps. What OVS sent out is what arrived.
        assert frames, "OVS forwarded nothing over system ports"
        assert len(frames) <= stats[d1.name]["tx_packets"] <= len(frames) + 10
    assert all(f[0:6] == bytes.fromhex("020000000001") for f in frames)
    assert all(f[6:12] == bytes.fromhex(d1.mac.replace(":", "")) for f in frames)
    assert stats[d1.name]["tx_packets"] >= len(frames) and stats[d0.name]["rx_packets"] >= N
    assert_nothing_left(sw, dut, [d0, d1])


def test_bad_input_is_refused_before_anything_starts(fwd_topo):
    dut = fwd_topo.host("dut")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    with pytest.raises(InputError, match="port type 'dpdk'"):
        ovs.OvsSwitch(dut, [d0, d1], port_type="dpdk")
    with pytest.raises(InputError, match="native-with-zerocopy.*veths have no zero-copy"):
        ovs.OvsSwitch(dut, [d0, d1], port_type="afxdp", xdp_mode="native-with-zerocopy")
    with pytest.raises(InputError, match="do not exist on host dut"):
        ovs.OvsSwitch(dut, [d0, "nosuchif"])
    with pytest.raises(InputError, match="Linux allows 15"):
        ovs.OvsSwitch(dut, [d0, d1], bridge="a-very-long-bridge")
    with pytest.raises(InputError, match="pmd_cpus"):
        ovs.OvsSwitch(dut, [d0, d1], pmd_cpus="0x100")
    with pytest.raises(InputError, match="datapath 'kernel'"):
        ovs.OvsSwitch(dut, [d0, d1], datapath="kernel")
    if not ovs.kernel_datapath()[0]:  # this testbed's kernel: no openvswitch module
        with pytest.raises(InputError, match="no openvswitch module.*datapath='netdev'"):
            ovs.OvsSwitch(dut, [d0, d1], datapath="system")
    assert not ovs.switch_dirs(fwd_topo.run.prefix)


def test_missing_ovs_names_the_package(fwd_topo, tmp_path, monkeypatch):
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Open vSwitch's programs
    assert not ovs.status()[0] and "openvswitch-switch" in ovs.status()[1]
    sw = ovs.OvsSwitch(fwd_topo.host("dut"), [d0, d1])
    with pytest.raises(MissingDependency, match="openvswitch-switch"):
        sw.start()
    assert not sw.dir.exists()


def test_error_inside_stops_everything(fwd_topo):
    dut = fwd_topo.host("dut")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    with pytest.raises(RuntimeError, match="boom"):
        with ovs.OvsSwitch(dut, [d0, d1], port_type="afxdp", xdp_mode="generic") as sw:
            assert bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED") == "xdpgeneric"
            raise RuntimeError("boom")
    assert_nothing_left(sw, dut, [d0, d1])


CRASHING_RUN = """
import sys, time
from labkit import ovs
from labkit.testbed import topology
from labkit.experiments import l2fwd
topo = topology.Topology(l2fwd.spec()).__enter__()
sw = ovs.OvsSwitch(topo.host("dut"), [topo.iface("dut", "snd"), topo.iface("dut", "rcv")]).__enter__()
print(topo.run.prefix, sw.dir, flush=True)
time.sleep(120)
"""


def test_clean_removes_a_crashed_runs_switch():
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_RUN], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        prefix, folder = proc.stdout.readline().split()
        assert ovs_daemons(folder), "the run's switch is up"
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: nothing of the run's own clean-up runs
        proc.wait(10)
    deadline = time.monotonic() + 20  # the run's watcher may be undoing it already
    while time.monotonic() < deadline and ovs.switch_dirs(prefix) and not cleanup.leftovers(prefix=prefix)["ovs"]:
        time.sleep(0.2)
    cleanup.clean_run(prefix, log=lambda *_: None)
    assert not ovs_daemons(folder) and not os.path.exists(folder)
    assert not any(cleanup.leftovers(prefix=prefix).values())
