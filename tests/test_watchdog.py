"""No orphaned testbeds: a run whose process dies, however it dies, is undone by its watcher
within seconds, with no `labkit clean`.

Each case builds a real testbed (namespaces, veths, an XDP and a tc program and a clsact
qdisc on a pair of root-namespace interfaces standing in for real NICs, an iptables rule in
the root namespace, child processes in a namespace and in the root namespace), ends its
owner one way, and polls until everything of that run is gone, at most 10 seconds."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import needs_root

from labkit import cleanup, watchdog
from labkit.dpdk import runtime
from labkit.testbed import runs, topology

pytestmark = needs_root

VENV_BIN = Path(sys.executable).parent
LIMIT = 10.0  # seconds the issue allows from the owner's death to nothing left

#: what the notebook, the kernel and the child script build
SETUP = textwrap.dedent("""
    import contextlib, signal, time
    from pathlib import Path
    from labkit.testbed import hosts, netfilter, topology
    from labkit.dataplanes.drop_filter import DropFilter

    def build(stack, slow_undo=False):
        topo = stack.enter_context(topology.Topology(topology.pair()))
        real = stack.enter_context(topology.Topology(topology.pair(sender_if=A, receiver_if=B)))
        if slow_undo:  # undoing stops here, deaf to signals, for longer than the kernel's grace
            stack.callback(lambda: (signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}),
                                    time.sleep(30)))
        filt = stack.enter_context(DropFilter())
        stack.enter_context(filt.attach_xdp(real.iface("rcv"), "generic"))
        stack.enter_context(filt.attach_tc(real.iface("rcv")))
        stack.enter_context(netfilter.rule(hosts.ROOT_HOST, "raw", "PREROUTING", "-i", B, "-p", "udp", "-j", "ACCEPT"))
        stack.enter_context(hosts.ROOT_HOST.spawn(["sleep", "601"], name="root-child"))
        topo.host("rcv").spawn(["sleep", "600"], name="ns-child")
        Path(MARKER).write_text(topo.run.prefix)

    def hold():
        deadline = time.monotonic() + HOLD
        while time.monotonic() < deadline and not Path(MARKER + ".finish").exists():
            time.sleep(0.1)
""")
#: an experiment: build, hold, undo on leaving
BUILD = SETUP + "with contextlib.ExitStack() as stack:\n    build(stack)\n    hold()\n"
#: a live testbed held across cells (as a lab holds it): built, and the cell returns
ACROSS_CELLS = SETUP + "lab = contextlib.ExitStack()\nbuild(lab)\n"
#: an experiment whose undo takes longer than the kernel's grace: killed half-way through undoing
SLOW_TO_UNDO = SETUP + "with contextlib.ExitStack() as stack:\n    build(stack, slow_undo=True)\n    hold()\n"

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "execution_count": None,
            "outputs": [],
            "source": 'A = "a"  # the sending "real" interface\nB = "b"  # the receiving one\n'
            'MARKER = "/tmp/x"  # where the run prefix is written once the testbed exists\n'
            "HOLD = 120  # seconds to hold the testbed\n",
        },
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": BUILD},
    ],
    "metadata": {
        "kernelspec": {"name": "labkit", "display_name": "Python (labkit)", "language": "python"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


# ---------------------------------------------------------------- what a run holds
def _ip(*args) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout


def _processes_of(prefix: str) -> list[int]:
    """Processes the run started: by environment (anywhere) and in its namespaces."""
    from labkit.testbed.hosts import pids_in_netns

    pids = {pid for pid, run in cleanup.run_processes() if run == prefix}
    for ns in cleanup.labkit_namespaces():
        if ns.startswith(prefix + "-"):
            pids.update(pids_in_netns(ns))
    return sorted(p for p in pids if _alive(p))


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def watchers() -> dict[str, int]:
    """Running watchers: run prefix -> pid."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            args = open(f"/proc/{d}/cmdline").read().split("\0")
        except OSError:
            continue
        if "labkit.watchdog" in args and _alive(int(d)):
            out[args[args.index("labkit.watchdog") + 2]] = int(d)
    return out


