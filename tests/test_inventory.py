"""Inventories (Ansible's YAML format): parsed and checked before any host is changed; and
the drop experiment with its sender and receiver on two "hosts" (sshd in namespaces,
tests/remote_hosts.py), reached over SSH with mitogen."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labkit.errors import InputError, MissingDependency
from labkit.testbed import inventory, runs
from labkit.testbed.remote import HostUnreachable

pytest.importorskip("mitogen")


def write(tmp_path, text: str):
    path = tmp_path / "inventory.yml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
all:
  vars:
    labkit_known_hosts: /etc/ssh/ssh_known_hosts
  hosts:
    gen1: {ansible_host: 192.0.2.1, ansible_user: lab, labkit_interface: enp1s0}
    dut1: {ansible_host: 192.0.2.2, labkit_interface: enp2s0, labkit_bastion: gen1}
  children:
    sender: {hosts: {gen1: }}
    receiver:
      vars: {labkit_pci: "0000:41:00.1"}
      hosts: {dut1: }
"""


def test_a_good_inventory_reads_as_ansible_would(tmp_path):
    inv = inventory.parse(write(tmp_path, GOOD))
    assert inv.roles == {"sender": "gen1", "receiver": "dut1"}
    inv.require(("sender", "receiver"))
    dut = inv.role("receiver").connection(inv)
    assert dut["hostname"] == "192.0.2.2" and dut["user"] == "root" and dut["known_hosts"] == "/etc/ssh/ssh_known_hosts"
    assert dut["bastion"]["hostname"] == "192.0.2.1" and dut["bastion"]["user"] == "lab"
    assert inv.role("receiver").vars["labkit_pci"] == "0000:41:00.1"  # group vars reach the host
    assert inv.role("sender").connection(inv)["user"] == "lab"


