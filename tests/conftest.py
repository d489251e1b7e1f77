"""Shared fixtures. The suite runs as root against real kernel objects (namespaces, veths,
XDP and tc programs, iptables, trafgen, DPDK). Tests that need root skip without it."""
from __future__ import annotations

import os

import pytest

from labkit import cleanup
from labkit.testbed import topology

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


@pytest.fixture
def pair():
    """A built sender/receiver veth pair (10.11.0.1 -> 10.11.0.2), torn down afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with topology.Topology(topology.pair()) as topo:
        yield topo


def own_leftovers(prefix: str) -> list[str]:
    """Kernel objects still carrying PREFIX (a finished run's): namespaces and root links."""
    return [n for n in cleanup.labkit_namespaces() + cleanup.labkit_root_links() if n.startswith(prefix)]


TOOLS = {"trafgen", "dpdk-testpmd", "l2fwd", "iperf3", "tcpdump", "pktgen", "dpdk-pktgen"}


def _tool_processes() -> set:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                comm = open(f"/proc/{d}/comm").read().strip()
            except OSError:
                continue
            if comm in TOOLS:
                out.add((int(d), comm))
    return out


def _root_xdp_links() -> set:
    from labkit.testbed.hosts import netlink

    with netlink() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()
                if (dict((l.get_attr("IFLA_XDP") or {}).get("attrs", [])).get("IFLA_XDP_ATTACHED"))}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no labkit namespace, link, iptables rule or registry of a
    finished run remains (runs of other live processes are theirs), no traffic or
    forwarding process the suite started is still running, and no interface of the root
    namespace gained an XDP program."""
    if os.geteuid() != 0:
        yield
        return
    procs, xdp = _tool_processes(), _root_xdp_links()
    yield
    left = cleanup.leftovers()
    bad = {k: v for k, v in left.items() if v}
    assert not bad, f"the suite left kernel state behind: {bad}"
    import time

    deadline = time.monotonic() + 5  # processes being reaped right now get a moment
    while _tool_processes() - procs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _tool_processes() - procs, f"processes left running: {_tool_processes() - procs}"
    assert not _root_xdp_links() - xdp, f"XDP programs left attached: {_root_xdp_links() - xdp}"