def held(prefix: str, cabled: tuple[str, str] | None = None) -> dict:
    """Everything of run PREFIX still in the kernel (empty lists when all is undone)."""
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    state = {
        "registry": [prefix] if (runs.REGISTRY_DIR / f"{prefix}.json").exists() else [],
        "namespaces": [n for n in cleanup.labkit_namespaces() if n.startswith(prefix + "-")],
        "links": [n for n in cleanup.labkit_root_links() if n.startswith(prefix + "-")],
        "iptables": [l for l in iptables.splitlines() if f"labkit:{prefix}" in l],
        "processes": _processes_of(prefix),
        "watcher": [w for p, w in watchers().items() if p == prefix],
        "dpdk": runtime.dpdk_processes(prefix + "-") + runtime.runtime_dirs(prefix + "-"),
    }
    if cabled:
        for ifname in cabled:
            if "prog/xdp" in _ip("-d", "link", "show", ifname):
                state.setdefault("xdp", []).append(ifname)
            if (
                "clsact"
                in subprocess.run(["tc", "qdisc", "show", "dev", ifname], capture_output=True, text=True).stdout
            ):
                state.setdefault("tc", []).append(ifname)
            if "inet " in _ip("-4", "addr", "show", ifname):
                state.setdefault("addresses", []).append(ifname)
    return {k: v for k, v in state.items() if v}


def wait_until_undone(prefix: str, since: float, cabled=None) -> float:
    """Poll until nothing of PREFIX is left; the seconds it took from SINCE."""
    deadline = since + LIMIT
    while True:
        left = held(prefix, cabled)
        if not left:
            took = time.monotonic() - since
            print(f"\nrun {prefix} undone {took:.1f} s after its owner was ended")
            return took
        if time.monotonic() > deadline:
            pytest.fail(f"{LIMIT:.0f} s after its owner was ended, run {prefix} still holds {left}")
        time.sleep(0.1)


def wait_for_marker(marker: Path, what, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return marker.read_text()
        if what() is not None:
            pytest.fail("the owner ended before building its testbed")
        time.sleep(0.1)
    pytest.fail("the testbed was not built in time")


def owner_of(prefix: str) -> int:
    return json.loads((runs.REGISTRY_DIR / f"{prefix}.json").read_text())["pid"]


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, LABKIT_DATA_DIR=str(tmp_path / "data"), LABKIT_REPORTS_DIR=str(tmp_path / "reports"))


def _assert_full_testbed(prefix, cabled):
    left = held(prefix, cabled)
    assert {"registry", "namespaces", "iptables", "processes", "watcher", "xdp", "tc", "addresses"} <= set(left), left
    assert len(left["processes"]) >= 2, left


# ---------------------------------------------------------------- papermill
@pytest.mark.parametrize(
    "how", ["SIGTERM to papermill's group", "SIGINT to papermill's group", "SIGKILL to the kernel"]
)
def test_a_papermill_run_is_undone_however_it_is_stopped(how, cabled, env, tmp_path):
    nb = tmp_path / "hold.ipynb"
    nb.write_text(json.dumps(NOTEBOOK))
    marker = tmp_path / "prefix"
    a, b = cabled
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "papermill"),
            str(nb),
            str(tmp_path / "out.ipynb"),
            "-k",
            "labkit",
            "-p",
            "A",
            a,
            "-p",
            "B",
            b,
            "-p",
            "MARKER",
            str(marker),
            "-p",
            "HOLD",
            "120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        prefix = wait_for_marker(marker, proc.poll)
        _assert_full_testbed(prefix, cabled)
        kernel = owner_of(prefix)
        assert kernel != proc.pid
        since = time.monotonic()
        if how.startswith("SIGKILL"):
            os.kill(kernel, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT)
        wait_until_undone(prefix, since, cabled)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


