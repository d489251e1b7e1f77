"""Shared fixtures. The suite runs as root against real kernel objects (namespaces, veths,
XDP and tc programs, iptables, trafgen, DPDK). Tests that need root skip without it."""
from __future__ import annotations

import os

import pytest

from labkit import lifecycle, topology

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
    return [n for n in lifecycle.labkit_namespaces() + lifecycle.labkit_root_links() if n.startswith(prefix)]


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no labkit namespace, link, XDP program, iptables rule or
    process of a finished run remains (runs of other live processes are theirs)."""
    yield
    if os.geteuid() != 0:
        return
    left = lifecycle.leftovers()
    bad = {k: v for k, v in left.items() if v}
    assert not bad, f"the suite left kernel state behind: {bad}"
