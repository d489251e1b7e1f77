"""`labkit doctor` on Open vSwitch and DPDK's net_af_xdp, for real: where they work here the
checks say so after starting a switch of their own on throw-away veths (and leave nothing
behind); where a piece is missing (a PATH without Open vSwitch, a pkg-config that finds no
DPDK) they say what to install, without touching the kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit import doctor, ovs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


def _ovs_dirs() -> set:
    return set(ovs.OVS_DIR.iterdir()) if ovs.OVS_DIR.is_dir() else set()


def _netns() -> set:
    d = Path("/run/netns")
    return set(os.listdir(d)) if d.is_dir() else set()


@needs_root
def test_ovs_and_af_xdp_checks_where_they_work(capsys):
    installed, why = ovs.status()
    if not installed:
        pytest.skip(f"Open vSwitch is not installed here: {why}")
    before_dirs, before_ns = _ovs_dirs(), _netns()
    results = {name: (ok, detail) for name, ok, detail in doctor.checks()}
    for name, port in (
        ("Open vSwitch system ports (ovs)", "system"),
        ("Open vSwitch afxdp ports (ovs_afxdp)", "afxdp"),
    ):
        ok, detail = results[name]
        assert ok, f"{name}: {detail}"
        assert f"opened {port} ports" in detail and "Open vSwitch " in detail
    ok, detail = results["Open vSwitch installed"]
    assert ok and "datapath" in detail
    ok, detail = results["DPDK net_af_xdp (dpdk_l2fwd_afxdp)"]
    assert ok, detail
    assert "librte_net_af_xdp" in detail and "AF_XDP sockets" in detail
    # the throw-away testbeds and switches are gone (other runs' may come and go meanwhile)
    assert not {d for d in _ovs_dirs() - before_dirs}, "a doctor switch's folder was left behind"
    assert not [n for n in _netns() - before_ns if n.endswith(("-a", "-sw", "-b"))], "a doctor namespace was left"
    assert doctor.main() in (0, 1)
    lines = [l.split() for l in capsys.readouterr().out.splitlines()]
    for variant in ("ovs", "ovs_afxdp", "dpdk_l2fwd_afxdp"):
        assert ["ready", "02-l2-forwarding", variant] in lines, f"doctor does not report 02's {variant} ready"


def test_missing_open_vswitch_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no ovs-* tools
    before = _netns()
    for check in (doctor._ovs_installed, doctor._ovs_ports("system"), doctor._ovs_ports("afxdp")):
        name, ok, detail = doctor._check("ovs", check)
        assert not ok and "openvswitch-switch" in detail and "apt-get install" in detail
    assert not [n for n in _netns() - before if n.endswith("-sw")], "a testbed was built for a missing OVS"


def test_missing_dpdk_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(tmp_path))  # a pkg-config that finds no libdpdk
    monkeypatch.setenv("PKG_CONFIG_PATH", str(tmp_path))
    name, ok, detail = doctor._check("af_xdp", doctor._dpdk_af_xdp)
    assert not ok and "DPDK is not installed" in detail and "dpdk-dev" in detail
