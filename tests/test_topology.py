"""Topology build and teardown leave nothing behind: on success, on an exception, on
SIGTERM; a crashed run's leftovers are found and removed by `labkit clean`; bad input is
refused before the kernel is touched."""

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import needs_root, own_leftovers

from labkit import cleanup
from labkit.errors import InputError, NotRoot
from labkit.testbed import hosts, runs, topology

pytestmark = needs_root
PY = sys.executable


def test_build_and_teardown_leave_nothing():
    with topology.Topology(topology.pair()) as topo:
        prefix = topo.run.prefix
        assert len(own_leftovers(prefix)) == 2  # two namespaces
        snd, rcv = topo.iface("snd"), topo.iface("rcv")
        assert snd.peer is rcv and rcv.address == "10.11.0.2"
        assert len(snd.name) <= 15 and snd.name.startswith(prefix)
        assert snd.mac != rcv.mac and snd.ifindex > 0
        assert topo.host("snd").run(["ping", "-c1", "-W2", "10.11.0.2"], check=False).returncode == 0
        assert (runs.REGISTRY_DIR / f"{prefix}.json").exists()
    assert own_leftovers(prefix) == []
    assert not (runs.REGISTRY_DIR / f"{prefix}.json").exists()


@pytest.mark.parametrize("ipv6", [False, True])
def test_ipv6_is_off_in_namespaces_unless_asked(ipv6):
    with topology.Topology(topology.pair(ipv6=ipv6)) as topo:
        rcv = topo.iface("rcv")
        flag = topo.host("rcv").read(f"/proc/sys/net/ipv6/conf/{rcv.name}/disable_ipv6").strip()
        assert flag == ("0" if ipv6 else "1")
        assert topo.metadata()["ipv6"] is ipv6


def test_veth_queues():
    with topology.Topology(topology.pair(queues=2)) as topo:
        rcv = topo.iface("rcv")
        queues = topo.host("rcv").run(["ls", f"/sys/class/net/{rcv.name}/queues"]).stdout.split()
        assert sorted(queues) == ["rx-0", "rx-1", "tx-0", "tx-1"]
    with pytest.raises(InputError, match="queues"):
        topology.pair(queues=0).validate()


def test_teardown_when_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with topology.Topology(topology.pair()) as topo:
            prefix = topo.run.prefix
            raise RuntimeError("boom")
    assert own_leftovers(prefix) == []


def test_half_built_topology_is_torn_down():
    # ethtool refuses an unknown feature after the namespaces and the veth exist
    spec = topology.pair(offloads={"no-such-feature": "off"})
    before = set(cleanup.labkit_namespaces())
    with pytest.raises(Exception, match="no-such-feature"):
        with topology.Topology(spec):
            pass
    assert not set(cleanup.labkit_namespaces()) - before  # none of its own (others may come and go)


CHILD = textwrap.dedent("""
    import sys, time
    from labkit.testbed import topology
    with topology.Topology(topology.pair()) as topo:
        print(topo.run.prefix, flush=True)
        topo.host("rcv").spawn(["sleep", "60"])
        time.sleep(60)
""")


def _child_prefix(proc):
    line = proc.stdout.readline().strip()
    assert line.startswith("lk"), proc.stderr.read()
    return line


