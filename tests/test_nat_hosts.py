"""03-ebpf-nat across hosts, for real: three namespace "hosts" running sshd
(tests/remote_hosts.py): the client h1, the NAT h2 with two data-plane veths (towards h1,
the inside; towards h3, the outside), the server h3."""

from __future__ import annotations

from html import escape

import pytest

from labkit.errors import InputError
from labkit.experiments import nat

pytest.importorskip("mitogen")

ON, LAB = "labkit.testbed.bed:on_interface", "labkit.experiments.nat.inventory_lab"  # what a session holds
ROLES = {"sender": "h1", "dut": "h2", "receiver": "h3"}


def nat_inventory(hosts, dut_interfaces=None):
    inside, outside = hosts.data_if[("h2", "h1")], hosts.data_if[("h2", "h3")]
    ifs = dut_interfaces if dut_interfaces is not None else [inside, outside]
    return hosts.inventory(ROLES, hostvars={"h2": {"labkit_interface": ifs[0], "labkit_interfaces": ifs}})


def host_state(hosts, name: str) -> dict:
    """What a run could leave on a host: XDP or clsact on its links, iptables rules, routes,
    checksum offload changed."""
    h = hosts.host(name)
    return {
        "links": [
            line.split(" link/")[0]
            for line in h.run(["ip", "-o", "-d", "link"]).stdout.splitlines()
            if "xdp" in line or "clsact" in line
        ],
        "qdiscs": [q for q in h.run(["tc", "qdisc", "show"]).stdout.splitlines() if "clsact" in q],
        "rules": [
            r
            for t in ("raw", "nat")
            for r in h.run(["iptables-save", "-t", t]).stdout.splitlines()
            if r.startswith("-A")
        ],
        "routes": h.run(["ip", "route"]).stdout.splitlines(),
        "tx_checksumming": [
            h.run(["ethtool", "-k", i]).stdout.count("tx-checksumming: on")
            for (a, _), i in sorted(hosts.data_if.items())
            if a == name
        ],
    }


def test_nat_notebook_across_three_hosts(remote_hosts, tmp_path):
    """03-ebpf-nat, the notebook end to end, through tc_nat, xdp_nat and iptables on h2: the
    server h3 counts translated packets (from the SNAT address), none from another source,
    and the checks pass; through routing it counts the client's own; the interpretation
    keeps its rate sentences with no CPU clause; the report says which parts were not
    measured across hosts; nothing is left on any host afterwards."""
    import pandas as pd

    from labkit import results
    from labkit.reporting import batch

    remote_hosts.host("h2").run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # a NAT host routes
    inventory = nat_inventory(remote_hosts)
    before = {n: host_state(remote_hosts, n) for n in ROLES.values()}
    snat = remote_hosts.data_addresses["h2"][1]  # h2's address towards h3
    params = {
        "inventory": str(inventory),
        "variants": ["tc_nat", "xdp_nat", "iptables", "routing"],
        "smoke": True,
        "progress": False,
        "udp_count": 20_000,
    }
    run = batch.execute(
        batch.notebooks(["03-ebpf-nat"])[0], params, out_dir=tmp_path, data_dir=tmp_path / "data", progress=False
    )
    assert run.ok, run.error
    res, html = results.load_run(results.list_runs("nat", tmp_path / "data")[0]), run.html.read_text()
    assert "across hosts: it runs on one machine only" in html, "the report names the parts left out across hosts"
    t = res.table
    udp = t[t["kind"] == "udp"]
    for v in ("tc_nat", "xdp_nat", "iptables", "routing"):  # routing: expected from the client itself
        got = udp[(udp["variant"] == v) & (udp["measure"] == "processed_pkts")]["value"]
        assert len(got) == 1 and got.iloc[0] > 0, f"{v}: no translated packet counted at the server"
        other = udp[(udp["variant"] == v) & (udp["measure"] == "server_other_source")]["value"]
        assert other.iloc[0] == 0, f"{v}: packets reached the server from another source than {snat}"
    checks = pd.DataFrame(res.metadata["checks"])
    assert set(checks["variant"]) == {"tc_nat", "xdp_nat", "iptables"}
    assert checks["ok"].all(), checks[~checks["ok"]].to_string()
    exchange = checks[checks["check"] == "udp_exchange"]["detail"]
    assert all(f"source {snat} " in d for d in exchange), list(exchange)
    assert udp[udp["measure"].str.contains("cpu")]["value"].isna().all(), "CPU is blank across hosts"
    assert any("across hosts" in c for c in res.metadata["caveats"])
    text = nat.interpret(t, checks, cpu=False, meta=res.metadata)  # what the notebook printed, from the run
    assert "tc_nat against its baseline routing: " in text and "Goals: xdp_nat at " in text, text
    assert "nan" not in text, text
    assert escape(text.splitlines()[0], quote=False) in html, "the report shows it"
    assert "CPU per packet: not measured across hosts" in html
    assert {n: host_state(remote_hosts, n) for n in ROLES.values()} == before, "the run left state on a host"


def test_dut_with_one_interface_or_crossed_ones_is_refused_before_any_change(remote_hosts, data_dir):
    remote_hosts.host("h2").run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    inventory = nat_inventory(remote_hosts, [remote_hosts.data_if[("h2", "h1")]])
    before = {n: host_state(remote_hosts, n) for n in ROLES.values()}
    with pytest.raises(InputError, match=r"h2 \(role dut\).*labkit_interfaces: \[IN, OUT\]"):
        nat.run(inventory=str(inventory), variants=["tc_nat"], smoke=True, progress=False, data_dir=data_dir)
    swapped = nat_inventory(remote_hosts, [remote_hosts.data_if[("h2", "h3")], remote_hosts.data_if[("h2", "h1")]])
    with pytest.raises(
        InputError,
        match=r"h1's address 10\.11\.0\.1 .* is not on the NAT's inside network "
        r"10\.11\.1\.0/24 \(h2\)",
    ):
        nat.run(inventory=str(swapped), variants=["tc_nat"], smoke=True, progress=False, data_dir=data_dir)
    assert {n: host_state(remote_hosts, n) for n in ROLES.values()} == before


