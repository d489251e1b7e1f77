"""02-l2-forwarding across three "hosts" (sshd in namespaces, tests/remote_hosts.py): the
generator on h1, each forwarder set up on h2 between its two data-plane veths, the sink
on h3; and inventories refused before any host is changed."""
from __future__ import annotations

import json

import pytest

import labkit
from labkit.errors import InputError
from labkit.testbed import runs

pytest.importorskip("mitogen")

ROLES = {"sender": "h1", "dut": "h2", "receiver": "h3"}


def sessions() -> set:
    """Remote sessions open on this machine's "hosts": each brought its BPF sources along."""
    return set(runs.REGISTRY_DIR.glob("lk*-bpf")) if runs.REGISTRY_DIR.is_dir() else set()


def dut_ports(hosts) -> list:
    return [hosts.data_if[("h2", "h1")], hosts.data_if[("h2", "h3")]]


def inventory(hosts, **dut):
    return hosts.inventory(ROLES, hostvars={"h2": {"labkit_interfaces": dut_ports(hosts),
                                                   "labkit_build_dir": str(labkit.BUILD_DIR), **dut}})


def host_state(hosts) -> dict:
    """What a test can see of each host's data plane: links (with XDP, promisc, masters), processes."""
    out = {}
    for name in ("h1", "h2", "h3"):
        h = hosts.host(name)
        out[name] = (h.run(["ip", "-d", "link", "show"]).stdout, h.run(["tc", "qdisc", "show"]).stdout)
    return out


def test_l2fwd_across_three_hosts(remote_hosts, data_dir):
    from labkit import dpdk
    from labkit.experiments import l2fwd

    variants = ["xdp_redirect", "bridge", "tc_redirect"]
    if dpdk.l2fwd_status()[0]:
        variants.append("dpdk_l2fwd")
    path = inventory(remote_hosts)
    before, open_before = host_state(remote_hosts), sessions()
    res = l2fwd.run(data_dir=data_dir, inventory=str(path), smoke=True, generator="trafgen", count=5000,
                    variants=variants, idle_s=0.2, progress=False)
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
    assert any("across hosts (h1 -> h2 -> h3)" in c for c in res.caveats)
    assert any("latency not measured across hosts" in c for c in res.caveats)
    assert set(res.resources["variant"]) == set(variants) | {l2fwd.BASELINE}
    assert len(res.headline()) == len(variants) + 1 and res.interpretation
    meta = json.loads((res.run_dir / "metadata.json").read_text())
    hosts = meta["topology"]["hosts"]
    assert {h["role"] for h in hosts.values()} == {"sender", "dut", "receiver"}
    assert hosts["h2"]["interface"] == dut_ports(remote_hosts)
    # every host's state is undone: no XDP program, bridge, qdisc, promisc or process left
    assert host_state(remote_hosts) == before
    assert not sessions() - open_before, "every host's session was closed"
    assert "l2fwd" not in remote_hosts.host("h2").run(["ps", "-eo", "comm"]).stdout


def test_an_inventory_the_dut_cannot_serve_is_refused_before_any_change(remote_hosts, data_dir):
    from labkit.experiments import l2fwd

    before, open_before = host_state(remote_hosts), sessions()
    one = remote_hosts.inventory(ROLES)  # h2 names only its port towards h1
    with pytest.raises(InputError, match=r"host h2 \(role dut\) names one data-plane interface .* but forwards "
                                         r"between two: set labkit_interfaces: \[IN, OUT\] under all.hosts.h2"):
        l2fwd.run(data_dir=data_dir, inventory=str(one), smoke=True, variants=["bridge"], progress=False)
    absent = inventory(remote_hosts, labkit_interfaces=[dut_ports(remote_hosts)[0], "eth9"])
    with pytest.raises(InputError, match=r"interface 'eth9' does not exist on host h2 \(role dut\); interfaces "
                                         r"there: .*fix labkit_interfaces"):
        l2fwd.run(data_dir=data_dir, inventory=str(absent), smoke=True, variants=["bridge"], generator="trafgen",
                  progress=False)
    assert host_state(remote_hosts) == before and not sessions() - open_before
    assert not list(data_dir.glob("l2fwd/*")) or all((d / "metadata.json").exists() for d in data_dir.glob("l2fwd/*"))
