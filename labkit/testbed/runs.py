"""Run identity, the registry of what a run changed in the kernel, signals, and `labkit clean`.

Every kernel object labkit creates carries the run's prefix (``lk`` + 4 hex digits), and
every run writes a small registry file under ``/run/labkit`` naming its process and what it
attached to interfaces it does not own (real NICs). A run that ends normally removes all of
it through its context managers; `clean()` finds what a crashed run left behind: objects
whose prefix belongs to no live labkit process.

A run whose process dies without closing it (SIGKILL, a notebook kernel that exits when
its parent goes, a kernel restart) is undone within seconds all the same: opening the
registry starts a small watcher (`labkit.watchdog`) in a session of its own, which waits
on the owning process and, if it dies with the registry file still there, undoes that run
and nothing else. A run that closes normally tells its watcher to go.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from labkit.errors import InputError, NotRoot
from labkit.testbed.signals import deferred_signals

REGISTRY_DIR = Path(os.environ.get("LABKIT_RUNTIME_DIR", "/run/labkit"))
NETNS_DIR = Path("/run/netns")
PREFIX_RE = re.compile(r"^lk[0-9a-f]{4}")
#: iptables rules labkit adds carry this comment prefix, followed by the run prefix.
RULE_COMMENT = "labkit:"
IFNAMSIZ = 15
#: processes a run starts carry its prefix in this environment variable, so the run's
#: clean-up finds them also outside its namespaces (a generator on a real interface)
RUN_ENV = "LABKIT_RUN"


def require_root(what: str = "this") -> None:
    if os.geteuid() != 0:
        raise NotRoot(
            f"{what} needs root (network namespaces, XDP/tc attach, BPF and iptables need "
            "CAP_NET_ADMIN and CAP_BPF): run it with sudo, e.g. `sudo make report`."
        )


def _unused_prefix() -> str:
    """A run prefix no registered run here has (the names of two runs must never meet)."""
    for _ in range(1000):
        prefix = "lk" + secrets.token_hex(2)
        if not (REGISTRY_DIR / f"{prefix}.json").exists():
            return prefix
    return prefix


class Run:
    """One labkit run: a prefix for names and a registry file for crash clean-up."""

    def __init__(self, watchdog: bool = True, netns: str | None = None):
        self.prefix = _unused_prefix()
        self.path = REGISTRY_DIR / f"{self.prefix}.json"
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self._state = {"pid": self.pid, "start": process_start(self.pid), "started": time.time(), "foreign": []}
        if netns:
            self._state["netns"] = netns  # the network namespace its changes are undone in
        self._written = False
        self._watchdog_pipe: int | None = None  # write end; a byte on it tells the watcher the run closed
        self.watchdog = watchdog  # start a watcher when first written (see _start_watchdog)

    def _is_owner(self) -> bool:
        """Whether this process owns the run: a forked helper (pyroute2 forks to work in a
        namespace) inherits the Run object but must never write, close or watch it."""
        return os.getpid() == self.pid

    def _write(self) -> None:
        if not self._is_owner():
            return
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.path)
        first = not self._written and self._watchdog_pipe is None
        self._written = True
        if first and self.watchdog:
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        """Start the watcher that undoes this run if this process dies without closing it.

        `python -m labkit.watchdog` gets a pidfd on this process, forks the watcher into a
        session of its own (so neither a signal to this process group nor Jupyter killing
        the kernel's group reaches it) and exits; the watcher is then no child of ours."""
        try:
            # A pidfd on this very process, opened here: it can only ever mean the owner,
            # never a forked helper or a later process that reuses the pid.
            pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # Linux before 5.3: `labkit clean` remains
            return
        r, w = os.pipe()  # both ends close-on-exec: only the watcher gets the read end
        env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        proc = None
        try:
            with deferred_signals():  # a Ctrl-C now comes once the watcher is in place
                proc = subprocess.Popen(
                    [sys.executable, "-m", "labkit.watchdog", str(self.pid), self.prefix, str(r), str(pidfd)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(r, pidfd),
                    start_new_session=True,
                    cwd="/",
                    env=env,
                )
                out, _ = proc.communicate(timeout=30)
        except (OSError, subprocess.SubprocessError):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(w)
            return  # no watcher: `labkit clean` still finds what a crash leaves
        finally:
            os.close(r)
            os.close(pidfd)
        try:
            self._state["watchdog"] = int(out.split()[0])
        except (ValueError, IndexError):
            os.close(w)
            return
        self._watchdog_pipe = w
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.path)

    def _stop_watchdog(self) -> None:
        w, self._watchdog_pipe = self._watchdog_pipe, None
        if w is None:
            return
        try:
            with suppress(OSError):
                os.write(w, b"closed")
        finally:
            os.close(w)

    def open(self) -> "Run":
        with self._lock:
            self._write()
        return self

    def note_foreign(self, record: dict) -> None:
        """Record a change to an object the run does not own (an XDP program on a real NIC,
        a clsact qdisc, an iptables rule in the root namespace) so `clean` can undo it."""
        with self._lock:
            if record not in self._state["foreign"]:
                self._state["foreign"].append(record)
            self._write()

    def forget_foreign(self, record: dict) -> None:
        with self._lock:
            if record in self._state["foreign"]:
                self._state["foreign"].remove(record)
            if self._written:
                self._write()

    def close(self) -> None:
        if not self._is_owner():
            return
        with self._lock:
            with suppress(FileNotFoundError):
                self.path.unlink()
            self._written = False
            self._stop_watchdog()

    def name(self, short: str) -> str:
        """The kernel name of a labkit object: run prefix + '-' + short name, at most 15."""
        full = f"{self.prefix}-{short}"
        if len(full) > IFNAMSIZ:
            raise InputError(
                f"name {short!r} becomes {full!r}, {len(full)} characters; Linux allows "
                f"{IFNAMSIZ}: use a short name of at most {IFNAMSIZ - len(self.prefix) - 1} characters"
            )
        return full


_current_run: Run | None = None
_run_users = 0
_run_lock = threading.Lock()


def current_run() -> Run | None:
    """The run this process is in (inside a topology), or None."""
    return _current_run


@contextmanager
def run_scope(make=Run):
    """The process-wide current run, shared by nested topologies; closed by the outermost.
    MAKE builds the run when none is current (a remote session's: no watcher, its netns)."""
    global _current_run, _run_users
    with _run_lock:
        if _current_run is None:
            _current_run = make().open()
        _run_users += 1
        run = _current_run
    left = True
    try:
        yield run
    except GeneratorExit:
        # Not left but collected: a testbed held across cells is still in the kernel when
        # the interpreter exits. The run stays open, so its watcher undoes it.
        left = False
        raise
    finally:
        with _run_lock:
            _run_users -= 1
            if _run_users == 0 and left:
                _current_run.close()
                _current_run = None


@contextmanager
def foreign_change(record: dict, do, undo):
    """A change to an object the run does not own (a route, an offload, promiscuous mode on
    a real interface): RECORD is noted in the run's registry before DO makes the change, so
    a run killed in between leaves `labkit clean` something to undo (undoing a change that
    never happened is harmless); on exit UNDO reverts it and the record is forgotten. A DO
    that fails forgets its record and undoes nothing (what it met may not be ours)."""
    run = current_run()
    with deferred_signals():
        if run is not None:
            run.note_foreign(record)
        try:
            do()
        except BaseException:
            if run is not None:
                run.forget_foreign(record)
            raise
    try:
        yield
    finally:
        with deferred_signals():
            undo()  # if this fails the record stays, for `labkit clean`
            if run is not None:
                run.forget_foreign(record)


# ---------------------------------------------------------------- leftovers and clean
def _pid_alive(pid: int) -> bool:
    """Whether PID is a running process: a zombie (dead, not yet reaped by its parent, as a
    killed notebook kernel is for a moment) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def process_start(pid: int) -> int | None:
    """When process PID started (clock ticks since boot), or None when it is gone: with the
    pid, it names one process, never a later one that reuses the pid."""
    with suppress(OSError, ValueError, IndexError):
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
    return None


def owner_alive(state: dict) -> bool:
    """Whether the process that owns the run of registry STATE is still running."""
    pid = int(state.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
        return False
    start = state.get("start")
    return start is None or process_start(pid) in (None, start)


def live_prefixes() -> set[str]:
    """Prefixes of runs whose owning process is alive."""
    live = set()
    for f in REGISTRY_DIR.glob("lk*.json"):  # none where the folder is missing
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if owner_alive(state):
            live.add(f.stem)
    return live
