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
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import NotRoot, Terminated

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
            from .errors import InputError

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
_sig_users = 0
_sig_previous = None


_owner_pid = os.getpid()


def _raise_terminated(signum, frame):
    if os.getpid() != _owner_pid:
        # A forked helper (pyroute2 forks to open sockets in a namespace) inherited this
        # handler: it must die as it would have, never run the parent's clean-up.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(f"signal {signum} received: undoing kernel state")


@contextmanager
def terminate_as_exception():
    """While inside, SIGTERM (and SIGHUP) raise `Terminated` in the main thread, so context
    managers unwind exactly as they do for Ctrl-C. A no-op outside the main thread."""
    global _sig_users, _sig_previous, _owner_pid
    main = threading.current_thread() is threading.main_thread()
    if main:
        if _sig_users == 0:
            _owner_pid = os.getpid()
            _sig_previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP))
            signal.signal(signal.SIGTERM, _raise_terminated)
            signal.signal(signal.SIGHUP, _raise_terminated)
        _sig_users += 1
    try:
        yield
    finally:
        if main:
            _sig_users -= 1
            if _sig_users == 0:
                signal.signal(signal.SIGTERM, _sig_previous[0] or signal.SIG_DFL)
                signal.signal(signal.SIGHUP, _sig_previous[1] or signal.SIG_DFL)


@contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM while a few kernel calls must happen together (e.g. create an
    object and record it for undo); they are delivered on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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


def labkit_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if PREFIX_RE.match(p.name))


def labkit_root_links() -> list[str]:
    from .hosts import netlink

    with netlink() as ipr:
        names = [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]
    return sorted(n for n in names if n and PREFIX_RE.match(n))


def pids_in_netns(ns: str) -> list[int]:
    """Processes whose network namespace is /run/netns/NS."""
    try:
        target = os.stat(NETNS_DIR / ns).st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def kill_pids(pids: list[int], grace: float = 1.0) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)


def _labkit_iptables_rules() -> list[tuple[str, str, str, str]]:
    """(binary, table, run prefix, rule) of root-namespace rules whose comment names a labkit run."""
    found = []
    for binary in ("iptables", "ip6tables"):
        try:
            out = subprocess.run([f"{binary}-save"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        table = None
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and RULE_COMMENT in line:
                m = re.search(r"labkit:(lk[0-9a-f]{4})", line)
                if m:
                    found.append((binary, table, m.group(1), line[3:]))
    return found


def leftovers(include_live: bool = False) -> dict:
    """What crashed runs left: namespaces, root links, foreign records, iptables rules."""
    live = set() if include_live else live_prefixes()
    stale = lambda name: name[:6] not in live  # noqa: E731
    dead_registries = []
    if REGISTRY_DIR.is_dir():
        for f in REGISTRY_DIR.glob("lk*.json"):
            if stale(f.stem):
                dead_registries.append(f)
    return {
        "namespaces": [n for n in labkit_namespaces() if stale(n)],
        "links": [n for n in labkit_root_links() if stale(n)],
        "registries": dead_registries,
        "iptables": [r for r in _labkit_iptables_rules() if stale(r[2])],
    }


def clean(include_live: bool = False, log=print) -> dict:
    """Remove what crashed labkit runs left behind, found by the labkit prefix only.

    Runs whose process is still alive are left alone unless ``include_live``.
    Returns what was removed, by kind."""
    require_root("labkit clean")
    from pyroute2 import netns

    from .hosts import netlink

    found = leftovers(include_live)
    removed = {"namespaces": [], "links": [], "foreign": [], "iptables": [], "processes": []}
    for reg in found["registries"]:
        try:
            state = json.loads(reg.read_text())
        except (OSError, ValueError):
            state = {}
        for rec in state.get("foreign", []):
            try:
                _undo_foreign(rec)
                removed["foreign"].append(rec)
            except Exception as exc:  # keep cleaning the rest
                log(f"could not undo {rec}: {exc}")
        reg.unlink(missing_ok=True)
    for binary, table, _prefix, rule in found["iptables"]:
        subprocess.run([binary, "-t", table, "-D", *_split_rule(rule)], capture_output=True)
        removed["iptables"].append(f"{binary} -t {table} -A {rule}")
    for ns in found["namespaces"]:
        pids = pids_in_netns(ns)
        kill_pids(pids)
        removed["processes"].extend(pids)
        try:
            netns.remove(ns)
            removed["namespaces"].append(ns)
        except OSError as exc:
            log(f"could not remove namespace {ns}: {exc}")
    if found["links"]:
        with netlink() as ipr:
            for name in found["links"]:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    try:
                        ipr.link("del", index=idx[0])
                        removed["links"].append(name)
                    except Exception as exc:
                        log(f"could not remove link {name}: {exc}")
    from . import dpdk

    removed["dpdk"] = dpdk.clean_runtime_dirs(log=lambda *a: None)
    stale = [p for p in dpdk.dpdk_processes() if _dpdk_prefix_dead(p, include_live)]
    kill_pids(stale)
    removed["processes"].extend(stale)
    for kind, items in removed.items():
        for item in items:
            log(f"removed {kind[:-1] if kind.endswith('s') else kind}: {item}")
    return removed


def _dpdk_prefix_dead(pid: int, include_live: bool) -> bool:
    """Whether the DPDK process PID belongs to a labkit run that is gone."""
    try:
        args = open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:
        return False
    for i, a in enumerate(args):
        if a == "--file-prefix" and i + 1 < len(args):
            prefix = args[i + 1][:6]
        elif a.startswith("--file-prefix="):
            prefix = a.split("=", 1)[1][:6]
        else:
            continue
        return bool(PREFIX_RE.match(prefix)) and (include_live or prefix not in live_prefixes())
    return False


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _undo_foreign(rec: dict) -> None:
    """Undo one recorded change on an interface labkit does not own."""
    from .hosts import netlink

    kind = rec.get("kind")
    with netlink() as ipr:
        idx = ipr.link_lookup(ifname=rec["ifname"])
        if not idx:
            return
        if kind == "xdp":
            ipr.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", rec.get("flags", 0))]})
        elif kind == "clsact":
            try:
                ipr.tc("del", "clsact", idx[0])
            except Exception:
                pass
        elif kind == "address":
            try:
                ipr.addr("del", index=idx[0], address=rec["address"], prefixlen=rec["prefixlen"])
            except Exception:
                pass