# ---------------------------------------------------------------- JupyterLab
def _kernel(env):
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="labkit")
    km.shutdown_wait_time = 1.0  # JupyterLab's grace is a few seconds; the kernel is busy anyway
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


@pytest.mark.parametrize("how", ["restart", "shut down"])
@pytest.mark.parametrize("what", ["idle live testbed", "running experiment", "experiment slow to undo"])
def test_a_kernel_restart_or_shutdown_in_jupyterlab_undoes_the_testbed(how, what, cabled, env, tmp_path):
    marker = tmp_path / "prefix"
    km, kc = _kernel(env)
    try:
        a, b = cabled
        code = {
            "idle live testbed": ACROSS_CELLS,
            "running experiment": BUILD,
            "experiment slow to undo": SLOW_TO_UNDO,
        }[what]
        kc.execute(f"A, B, MARKER, HOLD = {a!r}, {b!r}, {str(marker)!r}, 120\n" + code)
        prefix = wait_for_marker(marker, lambda: None if km.is_alive() else "dead")
        if what == "idle live testbed":
            kc.execute_interactive("1", timeout=30)  # the cell has returned: the kernel is idle
        _assert_full_testbed(prefix, cabled)
        since = time.monotonic()
        if how == "restart":
            km.restart_kernel(now=False)
        else:
            km.shutdown_kernel(now=False)
        wait_until_undone(prefix, since, cabled)
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def test_killing_a_kernel_that_holds_a_live_lab_undoes_the_lab(env, tmp_path):
    marker = tmp_path / "prefix"
    km, kc = _kernel(env)
    try:
        kc.execute(
            textwrap.dedent(f"""
            from pathlib import Path
            from labkit.testbed import hosts
            from labkit.widgets.drop import DropLab
            lab = DropLab(hook="XDP generic")
            lab.send(count=1000)
            root_child = hosts.ROOT_HOST.spawn(["sleep", "602"], name="root-child")
            Path({str(marker)!r}).write_text(lab.topo.run.prefix)
        """)
        )
        prefix = wait_for_marker(marker, lambda: None if km.is_alive() else "dead")
        left = held(prefix)
        assert {"registry", "namespaces", "processes", "watcher"} <= set(left), left
        since = time.monotonic()
        os.kill(owner_of(prefix), signal.SIGKILL)
        wait_until_undone(prefix, since)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---------------------------------------------------------------- runs that end normally, and neighbours
CHILD = "import sys; A, B, MARKER, HOLD = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])\n" + BUILD


def _child(cabled, marker: Path, hold: float = 120) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *cabled, str(marker), str(hold)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_run_that_ends_normally_leaves_no_watcher(cabled, tmp_path):
    marker = tmp_path / "prefix"
    proc = _child(cabled, marker)
    prefix = wait_for_marker(marker, proc.poll)
    watcher = watchers()[prefix]
    Path(str(marker) + ".finish").touch()
    assert proc.wait(60) == 0, proc.stderr.read()
    deadline = time.monotonic() + LIMIT
    while held(prefix, cabled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held(prefix, cabled) == {}
    assert not _alive(watcher)
    assert not (watchdog.LOG).exists() or prefix not in (watchdog.LOG).read_text()  # it undid nothing


def test_the_watcher_is_in_a_session_of_its_own_and_no_child_of_the_owner():
    with topology.Topology(topology.pair()) as topo:
        prefix = topo.run.prefix
        pid = watchers()[prefix]
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ppid, pgid, sid = int(stat[1]), int(stat[2]), int(stat[3])
        assert ppid != os.getpid()
        assert sid == pid and pgid == pid  # its own session, so no group or session signal of ours reaches it
        assert sid != os.getsid(0)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
        assert int(status["SigBlk"], 16) == 0  # nothing held: SIGTERM stops it
        assert pid not in cleanup.leftovers(prefix=prefix)["processes"]  # cleanup never takes it for the run's
    deadline = time.monotonic() + LIMIT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert held(prefix) == {}


def test_a_forked_helper_is_never_taken_for_the_owner():
    """A process forked from the owner (as pyroute2 forks to work in a namespace) that
    closes the run or dies does not end the run or wake its watcher."""
    with topology.Topology(topology.pair()) as topo:
        prefix = topo.run.prefix
        child = os.fork()
        if child == 0:
            try:
                topo.run.close()
                topo.run.note_foreign({"kind": "address", "ifname": "nothere", "address": "10.9.9.9", "prefixlen": 32})
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        time.sleep(1.5)  # longer than the watcher's own recheck: it must still be there
        left = held(prefix)
        assert {"registry", "namespaces", "watcher"} <= set(left), left
        assert "nothere" not in (runs.REGISTRY_DIR / f"{prefix}.json").read_text()
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]