def test_dut_that_does_not_forward_is_refused_before_any_change(remote_hosts, data_dir):
    inventory = nat_inventory(remote_hosts)
    before = {n: host_state(remote_hosts, n) for n in ROLES.values()}
    with pytest.raises(InputError, match=r"h2 \(role dut\) does not forward IPv4.*ip_forward=1"):
        nat.run(inventory=str(inventory), variants=["tc_nat"], smoke=True, progress=False, data_dir=data_dir)
    assert {n: host_state(remote_hosts, n) for n in ROLES.values()} == before


def test_what_a_lost_session_changed_on_the_client_is_undone_by_clean(remote_hosts):
    """The client's route to the server, and for the XDP variants its veth's XDP_PASS
    program and checksum offload, are recorded in the session's registry on the client:
    when the session dies, `labkit clean --inventory` undoes them."""
    import os
    import signal

    from labkit import cleanup
    from labkit.testbed.remote import HostUnreachable, RemoteHost

    inventory = nat_inventory(remote_hosts)
    server, inside = remote_hosts.data_addresses["h3"][0], remote_hosts.data_addresses["h2"][0]
    h1, ifname = remote_hosts.host("h1"), remote_hosts.data_if[("h1", "h2")]
    host = RemoteHost(**remote_hosts.spec("h1")).connect()
    try:
        offload = h1.run(["ethtool", "-k", ifname]).stdout.count("tx-checksumming: on")
        host.hold(ON, f"{LAB}:route", ifname, server, inside).__enter__()
        host.hold(ON, f"{LAB}:xdp_end", ifname).__enter__()
        assert f"{server} via {inside}" in h1.run(["ip", "route"]).stdout
        assert "xdp" in h1.run(["ip", "-o", "link", "show", ifname]).stdout
        assert h1.run(["ethtool", "-k", ifname]).stdout.count("tx-checksumming: on") == 0
        os.kill(host.call(os.getpid), signal.SIGKILL)  # the session dies with its route in place
        with pytest.raises(HostUnreachable):
            host.run(["true"])
    finally:
        host.close()
    assert f"{server} via {inside}" in h1.run(["ip", "route"]).stdout
    cleanup.clean_hosts(inventory, log=lambda msg: None)
    assert f"{server} via {inside}" not in h1.run(["ip", "route"]).stdout
    assert "xdp" not in h1.run(["ip", "-o", "link", "show", ifname]).stdout
    assert h1.run(["ethtool", "-k", ifname]).stdout.count("tx-checksumming: on") == offload == 1


def test_untranslated_packets_count_as_another_source_not_as_translated(remote_hosts):
    """Through `routing` (no translation) the client's UDP reaches the server with the
    client's own address: the server's counter, expecting the SNAT address, counts none of
    it as translated and all of it as from another source; a second counter expecting the
    client's address counts it. Each iptables rule is read on its own line, though all
    four carry the run's tag and the same match."""
    from contextlib import ExitStack

    from labkit.experiments.nat import inventory_lab
    from labkit.testbed.remote import RemoteHost

    remote_hosts.host("h2").run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    client, server = remote_hosts.data_addresses["h1"][0], remote_hosts.data_addresses["h3"][0]
    inside, snat = remote_hosts.data_addresses["h2"]
    client_if, server_if = remote_hosts.data_if[("h1", "h2")], remote_hosts.data_if[("h3", "h2")]
    dut_ifs = [remote_hosts.data_if[("h2", "h1")], remote_hosts.data_if[("h2", "h3")]]
    before = {n: host_state(remote_hosts, n) for n in ROLES.values()}
    with ExitStack() as stack:
        h1, h2, h3 = (stack.enter_context(RemoteHost(**remote_hosts.spec(n))) for n in ("h1", "h2", "h3"))
        stack.enter_context(h1.hold(ON, f"{LAB}:route", client_if, server, inside))
        stack.enter_context(h3.hold(ON, f"{LAB}:route", server_if, client, snat))
        stack.enter_context(h2.hold(ON, f"{LAB}:dut_variant", dut_ifs, "routing", [20000, 29999], "MASQUERADE"))
        # the client's counter drops what it counts: it goes below (rules are inserted at the top)
        port = inventory_lab.FLOOD_PORT
        untranslated = stack.enter_context(h3.hold(ON, f"{LAB}:server_counter", server_if, client, port))
        translated = stack.enter_context(h3.hold(ON, f"{LAB}:server_counter", server_if, snat, port))
        h1.run(["ping", "-c", "1", "-W", "2", server], check=False, timeout=10)  # neighbours resolved
        h1.call(inventory_lab.echo_exchange, server, port, 40001, 10, 0.1)  # nothing echoes: 10 sent
        seen, own = translated("counts"), untranslated("counts")
    assert seen["expected"] == 0, f"untranslated packets counted as from the SNAT address {snat}: {seen}"
    assert seen["all"] >= 10 and seen["all"] - seen["expected"] >= 10, f"not counted as another source: {seen}"
    assert own["expected"] >= 10 and own["all"] >= 10, f"not counted as from the client {client}: {own}"
    assert {n: host_state(remote_hosts, n) for n in ROLES.values()} == before, "the check left state on a host"
