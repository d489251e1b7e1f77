"""02-l2-forwarding across three "hosts" (sshd in namespaces, tests/remote_hosts.py): the
generator on h1, each forwarder set up on h2 between its two data-plane veths, the sink
on h3; and inventories refused before any host is changed."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import labkit
from labkit.errors import InputError, LabkitError
from labkit.testbed import runs

pytest.importorskip("mitogen")

ROLES = {"sender": "h1", "dut": "h2", "receiver": "h3"}


def sessions(hosts) -> set:
    """labkit sessions registered on these "hosts" (the registry says in which network
    namespace a remote session runs), and the processes running in them besides sshd."""
    spaces = {f"net:[{os.stat(f'/run/netns/{hosts.host(n).netns}').st_ino}]" for n in ("h1", "h2", "h3")}
    found = set()
    for f in runs.REGISTRY_DIR.glob("lk*.json") if runs.REGISTRY_DIR.is_dir() else ():
        try:
            if json.loads(f.read_text()).get("netns") in spaces:
                found.add(f.name)
        except (OSError, ValueError):
            pass
    return found | {f"{n}:{p}" for n in ("h1", "h2", "h3") for p in processes(hosts, n) - {"sshd"}}


def dut_ports(hosts) -> list:
    return [hosts.data_if[("h2", "h1")], hosts.data_if[("h2", "h3")]]


def inventory(hosts, **dut):
    return hosts.inventory(
        ROLES,
        hostvars={"h2": {"labkit_interfaces": dut_ports(hosts), "labkit_build_dir": str(labkit.BUILD_DIR), **dut}},
    )


def host_state(hosts) -> dict:
    """What a test can see of each host's data plane: links (with XDP, promisc, masters), processes."""
    out = {}
    for name in ("h1", "h2", "h3"):
        h = hosts.host(name)
        out[name] = (h.run(["ip", "-d", "link", "show"]).stdout, h.run(["tc", "qdisc", "show"]).stdout)
    return out


