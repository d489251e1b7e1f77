"""The attempts behind labkit.capabilities: each facility tried for real, once.

Every attempt does what labkit would do with the facility, on throw-away objects (a
program that drops, a veth pair in namespaces of its own, a DPDK port on a null device)
and undoes it; it returns a short note of what worked, or raises with the kernel's errno.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from contextlib import suppress

from labkit import bpf, capabilities, packets
from labkit.dataplanes.xdp_gen import in_netns, xmit_counters
from labkit.dpdk.runtime import file_prefix, remove_runtime_dir
from labkit.errors import LabkitError
from labkit.testbed import topology

ROOT_CAUSES = (
    "a container without full privileges, a security policy (LSM, lockdown) or missing "
    "capabilities (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
)
PAIR = topology.PROBE_HOSTS
GENERATORS = "the 'xdp_loop' generator (an XDP loop seeded by AF_PACKET), else 'trafgen' or 'testpmd'"


@capabilities.register(
    "test_run",
    "BPF_PROG_TEST_RUN (a program's own cost, the course's checks)",
    causes=ROOT_CAUSES,
    instead="none: 01 skips its program costs; the NAT's program times and the course's checks cannot run",
)
def test_run() -> str:
    with bpf.load("xdp_minimal") as prog:
        res = bpf.test_run(prog.function("xdp_drop_bare", "xdp"), bytes(64), repeat=10)
    if res.action != "XDP_DROP":
        raise LabkitError(f"a program returning XDP_DROP ran as {res.action}")
    return f"ran a bare XDP_DROP program ({res.duration_ns} ns per run)"


@capabilities.register(
    "live_frames",
    "BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES), which the 'xdp' generator and latency probes use",
    causes=f"a kernel before 5.18 (no such mode: EINVAL), {ROOT_CAUSES} (EPERM)",
    instead=f"{GENERATORS} for load; AF_PACKET probes stamped by a tc egress program for latency",
)
def live_frames() -> str:
    """What the generator does: an XDP_TX program run in live-frames mode from a thread in
    the sender's namespace, its frames out of a veth into a peer running native XDP; the
    sender's ndo_xdp_xmit counter must show them."""
    with topology.Topology(topology.pair(*PAIR)) as topo, bpf.load("xdp_minimal") as prog:
        snd, rcv = topo.iface(PAIR[0]), topo.iface(PAIR[1])
        with bpf.attach_xdp(rcv, prog.function("xdp_drop_bare", "xdp"), "native"):
            before = xmit_counters(snd)[0]
            ctx = bpf.XdpMd(data=0, data_end=64, ingress_ifindex=snd.ifindex)
            frame = packets.build(packets.FrameSpec(snd.mac, rcv.mac, "10.11.0.1", "10.11.0.2", size=64))
            in_netns(
                snd.host.netns,
                lambda: bpf.test_run(
                    prog.function("xdp_tx_bare", "xdp"),
                    frame,
                    repeat=64,
                    ctx=ctx,
                    flags=bpf.BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size=64,
                ),
            )
            sent = xmit_counters(snd)[0] - before
    if sent < 64:
        raise LabkitError(f"64 live frames ran, {sent} left the veth (its XDP transmit counted them)")
    return "sent 64 live frames (XDP_TX) out of a throw-away veth into a native XDP peer"


def _attach_on_pair(mode: str) -> str:
    with topology.Topology(topology.pair(*PAIR)) as topo, bpf.load("xdp_minimal") as prog:
        with bpf.attach_xdp(topo.iface(PAIR[1]), prog.function("xdp_pass_bare", "xdp"), mode):
            pass
    return f"attached an XDP program in {mode} mode to a throw-away veth"


@capabilities.register(
    "xdp_native",
    "native XDP on a veth (the xdp_native variants, XDP frames into a receiver)",
    causes=f"a kernel without veth XDP support, {ROOT_CAUSES}",
    instead="none for the xdp_native variants; 'auto' leaves out the generators of XDP frames (xdp, xdp_loop)",
)
def xdp_native() -> str:
    return _attach_on_pair("native")


@capabilities.register(
    "xdp_generic",
    "generic XDP (the xdp_generic variants)",
    causes=ROOT_CAUSES,
    instead="none: the xdp_generic variants cannot run",
)
def xdp_generic() -> str:
    return _attach_on_pair("generic")