def test_sigterm_undoes_everything():
    proc = subprocess.Popen([PY, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = _child_prefix(proc)
    assert own_leftovers(prefix)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert own_leftovers(prefix) == []
    assert not [p for p in _pids_named("sleep") if _netns_of(p) is None]  # no orphaned sleeper


def test_ctrl_c_undoes_everything():
    proc = subprocess.Popen([PY, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = _child_prefix(proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert own_leftovers(prefix) == []


def test_clean_removes_what_a_killed_run_left():
    proc = subprocess.Popen([PY, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = _child_prefix(proc)
    time.sleep(0.3)
    ns = [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]
    sleeper = [p for n in ns for p in hosts.pids_in_netns(n)]
    # A power cut: the run's watcher goes too, so nothing runs and everything is left.
    watcher = json.loads((runs.REGISTRY_DIR / f"{prefix}.json").read_text())["watchdog"]
    os.kill(watcher, signal.SIGKILL)
    proc.kill()
    proc.wait(10)
    assert own_leftovers(prefix), "SIGKILL of the run and its watcher should leave the namespaces behind"
    removed = cleanup.clean(log=lambda *a: None)
    assert set(ns) <= set(removed["namespaces"])
    assert own_leftovers(prefix) == []
    for pid in sleeper:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_clean_leaves_live_runs_and_other_namespaces_alone():
    subprocess.run(["ip", "netns", "add", "notlabkit-test"], check=True)
    try:
        with topology.Topology(topology.pair()) as topo:
            cleanup.clean(log=lambda *a: None)
            assert len(own_leftovers(topo.run.prefix)) == 2  # alive: untouched
        assert "notlabkit-test" in os.listdir("/run/netns")
    finally:
        subprocess.run(["ip", "netns", "del", "notlabkit-test"])


@pytest.mark.parametrize(
    "spec, message",
    [
        (lambda: topology.TopologySpec(hosts=["averyverylonghostname"]), "too long"),
        (
            lambda: topology.TopologySpec(
                hosts=["a", "b"], links=[topology.LinkSpec("a", "b", a_name="waytoolongname")]
            ),
            "Linux allows 15",
        ),
        (
            lambda: topology.TopologySpec(
                hosts=["a", "b"], links=[topology.LinkSpec("a", "b", a_mac="02:00:00:00:00")]
            ),
            "malformed",
        ),
        (
            lambda: topology.TopologySpec(
                hosts=["a", "b"], links=[topology.LinkSpec("a", "b", a_addr="10.0.0.300/24")]
            ),
            "malformed",
        ),
        (
            lambda: topology.TopologySpec(hosts=["a", "b"], links=[topology.LinkSpec("a", "b", a_addr="10.0.0.1")]),
            "prefix",
        ),
        (lambda: topology.TopologySpec(hosts=["a", "b"], links=[topology.LinkSpec("a", "c")]), "not among the hosts"),
        (lambda: topology.pair(sender_if="lknosuchif0", receiver_if="lknosuchif1"), "does not exist"),
        (
            lambda: topology.TopologySpec(
                hosts=["a", "b"], links=[topology.LinkSpec("a", "b", a_mac="03:00:00:00:00:01")]
            ),
            "multicast",
        ),
        (
            lambda: topology.TopologySpec(
                hosts=["a", "b"], links=[topology.LinkSpec("a", "b", b_mac="00:00:00:00:00:00")]
            ),
            "all zeros",
        ),
    ],
)
def test_bad_input_is_refused_before_the_kernel(spec, message):
    before = set(cleanup.labkit_namespaces())
    with pytest.raises(InputError, match=message):
        with topology.Topology(spec()):
            pass
    assert not set(cleanup.labkit_namespaces()) - before  # none of its own (others may come and go)


def test_not_root_is_a_clear_error(monkeypatch):
    # what the process would see as an unprivileged user (the suite itself runs as root)
    monkeypatch.setattr(runs.os, "geteuid", lambda: 1000)
    before = set(cleanup.labkit_namespaces())
    with pytest.raises(NotRoot, match="sudo"):
        with topology.Topology(topology.pair()):
            pass
    assert not set(cleanup.labkit_namespaces()) - before  # none of its own (others may come and go)


def _pids_named(name):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open(f"/proc/{d}/comm").read().strip() == name:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _netns_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def test_routes_forwarding_and_extra_addresses_through_netlink():
    spec = topology.TopologySpec(
        hosts=["a", "r", "b"],
        links=[
            topology.LinkSpec("a", "r", "10.31.0.2/24", "10.31.0.1/24"),
            topology.LinkSpec("r", "b", "10.32.0.1/24", "10.32.0.2/24"),
        ],
        forwarding=["r"],
        routes=[("a", "default", "10.31.0.1"), ("b", "10.31.0.0/24", "10.32.0.1")],
    )
    with topology.Topology(spec) as topo:
        a = topo.host("a")
        assert a.run(["ping", "-c1", "-W2", "10.32.0.2"], check=False).returncode == 0
        with topology.address(topo.host("b"), topo.iface("b").name, "10.32.0.9/32"):
            assert a.run(["ping", "-c1", "-W2", "10.32.0.9"], check=False).returncode == 0
        assert a.run(["ping", "-c1", "-W1", "10.32.0.9"], check=False).returncode != 0
    with pytest.raises(InputError, match="route"):
        topology.TopologySpec(hosts=["a"], routes=[("x", "default", "10.0.0.1")]).validate()


def test_a_zombie_owner_counts_as_dead():
    """A run whose process was killed but not yet reaped (a zombie) is a dead run to
    `labkit clean` and the registry, not a live one."""
    proc = subprocess.Popen([PY, "-c", "pass"])
    stat = f"/proc/{proc.pid}/stat"
    deadline = time.monotonic() + 10
    while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not runs._pid_alive(proc.pid)
        assert runs._pid_alive(os.getpid())
    finally:
        proc.wait()


def test_a_batch_clean_with_its_own_registry_spares_other_runs(tmp_path):
    """What `labkit run` / `labkit report` do at their end (`clean_dead_runs`) undoes the
    dead runs of their own registry and never a live testbed registered elsewhere (before,
    a batch with its own LABKIT_RUNTIME_DIR removed every other run's namespaces)."""
    env = dict(os.environ, LABKIT_RUNTIME_DIR=str(tmp_path / "run"))
    proc = subprocess.Popen([PY, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    dead = _child_prefix(proc)
    watcher = json.loads((tmp_path / "run" / f"{dead}.json").read_text())["watchdog"]
    os.kill(watcher, signal.SIGKILL)  # nothing else undoes it: the clean below must
    proc.kill()
    proc.wait(10)
    assert own_leftovers(dead)
    with topology.Topology(topology.pair()) as topo:  # alive, in this process's registry
        cp = subprocess.run(
            [
                PY,
                "-c",
                "from labkit import cleanup; print(sorted(cleanup.clean_dead_runs("
                "log=lambda m: None).get('namespaces', [])))",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert cp.returncode == 0, cp.stderr
        assert len(own_leftovers(topo.run.prefix)) == 2, "another registry's live run was touched"
        assert topo.host("snd").run(["ping", "-c1", "-W2", "10.11.0.2"], check=False).returncode == 0
    assert own_leftovers(dead) == [] and all(n.startswith(dead) for n in ast.literal_eval(cp.stdout))
    assert not (tmp_path / "run" / f"{dead}.json").exists()
