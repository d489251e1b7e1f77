"""Run identity, the registry of what a run changed in the kernel, signals, and `labkit clean`.

Every kernel object labkit creates carries the run's prefix (``lk`` + 4 hex digits), and
every run writes a small registry file under ``/run/labkit`` naming its process and what it
attached to interfaces it does not own (real NICs). A run that ends normally removes all of
it through its context managers; `clean()` finds what a crashed run left behind: objects
whose prefix belongs to no live labkit process.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from labkit.errors import NotRoot

REGISTRY_DIR = Path(os.environ.get("LABKIT_RUNTIME_DIR", "/run/labkit"))
NETNS_DIR = Path("/run/netns")
PREFIX_RE = re.compile(r"^lk[0-9a-f]{4}")
#: iptables rules labkit adds carry this comment prefix, followed by the run prefix.
RULE_COMMENT = "labkit:"
IFNAMSIZ = 15


def require_root(what: str = "this") -> None:
    if os.geteuid() != 0:
        raise NotRoot(
            f"{what} needs root (network namespaces, XDP/tc attach, BPF and iptables need "
            "CAP_NET_ADMIN and CAP_BPF): run it with sudo, e.g. `sudo make report`."
        )


class Run:
    """One labkit run: a prefix for names and a registry file for crash clean-up."""

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or "lk" + secrets.token_hex(2)
        if not PREFIX_RE.match(self.prefix) or len(self.prefix) != 6:
            raise ValueError(f"run prefix {self.prefix!r} must be 'lk' + 4 hex digits")
        self.path = REGISTRY_DIR / f"{self.prefix}.json"
        self._lock = threading.Lock()
        self._state = {"pid": os.getpid(), "started": time.time(), "foreign": []}
        self._written = False

    def _write(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.path)
        self._written = True

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
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self._written = False

    def name(self, short: str) -> str:
        """The kernel name of a labkit object: run prefix + '-' + short name, at most 15."""
        full = f"{self.prefix}-{short}"
        if len(full) > IFNAMSIZ:
            from labkit.errors import InputError

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
def run_scope():
    """The process-wide current run, shared by nested topologies; closed by the outermost."""
    global _current_run, _run_users
    with _run_lock:
        if _current_run is None:
            _current_run = Run().open()
        _run_users += 1
        run = _current_run
    try:
        yield run
    finally:
        with _run_lock:
            _run_users -= 1
            if _run_users == 0:
                _current_run.close()
                _current_run = None


# ---------------------------------------------------------------- signals


# ---------------------------------------------------------------- leftovers and clean
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_prefixes() -> set[str]:
    """Prefixes of runs whose owning process is alive."""
    live = set()
    if not REGISTRY_DIR.is_dir():
        return live
    for f in REGISTRY_DIR.glob("lk*.json"):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(state.get("pid", -1))):
            live.add(f.stem)
    return live