def test_two_runs_one_killed_the_other_is_untouched_and_finishes(tmp_path):
    pairs = []
    for _ in range(2):
        a, b = f"wdg{secrets.token_hex(2)}a", f"wdg{secrets.token_hex(2)}b"
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        pairs.append((a, b))
    procs = []
    try:
        procs = [_child(pairs[i], tmp_path / f"prefix{i}") for i in range(2)]
        victim, survivor = [wait_for_marker(tmp_path / f"prefix{i}", procs[i].poll) for i in range(2)]
        before = held(survivor, pairs[1])
        since = time.monotonic()
        procs[0].kill()
        wait_until_undone(victim, since, pairs[0])
        assert held(survivor, pairs[1]) == before
        assert procs[1].poll() is None
        (tmp_path / "prefix1.finish").touch()
        assert procs[1].wait(60) == 0, procs[1].stderr.read()
        deadline = time.monotonic() + LIMIT
        while held(survivor, pairs[1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held(survivor, pairs[1]) == {}
        log = watchdog.LOG
        assert survivor not in log.read_text() and victim in log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)
        for a, _b in pairs:
            subprocess.run(["ip", "link", "del", a], capture_output=True)


DPDK_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from labkit import dpdk
    from labkit.testbed import hosts, topology

    a, b, marker = sys.argv[1:4]
    with topology.Topology(topology.pair()) as topo, \\
         topology.Topology(topology.pair(sender_if=a, receiver_if=b)) as real:
        prefix = dpdk.file_prefix("gen")
        argv = ["dpdk-testpmd", "-l", "0,1", "--no-huge", "--no-pci", "-m", "256", "--file-prefix", prefix,
                f"--vdev=net_af_packet0,iface={a}", "--", "--total-num-mbufs=2048", "--forward-mode=txonly",
                "--stats-period", "1"]
        with hosts.ROOT_HOST.spawn(argv, name="dpdk-testpmd") as gen:
            while gen.running and "forwarding - ports=" not in gen.output():
                time.sleep(0.1)
            Path(marker).write_text(topo.run.prefix)
            time.sleep(120)
""")


def test_a_killed_run_takes_its_dpdk_generator_and_runtime_directory_along(cabled, tmp_path):
    if not os.path.exists("/usr/bin/dpdk-testpmd"):
        pytest.skip("dpdk-testpmd is not installed (Debian package dpdk)")
    marker = tmp_path / "prefix"
    proc = subprocess.Popen(
        [sys.executable, "-c", DPDK_CHILD, *cabled, str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prefix = wait_for_marker(marker, proc.poll)
        left = held(prefix, cabled)
        assert runtime.dpdk_processes(prefix + "-") and runtime.runtime_dirs(prefix + "-"), left
        since = time.monotonic()
        proc.kill()
        wait_until_undone(prefix, since, cabled)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
