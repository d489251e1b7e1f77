"""The real-interface path: interfaces labkit did not create (here a veth pair made in the
root namespace by the test, standing in for two cabled NICs) are used as they are, and
everything labkit changed on them (addresses, XDP, clsact, iptables rules) is undone, also
after a crash, by `labkit clean` from the run's registry."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from conftest import needs_root

from labkit import cleanup
from labkit.experiments import xdp_drop
from labkit.testbed import runs

pytestmark = needs_root


def _state(ifname):
    link = subprocess.run(["ip", "-d", "link", "show", ifname], capture_output=True, text=True).stdout
    addrs = subprocess.run(["ip", "-4", "addr", "show", ifname], capture_output=True, text=True).stdout
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", ifname], capture_output=True, text=True).stdout
    return {"xdp": "prog/xdp" in link, "inet": "inet " in addrs, "clsact": "clsact" in qdisc}


def _labkit_rules():
    return [
        l
        for l in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines()
        if "labkit:" in l
    ]


def test_xdp_drop_experiment_on_real_interfaces_leaves_them_as_found(cabled):
    a, b = cabled
    rules_before = _labkit_rules()
    r = xdp_drop.run(
        smoke=True, sender_if=a, receiver_if=b, generator="trafgen", variants=["iptables_raw", "tc", "xdp_generic"]
    )
    rates = r.table[r.table["measure"] == "processed_pps"].groupby("variant")["value"].mean()
    assert set(rates.index) == {"iptables_raw", "tc", "xdp_generic"} and (rates > 0).all()
    for ifname in (a, b):
        assert _state(ifname) == {"xdp": False, "inet": False, "clsact": False}
        assert os.path.exists(f"/sys/class/net/{ifname}")  # never deleted
    assert _labkit_rules() == rules_before


CHILD = textwrap.dedent("""
    import sys, time
    from labkit.testbed import topology
    from labkit.dataplanes.drop_filter import DropFilter
    a, b = sys.argv[1], sys.argv[2]
    with topology.Topology(topology.pair(sender_if=a, receiver_if=b)) as topo, DropFilter() as f:
        with f.attach_tc(topo.iface("rcv")), f.attach_xdp(topo.iface("rcv"), "generic"):
            print(topo.run.prefix, flush=True)
            time.sleep(60)
""")


def test_clean_undoes_a_killed_run_on_real_interfaces(cabled):
    a, b = cabled
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, a, b], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    prefix = proc.stdout.readline().strip()
    assert prefix.startswith("lk"), proc.stderr.read()
    assert _state(b) == {"xdp": True, "inet": True, "clsact": True}
    # A power cut: the run's watcher goes too, so only `labkit clean` can undo the run.
    watcher = json.loads((runs.REGISTRY_DIR / f"{prefix}.json").read_text())["watchdog"]
    os.kill(watcher, signal.SIGKILL)
    proc.kill()
    proc.wait(10)
    assert (runs.REGISTRY_DIR / f"{prefix}.json").exists()
    removed = cleanup.clean(log=lambda *x: None)
    assert {r["kind"] for r in removed["foreign"]} >= {"xdp", "clsact", "address"}
    assert _state(b) == {"xdp": False, "inet": False, "clsact": False}
    assert _state(a)["inet"] is False
    assert not (runs.REGISTRY_DIR / f"{prefix}.json").exists()
