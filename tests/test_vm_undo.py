"""A VM testbed (labkit.testbed.vm_bed) is undone completely when its boot fails, when
Ctrl-C interrupts its boot, when its process is killed outright during the boot (by the
run's watcher), and (`slow`: a full boot) when Ctrl-C interrupts a command
running in the guest.

Each case runs in a process of its own, as a person's run would. Undone means: no QEMU
or virtme-run of the run, no tap, bridge or namespace with the run's prefix, no VM folder
and no registry of the run, checked by that process itself before it exits (so the run's
watcher, which undoes a run whose owner died, cannot have done the work) and again by the
test once it has exited. The boot is cut short as soon as QEMU and its tap exist, so the
default cases take seconds, not a TCG boot's minutes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from test_vm import _links_of, _run_processes, _running

from labkit.testbed import runs, vm

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")
ROLES = {"sender": ("snd", None), "receiver": ("rcv", None)}
#: a boot that cannot succeed: QEMU starts and its tap is joined, the guest is not up yet
SHORT_BOOT = 5.0


def _say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _qemu_of(prefix: str) -> int | None:
    """The pid of the run's QEMU (virtme-run's child), if it runs."""
    for pid in _run_processes(prefix):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("qemu-system"):
                return pid
        except OSError:
            continue
    return None


def _link_of(prefix: str, short: str) -> str | None:
    """Where the run's link SHORT (vmt0: the VM's tap, vmb0: its bridge) is: 'root' (a tap
    just made by QEMU) or the run's namespace it is in; None when there is none."""
    name = f"{prefix}-{short}"
    if subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0:
        return "root"
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if ns.startswith(prefix):
            if subprocess.run(["ip", "-n", ns, "link", "show", name], capture_output=True).returncode == 0:
                return ns
    return None


def _leftovers(prefix: str) -> list[str]:
    """What of run PREFIX is still there (nothing, once it is undone)."""
    left = [f"process {pid} ({_comm(pid)})" for pid in _run_processes(prefix)]
    left += _links_of(prefix)
    if (vm.VM_DIR / prefix).exists():
        left.append(f"folder {vm.VM_DIR / prefix}")
    if (runs.REGISTRY_DIR / f"{prefix}.json").exists():
        left.append(f"registry {runs.REGISTRY_DIR / prefix}.json")
    return left


def _comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return "gone"


def _watch(seen: dict) -> None:
    """In the child, beside the boot: say the run's prefix as soon as there is a run, then
    note the run's QEMU and its tap once both exist (proof that the boot got that far)."""
    while (run := runs.current_run()) is None:
        time.sleep(0.02)
    seen["prefix"] = run.prefix
    _say(prefix=run.prefix)
    while runs.current_run() is run:
        qemu, tap = _qemu_of(run.prefix), _link_of(run.prefix, "vmt0")
        if qemu and tap:
            seen.update(qemu=qemu, tap=tap)
            return
        time.sleep(0.1)


def child(boot_timeout: float, body: str = "") -> None:
    """A person's run: a VmTestbed entered, its BODY ('guest-sleep': a long command in the
    guest) run; what ended it and what it left are printed before the
    error goes on (an uncaught KeyboardInterrupt ends the process by SIGINT)."""
    import faulthandler

    from labkit.testbed import topology
    from labkit.testbed.vm_bed import VmTestbed

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, should it hang
    seen: dict = {}
    threading.Thread(target=_watch, args=(seen,), daemon=True).start()
    try:
        with VmTestbed(topology.pair(), ROLES, boot_timeout=boot_timeout) as bed:
            _say(up=bed.vm.boot_seconds, qemu=bed.vm.qemu_pid)
            if body == "guest-sleep":
                _say(calling="sleep 300")
                bed.vm.remote.run(["sleep", "300"], timeout=400)
    except BaseException as exc:
        left = _leftovers(seen.get("prefix", "lk-none"))
        left += [f"child process {pid} ({_comm(pid)})" for pid in vm._children(os.getpid()) if _running(pid)]
        _say(error=f"{type(exc).__name__}: {exc}", seen=seen, left=left)
        raise