def processes(hosts, name: str) -> set:
    """Names of the processes running in host NAME's network namespace."""
    out = set()
    for pid in subprocess.run(
        ["ip", "netns", "pids", hosts.host(name).netns], capture_output=True, text=True
    ).stdout.split():
        try:
            out.add(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    return out


def test_l2fwd_notebook_across_three_hosts(remote_hosts, tmp_path):
    """02-l2-forwarding, the notebook end to end, with the generator on h1, each forwarder
    on h2 between its two data-plane veths and the sink on h3; the report says what was not
    measured across hosts, and nothing is left on any host."""
    from labkit import dpdk, results
    from labkit.experiments import l2fwd
    from labkit.reporting import batch

    variants = ["xdp_redirect", "bridge", "tc_redirect"]
    if dpdk.l2fwd_status()[0]:
        variants.append("dpdk_l2fwd")
    path = inventory(remote_hosts)
    before = host_state(remote_hosts)
    assert not sessions(remote_hosts)
    # ovs with a PMD mask naming no CPU of h2 cannot start there: left out and marked, as on one machine
    params = {
        "inventory": str(path),
        "smoke": True,
        "count": 5000,
        "variants": variants + ["ovs"],  # generator auto
        "ovs_pmd_cpus": "0x100",
        "idle_s": 0.2,
        "progress": False,
    }
    run = batch.execute(
        batch.notebooks(["02-l2-forwarding"])[0], params, out_dir=tmp_path, data_dir=tmp_path / "data", progress=False
    )
    assert run.ok, run.error
    res = results.load_run(results.list_runs("l2fwd", tmp_path / "data")[0])
    html, meta = run.html.read_text(), res.metadata
    for part in ("latency", "DUT CPU per packet"):
        assert f"no {part} in this run: across hosts" in html, part
    t = res.table
    trials = t[t["kind"] == "trial"]
    fwd = trials[trials["measure"] == "processed_pkts"].set_index("variant")["value"]
    assert set(fwd.index) == set(variants) | {l2fwd.BASELINE}
    assert (fwd > 0).all(), f"every forwarder on h2 delivered to h3: {fwd.to_dict()}"
    offered = trials[trials["measure"] == "offered_pkts"]["value"]
    assert (offered >= 5000).all()
    lost = trials[trials["measure"].isin(["lost_before_dut_pkts", "lost_in_dut_pkts", "lost_after_dut_pkts"])]
    assert set(lost["variant"]) == set(variants), "losses before/in/after the DUT for every forwarder"
    assert trials[trials["measure"] == "cpu_ns_per_pkt"]["value"].isna().all(), "no CPU figure pretends to be a host's"
    if "dpdk_l2fwd" in variants:
        rx = trials[(trials["variant"] == "dpdk_l2fwd") & (trials["measure"] == "l2fwd_rx_port0")]["value"]
        assert (rx > 0).all(), "l2fwd on h2 counted the frames itself"
    caveats = meta["caveats"]
    assert any("across hosts (h1 -> h2 -> h3)" in c for c in caveats)
    assert any("latency not measured across hosts" in c for c in caveats)
    assert any("generator auto across hosts: trafgen" in c for c in caveats)
    assert any(c.startswith("not run: host h2: ") and c.endswith("[ovs]") for c in caveats), caveats
    assert {r["variant"] for r in meta["resources"]} == set(variants) | {l2fwd.BASELINE}
    assert len(l2fwd.headline(t)) == len(variants) + 1 and "caveat: across hosts" in html
    hosts = meta["topology"]["hosts"]
    assert {h["role"] for h in hosts.values()} == {"sender", "dut", "receiver"}
    assert hosts["h2"]["interface"] == dut_ports(remote_hosts)
    # every host's state is undone: no XDP program, bridge, qdisc, promisc or process left
    assert host_state(remote_hosts) == before
    assert not sessions(remote_hosts), "every host's session was closed, its processes stopped"


def test_an_inventory_the_dut_cannot_serve_is_refused_before_any_change(remote_hosts, data_dir):
    """A DUT naming one port, a port that is not on it, or where l2fwd cannot be built: refused
    naming the host and the fix, with nothing changed on any host."""
    from labkit.experiments import l2fwd

    before = host_state(remote_hosts)
    assert not sessions(remote_hosts)
    one = remote_hosts.inventory(ROLES)  # h2 names only its port towards h1
    with pytest.raises(
        InputError,
        match=r"host h2 \(role dut\) names one data-plane interface .* but forwards "
        r"between two: set labkit_interfaces: \[IN, OUT\] under all.hosts.h2",
    ):
        l2fwd.run(data_dir=data_dir, inventory=str(one), smoke=True, variants=["bridge"], progress=False)
    absent = inventory(remote_hosts, labkit_interfaces=[dut_ports(remote_hosts)[0], "eth9"])
    with pytest.raises(
        InputError,
        match=r"interface 'eth9' does not exist on host h2 \(role dut\); interfaces "
        r"there: .*fix labkit_interfaces",
    ):
        l2fwd.run(
            data_dir=data_dir,
            inventory=str(absent),
            smoke=True,
            variants=["bridge"],
            generator="trafgen",
            progress=False,
        )
    blocked = data_dir / "not-a-folder"
    blocked.write_text("")
    unbuildable = inventory(remote_hosts, labkit_build_dir=str(blocked / "build"))
    from labkit import dpdk

    fix = (
        r"building DPDK's l2fwd in .*not-a-folder/build there failed: .*set labkit_build_dir of h2"
        if dpdk.l2fwd_status()[0]
        else r".*install DPDK there"
    )
    with pytest.raises(LabkitError, match=r"host h2 \(role dut\) cannot run dpdk_l2fwd: " + fix):
        l2fwd.run(
            data_dir=data_dir,
            inventory=str(unbuildable),
            smoke=True,
            variants=["bridge", "dpdk_l2fwd"],
            generator="trafgen",
            progress=False,
        )
    assert host_state(remote_hosts) == before and not sessions(remote_hosts)


def test_a_lost_receiver_sink_is_undone_by_clean(remote_hosts):
    """The receiver's session dies holding the sink: its XDP program and promiscuous mode
    stay on h3 until `labkit clean --inventory` undoes both there."""
    import signal

    from labkit import cli
    from labkit.experiments import across_hosts, l2fwd_dut
    from labkit.testbed.remote import HostUnreachable

    path = inventory(remote_hosts)
    rcv_if = remote_hosts.data_if[("h3", "h2")]
    h3 = remote_hosts.host("h3")
    with pytest.raises(HostUnreachable, match=r"host h3 .*connection was lost"):
        with across_hosts.Testbed(path, ("receiver",)) as bed:
            rcv = bed.end("receiver")
            with bed.hold("receiver", l2fwd_dut.receiver_sink):
                shown = h3.run(["ip", "link", "show", rcv_if]).stdout
                assert "PROMISC" in shown and "xdp" in shown
                os.kill(rcv.host.call(os.getpid), signal.SIGKILL)
                rcv.stats()
    assert "PROMISC" in h3.run(["ip", "link", "show", rcv_if]).stdout, "h3 could not be reached to undo it"
    assert cli.main(["clean", "--inventory", str(path)]) == 0
    shown = h3.run(["ip", "link", "show", rcv_if]).stdout
    assert "PROMISC" not in shown and "xdp" not in shown, "clean --inventory undid both on h3"