@capabilities.register(
    "tc_clsact",
    "tc programs on a clsact qdisc (tc variants, the tc NAT, stamped latency probes)",
    causes=f"a kernel without CONFIG_NET_CLS_BPF or CONFIG_NET_SCH_INGRESS, {ROOT_CAUSES}",
    instead="none: the tc variants and the tc NAT cannot run; latency probes are skipped "
    "where live frames are refused too",
)
def tc_clsact() -> str:
    with topology.Topology(topology.pair(*PAIR)) as topo, bpf.load("xdp_minimal") as prog:
        with bpf.attach_tc(topo.iface(PAIR[0]), prog.function("tc_pass_bare", "tc"), "egress"):
            pass
    return "attached a tc program to a clsact qdisc on a throw-away veth"


@capabilities.register(
    "af_xdp",
    "AF_XDP sockets (DPDK's net_af_xdp, Open vSwitch afxdp ports)",
    causes="a kernel without CONFIG_XDP_SOCKETS, or a policy refusing the socket family",
    instead="net_af_packet ports (DPDK) and system ports (Open vSwitch)",
    needs_root=False,
)
def af_xdp() -> str:
    socket.socket(getattr(socket, "AF_XDP", 44), socket.SOCK_RAW).close()
    return "opened an AF_XDP socket"


@capabilities.register(
    "iptables",
    "iptables (the iptables variants, netfilter NAT)",
    causes="iptables not installed (Debian package iptables), or a kernel without netfilter",
    instead="none: the iptables variants cannot run",
)
def iptables() -> str:
    tool = shutil.which("iptables")
    if not tool:
        raise FileNotFoundError("iptables is not installed (Debian package iptables)")
    with topology.Topology(topology.TopologySpec(hosts=[PAIR[0]], links=[])) as topo:
        host = topo.host(PAIR[0])
        rule = ["PREROUTING", "-p", "udp", "--dport", "9", "-j", "DROP"]
        host.run([tool, "-t", "raw", "-A", *rule], timeout=20)
        host.run([tool, "-t", "raw", "-D", *rule], timeout=20)
    return f"added and removed a raw-table rule in a throw-away namespace ({tool})"


@capabilities.register(
    "pktgen",
    "the kernel's pktgen (/proc/net/pktgen)",
    causes="a kernel built without CONFIG_NET_PKTGEN, or no module to load",
    instead=GENERATORS,
)
def pktgen() -> str:
    if not os.path.isdir("/proc/net/pktgen"):
        with suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["modprobe", "pktgen"], capture_output=True, timeout=20)
    if not os.path.isdir("/proc/net/pktgen"):
        raise FileNotFoundError("no /proc/net/pktgen, and `modprobe pktgen` found no module")
    return "/proc/net/pktgen is there"


@capabilities.register(
    "dpdk_vdev",
    "DPDK's EAL with virtual devices and no hugepages (l2fwd, testpmd)",
    causes="DPDK not installed (Debian packages dpdk dpdk-dev), or memory locking refused",
    instead="none for the DPDK variants; 'auto' leaves out the testpmd generators",
)
def dpdk_vdev() -> str:
    tool = shutil.which("dpdk-testpmd")
    if not tool:
        raise FileNotFoundError("dpdk-testpmd is not installed (Debian package dpdk)")
    cpu = min(os.sched_getaffinity(0))
    prefix = file_prefix("probe")
    try:
        cp = subprocess.run(
            [
                tool,
                f"--lcores=0@{cpu},1@{cpu}",
                "--no-huge",
                "--no-pci",
                "-m",
                "256",
                f"--file-prefix={prefix}",
                "--vdev=net_null0",
                "--log-level=lib.eal:error",
                "--",
                "--total-num-mbufs=2048",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        remove_runtime_dir(prefix)
    if cp.returncode != 0:
        last = [l for l in (cp.stdout + cp.stderr).splitlines() if l.strip()][-2:]
        raise LabkitError(f"dpdk-testpmd on a null device exited {cp.returncode}: {' | '.join(last)}")
    return "dpdk-testpmd started a null device without hugepages"


@capabilities.register(
    "devmap_broadcast",
    "XDP redirect with a devmap broadcast (the 'xdp_loop' generator)",
    causes=f"a kernel before 5.13 (no BPF_F_BROADCAST), {ROOT_CAUSES}",
    instead="'trafgen' or 'testpmd'",
)
def devmap_broadcast() -> str:
    from labkit.dataplanes import xdp_loop  # noqa: PLC0415  (the generator's own control plane)

    return xdp_loop.devmap_broadcast_probe()