class Child:
    """`child(...)` in a process of its own; its printed lines read with a timeout."""

    def __init__(self, tmp_path: Path, *args, session: bool = False):
        self.stderr_path = tmp_path / "child.err"
        self.stderr = open(self.stderr_path, "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import test_vm_undo; test_vm_undo.child{args!r}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=session,  # a process group of its own, as a terminal's foreground job
        )
        self.prefix: str | None = None  # its run's, once it said it
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            said = json.loads(line)
            self.prefix = said.get("prefix", self.prefix)
            self._lines.put(said)
        self._lines.put(None)

    def next(self, timeout: float) -> dict | None:
        """The next line printed, or None when the child ended or TIMEOUT passed."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def errors(self) -> str:
        return self.stderr_path.read_text()[-4000:]

    def interrupt(self, to_group: bool = False) -> tuple[dict | None, int | None]:
        """Ctrl-C: SIGINT to the child (as Jupyter's interrupt) or to its whole process
        group (a terminal's, to the foreground job). What it then said, and its exit
        status if it ended by itself within 60 s (None if not)."""
        if to_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            os.kill(self.proc.pid, signal.SIGINT)
        said = self.next(60)
        try:
            return said, self.proc.wait(60 if said else 1)
        except subprocess.TimeoutExpired:
            return said, None

    def end(self) -> None:
        """Killed if it still runs (a failed test), after its threads' stacks are written
        to its stderr; its watcher then undoes the run (waited for, so that the next test
        starts clean)."""
        killed = self.proc.poll() is None
        if killed:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGUSR1)
                time.sleep(1)
                self.proc.kill()
        self.proc.wait()
        self.stderr.close()
        deadline = time.monotonic() + 30
        while killed and self.prefix and _leftovers(self.prefix) and time.monotonic() < deadline:
            time.sleep(0.2)


def _needs_vm_tools() -> None:
    try:
        vm.tools()
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(str(exc))


def _assert_undone(prefix: str, said: dict) -> None:
    """The child found nothing of its run left before it exited, and nothing is left now
    (the run's processes get a moment to be reaped)."""
    assert said["left"] == [], f"the run itself left: {said['left']}"
    deadline = time.monotonic() + 10
    while _leftovers(prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _leftovers(prefix) == []
    assert not _running(said["seen"]["qemu"]), "QEMU outlived its run"


def _assert_ended_by_ctrl_c(run: Child, said: dict | None, code: int | None) -> None:
    assert code == -signal.SIGINT, f"the run did not end by itself on Ctrl-C (exit {code}):\n{run.errors()}"
    assert said and said["error"].startswith("KeyboardInterrupt"), said
    assert "KeyboardInterrupt" in run.errors()


@needs_root
def test_a_vm_boot_that_times_out_says_so_and_is_undone(tmp_path):
    _needs_vm_tools()
    run = Child(tmp_path, SHORT_BOOT)
    try:
        prefix = (run.next(60) or {}).get("prefix")
        said = run.next(120)
        code = run.proc.wait(60)
    finally:
        run.end()
    assert prefix and said and "error" in said, f"the child printed no prefix or no error:\n{run.errors()}"
    assert code == 1, run.errors()
    assert said["error"].startswith("LabkitError: VM vm (")
    assert f"the guest did not come up within {SHORT_BOOT:.0f} s" in said["error"]
    assert "its console:" in said["error"]
    # the boot got as far as QEMU running and its tap made, before the error
    assert said["seen"].get("qemu") and said["seen"].get("tap"), said
    _assert_undone(prefix, said)


@needs_root
@pytest.mark.parametrize(
    "until, to_group",
    [
        # QEMU and its tap exist (labkit is typically still finding QEMU's pid); Jupyter's
        # interrupt: SIGINT to the kernel's process only
        ("vmt0", False),
        # the tap bridged in the receiver's namespace, the guest booting; a terminal's Ctrl-C:
        # SIGINT to the whole foreground job
        ("vmb0", True),
    ],
    ids=["qemu-started", "tap-bridged"],
)
def test_ctrl_c_during_a_vm_boot_ends_the_run_by_itself_and_undoes_it(tmp_path, until, to_group):
    _needs_vm_tools()
    run = Child(tmp_path, 400.0, session=to_group)
    try:
        prefix = (run.next(60) or {}).get("prefix")
        assert prefix, f"the child printed no prefix:\n{run.errors()}"
        deadline, qemu, link = time.monotonic() + 120, None, None
        while time.monotonic() < deadline and run.proc.poll() is None:
            qemu, link = _qemu_of(prefix), _link_of(prefix, until)
            if qemu and link:
                break
            time.sleep(0.1)
        assert qemu and link, f"QEMU and its {until} never both were there:\n{run.errors()}"
        said, code = run.interrupt(to_group)
    finally:
        run.end()
    _assert_ended_by_ctrl_c(run, said, code)
    said["seen"].setdefault("qemu", qemu)
    _assert_undone(prefix, said)


@needs_root
def test_a_run_killed_outright_during_its_vm_boot_is_undone_by_its_watcher(tmp_path):
    """SIGKILL once QEMU runs and its tap is bridged into the receiver's namespace: the run
    cannot undo itself, so its watcher must (QEMU, tap, bridge, namespaces, folder)."""
    _needs_vm_tools()
    run = Child(tmp_path, 400.0)
    try:
        prefix = (run.next(60) or {}).get("prefix")
        assert prefix, f"the child printed no prefix:\n{run.errors()}"
        deadline, qemu, bridge = time.monotonic() + 120, None, None
        while time.monotonic() < deadline and run.proc.poll() is None and not (qemu and bridge):
            qemu, bridge = _qemu_of(prefix), _link_of(prefix, "vmb0")
            time.sleep(0.1)
        assert qemu and bridge and (vm.VM_DIR / prefix).is_dir(), f"the boot never got that far:\n{run.errors()}"
        run.proc.kill()
        run.proc.wait()
    finally:
        run.end()
    deadline = time.monotonic() + 60
    while (_leftovers(prefix) or _running(qemu)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _leftovers(prefix) == [], "the watcher did not undo the killed run"
    assert not _running(qemu), "QEMU outlived its killed run"


@needs_root
@pytest.mark.slow
def test_ctrl_c_while_a_command_runs_in_the_guest_ends_the_run_and_undoes_it(tmp_path):
    """A full boot (40-170 s under TCG), then Ctrl-C while a command runs in the guest: the
    guest serves one call at a time, so the undo's calls there wait a bounded time for
    the interrupted one (`remote.BUSY_WAIT_S`), then QEMU and the rest are undone. (A body
    that raises is undone by the same path; a boot that fails is the default tests' case.)"""
    _needs_vm_tools()
    run = Child(tmp_path, 400.0, "guest-sleep")
    try:
        prefix = (run.next(60) or {}).get("prefix")
        up = run.next(500)
        assert prefix and up and "up" in up, f"the VM did not boot:\n{run.errors()}"
        assert run.next(60) == {"calling": "sleep 300"}
        time.sleep(3)  # the command is running in the guest now
        said, code = run.interrupt()
    finally:
        run.end()
    _assert_ended_by_ctrl_c(run, said, code)
    assert said["seen"]["qemu"] == up["qemu"]
    _assert_undone(prefix, said)