@pytest.mark.parametrize(
    "text, message",
    [
        ("all: [\n", r"not valid YAML.*line"),
        ("- a\n- b\n", r"top level must be a mapping `all:`"),
        (
            "all:\n  hosts: {a: {}}\n  children:\n    sender: {hosts: {a: }}\n    sender: {hosts: {a: }}\n",
            r"'sender' is given twice \(first on line 4\)",
        ),
        (
            "all:\n  hosts: {a: {}, b: {}}\n  children:\n    sender: {hosts: {a: , b: }}\n",
            r"role sender has 2 hosts \(a, b\)",
        ),
        (
            "all:\n  hosts: {a: {}, b: {}}\n  children:\n    sender: {hosts: {a: }}\n    lab:\n      children:\n"
            "        sender: {hosts: {b: }}\n",
            r"role sender is named twice \(hosts a and b\)",
        ),
        ("all:\n  hosts: {a: {}}\n  children:\n    sender: {host: {a: }}\n", r"group sender has \['host'\]"),
    ],
)
def test_malformed_inventories_are_refused_saying_what_to_fix(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        inventory.parse(write(tmp_path, text))


def test_what_an_experiment_needs_is_checked(tmp_path):
    inv = inventory.parse(write(tmp_path, GOOD))
    with pytest.raises(InputError, match=r"no host has the role 'dut': add `dut: \{hosts: \{HOST: \}\}`"):
        inv.require(("sender", "dut"))
    inv.hosts["dut1"].vars.pop("labkit_interface")
    with pytest.raises(InputError, match=r"host dut1 \(role receiver\) names no data-plane interface"):
        inv.require(("sender", "receiver"))
    with pytest.raises(InputError, match=r"inventory .*nosuch.yml does not exist"):
        inventory.parse(tmp_path / "nosuch.yml")


def test_a_two_port_dut_names_both_interfaces(tmp_path):
    """A DUT forwards between two ports: `labkit_interfaces: [IN, OUT]`; one interface, a
    malformed list or a conflicting labkit_interface is refused naming the host and the fix."""
    three = (
        GOOD.replace("receiver:\n      vars", "dut:\n      vars").replace(
            "    dut1: {ansible_host: 192.0.2.2, labkit_interface: enp2s0, labkit_bastion: gen1}\n",
            "    dut1: {ansible_host: 192.0.2.2, labkit_interfaces: [enp2s0, enp3s0], labkit_bastion: gen1}\n"
            "    rx1: {ansible_host: 192.0.2.3, labkit_interface: enp1s0}\n",
        )
        + "    receiver: {hosts: {rx1: }}\n"
    )
    inv = inventory.parse(write(tmp_path, three))
    inv.require(("sender", "dut", "receiver"), two_interfaces=("dut",))
    assert inv.role("dut").interfaces == ["enp2s0", "enp3s0"]
    assert inv.role("receiver").interfaces == ["enp1s0"]
    one = inventory.parse(
        write(tmp_path, three.replace("labkit_interfaces: [enp2s0, enp3s0]", "labkit_interface: enp2s0"))
    )
    one.require(("sender", "dut", "receiver"))  # an experiment that uses one port of it
    with pytest.raises(
        InputError,
        match=r"host dut1 \(role dut\) names one data-plane interface \(enp2s0\) but "
        r"forwards between two: set labkit_interfaces: \[IN, OUT\] under all.hosts.dut1",
    ):
        one.require(("sender", "dut", "receiver"), two_interfaces=("dut",))
    for bad, message in (
        ("[enp2s0, enp2s0]", "must be a list of one or two distinct"),
        ("[a, b, c]", "must be a list of one or two distinct"),
        ("enp2s0", "must be a list"),
    ):
        inv = inventory.parse(write(tmp_path, three.replace("[enp2s0, enp3s0]", bad)))
        with pytest.raises(InputError, match=rf"host dut1: labkit_interfaces .*{message}"):
            inv.require(("sender", "dut", "receiver"), two_interfaces=("dut",))
    clash = inventory.parse(
        write(tmp_path, three.replace("labkit_bastion: gen1}", "labkit_bastion: gen1, labkit_interface: x}"))
    )
    with pytest.raises(InputError, match=r"labkit_interface 'x' is not the first of labkit_interfaces"):
        clash.require(("dut",), two_interfaces=("dut",))


def test_the_drop_experiment_checks_its_inventory_first(tmp_path):
    from labkit.experiments import xdp_drop

    path = write(tmp_path, GOOD.replace("receiver:", "dut:"))
    with pytest.raises(InputError, match="no host has the role 'receiver'"):
        xdp_drop.Params(inventory=str(path)).validate()
    with pytest.raises(InputError, match="name the interfaces in the inventory"):
        xdp_drop.Params(inventory=str(write(tmp_path, GOOD)), receiver_if="lo", sender_if="lo").validate()


def sessions() -> set:
    """Remote sessions open on this machine's "hosts": each brought its BPF sources along."""
    return set(runs.REGISTRY_DIR.glob("lk*-bpf")) if runs.REGISTRY_DIR.is_dir() else set()


def test_hosts_are_checked_before_any_is_changed(remote_hosts, tmp_path):
    roles = ("sender", "receiver")
    bad_if = remote_hosts.inventory({"sender": "h1", "receiver": "h2"}, hostvars={"h2": {"labkit_interface": "eth9"}})
    before = sessions()
    with pytest.raises(
        InputError,
        match=r"interface 'eth9' does not exist on host h2 \(role receiver\); "
        r"interfaces there: .*mgmt0.*fix labkit_interface",
    ):
        with inventory.Testbed(bad_if, roles):
            pytest.fail("the body must not run")
    lacking = remote_hosts.inventory({"sender": "h1", "receiver": "h2"})
    with pytest.raises(MissingDependency, match=r"host h1 \(role sender\) lacks no-such-tool: run `labkit provision"):
        with inventory.Testbed(lacking, roles, tools={"sender": ["ip", "no-such-tool"]}):
            pytest.fail("the body must not run")
    down = remote_hosts.inventory(
        {"sender": "h1", "receiver": "h2"}, hostvars={"h2": {"ansible_host": "10.250.255.254"}}
    )
    with pytest.raises(HostUnreachable, match=r"host h2 .*check that the host is up"):
        with inventory.Testbed(down, roles):
            pytest.fail("the body must not run")
    assert sessions() == before, "every session opened for the checks was closed"


def test_drop_notebook_across_two_hosts(remote_hosts, tmp_path):
    """01-xdp-drop, the notebook end to end, with the sender on h1 and the receiver on h2:
    trafgen runs on h1, each variant is set up on h2 (the drop filter compiled by h2's bcc),
    over their data-plane veth; the report says what was not measured across hosts."""
    from labkit import results
    from labkit.reporting import batch

    path = remote_hosts.inventory({"sender": "h1", "receiver": "h2"})
    rcv_if = remote_hosts.data_if[("h2", "h1")]
    params = {
        "inventory": str(path),
        "smoke": True,
        "generator": "trafgen",
        "count": 2000,
        "progress": False,
        "variants": ["iptables_raw", "xdp_generic", "xdp_native"],
    }
    run = batch.execute(
        batch.notebooks(["01-xdp-drop"])[0], params, out_dir=tmp_path, data_dir=tmp_path / "data", progress=False
    )
    assert run.ok, run.error
    res = results.load_run(results.list_runs("xdp_drop", tmp_path / "data")[0])
    html = run.html.read_text()
    for part in ("program costs", "sweep", "NDR/PDR search", "fixed-load CPU measurement", "latency"):
        assert f"no {part} in this run: across hosts" in html, part
    t = res.table
    processed = t[t["measure"] == "processed_pps"].set_index("variant")["value"]
    assert set(processed.index) == {"iptables_raw", "xdp_generic", "xdp_native"}
    assert (processed > 0).all(), "every variant on h2 counted the packets h1 sent"
    offered = t[t["measure"] == "offered_pps"]["value"]
    assert (offered > 0).all()
    meta = res.metadata
    hosts = meta["topology"]["hosts"]
    assert {h["role"] for h in hosts.values()} == {"sender", "receiver"}
    assert hosts["h2"]["interface"] == rcv_if and hosts["h2"]["facts"]["nics"][rcv_if]["driver"] == "veth"
    assert hosts["h1"]["facts"]["kernel"] and hosts["h1"]["facts"]["versions"]["bcc"]
    assert "across hosts (h1 -&gt; h2)" in html or "across hosts (h1 -> h2)" in html
    assert t[t["measure"] == "cpu_ns_per_pkt"]["value"].isna().all(), "no CPU figure pretends to be a host's"
    assert "processed the most" in html and set(meta["skipped_parts"]) >= {"sweep", "latency", "program costs"}
    # nothing stays on the receiver: no XDP program, no iptables rule
    h2 = remote_hosts.host("h2")
    assert "xdp" not in h2.run(["ip", "link", "show", rcv_if]).stdout
    assert "labkit:" not in h2.run(["iptables-save", "-t", "raw"]).stdout


def test_provisioning_in_check_mode_changes_nothing(remote_hosts, tmp_path, capsys):
    """deploy/site.yml through ansible-runner against the namespace hosts, in check mode;
    tuning only where the inventory asks for it (h2: hugepages)."""
    pytest.importorskip("ansible_runner")
    from labkit import cli

    path = remote_hosts.inventory({"sender": "h1", "receiver": "h2"}, hostvars={"h2": {"labkit_hugepages": 16}})
    sysctl = Path("/etc/sysctl.d/80-labkit-hugepages.conf")
    before = sysctl.exists(), Path("/opt/labkit").exists()
    assert cli.main(["provision", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "h1: " in out and "h2: " in out and "would change" in out
    assert (sysctl.exists(), Path("/opt/labkit").exists()) == before, "check mode changed the host"
    from labkit import provision

    outcome = {(h, t): o for h, t, o in provision.provision(path, check=True, log=lambda m: None)["events"]}
    hugepages = "hugepages for DPDK, now and after a reboot"
    assert outcome[("h2", hugepages)] == "changed" and outcome[("h1", hugepages)] == "skipped"
    assert all(outcome[(h, "NICs bound to vfio-pci for DPDK")] == "skipped" for h in ("h1", "h2")), "off by default"


def test_provisioning_names_the_host_it_cannot_reach(remote_hosts):
    pytest.importorskip("ansible_runner")
    from labkit import provision

    path = remote_hosts.inventory(
        {"sender": "h1", "receiver": "h2"}, hostvars={"h2": {"ansible_host": "10.250.255.254"}}
    )
    with pytest.raises(provision.ProvisionFailed, match=r"host h2: unreachable"):
        provision.provision(path, check=True, log=lambda m: None)


def test_a_host_lost_mid_run_is_named_the_others_undone_and_clean_finishes_it(remote_hosts, capsys):
    """The receiver's session dies with an XDP program attached on h2 and a generator open
    on h1: the next call names h2; leaving the testbed closes h1 (its session undone); the
    program stays on h2 until `labkit clean --inventory` undoes it there."""
    import os
    import signal

    from labkit import cli
    from labkit.experiments import across_hosts
    from labkit.experiments.xdp_drop_receiver import drop_receiver

    path = remote_hosts.inventory({"sender": "h1", "receiver": "h2"})
    rcv_if = remote_hosts.data_if[("h2", "h1")]
    h2 = remote_hosts.host("h2")
    with pytest.raises(HostUnreachable, match=r"host h2 .*connection was lost.*labkit clean --inventory"):
        with across_hosts.Testbed(path, ("sender", "receiver")) as bed:
            snd, rcv = bed.end("sender"), bed.end("receiver")
            sender_session = runs.REGISTRY_DIR / f"{snd.host.prefix}.json"
            with across_hosts.RemoteGenerator(snd, "trafgen"):
                with bed.hold("receiver", drop_receiver, "udp") as receiver:
                    receiver("use", "xdp_generic")
                    assert "xdpgeneric" in h2.run(["ip", "link", "show", rcv_if]).stdout
                    os.kill(rcv.host.call(os.getpid), signal.SIGKILL)  # as when h2's network goes
                    receiver("processed")
    assert not sender_session.exists(), "h1's session was closed and undone"
    assert "xdpgeneric" in h2.run(["ip", "link", "show", rcv_if]).stdout, "h2 could not be reached to undo it"
    capsys.readouterr()
    assert cli.main(["clean", "--inventory", str(path)]) == 0
    said = capsys.readouterr().out
    named = {line.split(":")[0] for line in said.splitlines()}
    assert {"h1", "h2", "h3"} <= named and "h2: removed " in said, said  # each host checked is named
    assert "xdp" not in h2.run(["ip", "link", "show", rcv_if]).stdout, "clean --inventory detached it on h2"
