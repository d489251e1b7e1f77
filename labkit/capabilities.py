"""Kernel facilities labkit depends on, each tried for real once per process.

    from labkit import capabilities
    p = capabilities.probe("live_frames")
    p.ok, p.reason, p.errno, p.causes, p.instead
    capabilities.require("live_frames")       # MissingDependency saying all of that
    capabilities.chose("load generator", "trafgen", "live frames refused (EPERM)")

A version number says what a kernel was built able to do, not what this process may do
here: a container, a security module, a missing capability or a kernel built without an
option can refuse a facility that the version promises. So every facility is tried:
a throw-away program is loaded and run, a throw-away veth pair gets an XDP program, a
tool is started. The first answer is kept for the life of the process with its reason
(the errno where the kernel gave one), the likely causes and what labkit uses instead,
and every automatic choice (the generator `auto` picks, how latency probes are sent,
which traffic makes a NAT's flows) reads it.

`LABKIT_REFUSE` (comma-separated facility names, e.g. `LABKIT_REFUSE=live_frames`)
makes labkit treat those facilities as refused, exactly as if the probe had failed, so
that a machine that has them can run the fallback paths (the test suite and CI do).

Which probe was asked and which backend served each purpose are kept (`record()`), and
every run's metadata carries them (`results.collect_metadata`), so a reader of a run
knows what fed it and why.
"""

from __future__ import annotations

import errno as errno_mod
import importlib
import os
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from labkit.errors import InputError, MissingDependency

ENV = "LABKIT_REFUSE"


@dataclass(frozen=True)
class Probe:
    """The answer of one facility's probe."""

    name: str
    ok: bool
    reason: str  # what was tried and what happened
    errno: int | None = None
    causes: str = ""  # where refused: what usually refuses it
    instead: str = ""  # where refused: what labkit uses instead
    forced: bool = False  # refused through LABKIT_REFUSE, not tried

    def message(self) -> str:
        """One paragraph a user can act on."""
        if self.ok:
            return f"{self.name}: available ({self.reason})"
        parts = [f"{FACILITIES[self.name].description} is refused here: {self.reason}"]
        if self.causes and not self.forced:
            parts.append(f"likely causes: {self.causes}")
        if self.instead:
            parts.append(f"instead: {self.instead}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name" and (v not in ("", None, False) or k == "ok")}


@dataclass(frozen=True)
class Facility:
    name: str
    description: str
    attempt: Callable[[], str]  # returns what worked; raises on refusal
    causes: str = ""
    instead: str = ""
    needs_root: bool = True


#: Every facility labkit probes, and the module whose import registers its attempt (the
#: module that owns the facility: a probe runs what that module would run). Named here so
#: that LABKIT_REFUSE can be checked, and a probe asked for, before any of them is imported.
KNOWN = {
    "test_run": "labkit.probes",
    "live_frames": "labkit.probes",
    "xdp_native": "labkit.probes",
    "xdp_generic": "labkit.probes",
    "tc_clsact": "labkit.probes",
    "af_xdp": "labkit.probes",
    "iptables": "labkit.probes",
    "pktgen": "labkit.probes",
    "dpdk_vdev": "labkit.probes",
    "devmap_broadcast": "labkit.probes",
    "ovs": "labkit.doctor",
    "kvm": "labkit.testbed.vm",
    "vhost_net": "labkit.testbed.vm",
}
FACILITIES: dict[str, Facility] = {}
_cache: dict[str, Probe] = {}
_choices: dict[str, dict] = {}
_lock = threading.RLock()


def register(name: str, description: str, causes: str = "", instead: str = "", needs_root: bool = True):
    """Decorator: FN (no arguments) tries facility NAME for real, returns a short note of
    what worked and raises (OSError with its errno, or any exception) when refused."""

    def wrap(fn):
        FACILITIES[name] = Facility(name, description, fn, causes, instead, needs_root)
        return fn

    return wrap


def forced_refusals() -> set[str]:
    """The facility names LABKIT_REFUSE lists; InputError for a name labkit does not know."""
    raw = os.environ.get(ENV, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = sorted(names - set(KNOWN))
    if unknown:
        raise InputError(
            f"{ENV}={raw!r} names unknown facilit{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}: choose from {', '.join(sorted(KNOWN))}"
        )
    return names


def probe(name: str) -> Probe:
    """Facility NAME tried once in this process (later calls return the kept answer);
    LABKIT_REFUSE is read on every call, so it can be set at any time."""
    if name not in KNOWN:
        raise InputError(f"unknown facility {name!r}: choose from {', '.join(sorted(KNOWN))}")
    if name not in FACILITIES:
        importlib.import_module(KNOWN[name])  # registers the attempt (a plugin table, not a layer's import)
    fac = FACILITIES[name]
    if name in forced_refusals():
        return Probe(
            name, False, f"refused through {ENV}={os.environ.get(ENV)!r} (not tried)", instead=fac.instead, forced=True
        )
    with _lock:
        if name not in _cache:
            _cache[name] = _try(fac)
        return _cache[name]


def _try(fac: Facility) -> Probe:
    if fac.needs_root and os.geteuid() != 0:
        reason = "needs root (CAP_BPF, CAP_NET_ADMIN): run with sudo"
        return Probe(fac.name, False, reason, errno_mod.EPERM, "not running as root", fac.instead)
    try:
        note = fac.attempt()
    except Exception as exc:  # noqa: BLE001 - any failure is the facility's answer
        err = getattr(exc, "errno", None)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if err and os.strerror(err) not in text:
            text = f"{text} ({errno_mod.errorcode.get(err, err)}: {os.strerror(err)})"
        return Probe(fac.name, False, text, err, fac.causes, fac.instead)
    return Probe(fac.name, True, note or "tried: works")


def refused(name: str, exc: Exception) -> Exception:
    """Facility NAME was refused in real use (EXC, carrying `errno`), whatever its probe
    said: kept as its answer, so that every later automatic choice avoids it. Returns EXC."""
    fac = FACILITIES.get(name) or Facility(name, name, None)  # no causes or alternative known
    reason = f"refused in use: {str(exc).splitlines()[0]}"
    with _lock:
        _cache[name] = Probe(name, False, reason, getattr(exc, "errno", None), fac.causes, fac.instead)
    return exc


def available(name: str) -> bool:
    return probe(name).ok


def require(name: str) -> Probe:
    """The probe of NAME, or MissingDependency with its reason, causes and alternative."""
    p = probe(name)
    if not p.ok:
        raise MissingDependency(p.message())
    return p


def forget() -> None:
    """Drop every kept answer and choice (tests; a long-lived kernel after a change)."""
    with _lock:
        _cache.clear()
        _choices.clear()


def begin_run() -> None:
    """A new run starts: forget the choices of backends made so far in this process (the
    probes' answers stay: the machine has not changed)."""
    with _lock:
        _choices.clear()


def chose(purpose: str, backend: str, why: str = "") -> None:
    """Record that BACKEND serves PURPOSE in this process (and why), for the run's metadata."""
    with _lock:
        _choices[purpose] = {"backend": backend, "why": why}


def choices() -> dict[str, dict]:
    with _lock:
        return {k: dict(v) for k, v in _choices.items()}


def record() -> dict:
    """What a run's metadata keeps: every probe asked in this process and every choice."""
    with _lock:
        probes = {n: p.as_dict() for n, p in _cache.items()}
    try:
        for n in forced_refusals():
            probes[n] = probe(n).as_dict()
    except InputError as exc:
        probes["LABKIT_REFUSE"] = {"ok": False, "reason": str(exc)}
    return {"probes": probes, "choices": choices(), "refused_by_env": os.environ.get(ENV, "")}


def summary_line(rec: dict | None = None) -> str:
    """One line: which backend served each purpose, and why (for interpretations and the index)."""
    rec = rec if rec is not None else record()
    parts = []
    for purpose, c in (rec.get("choices") or {}).items():
        parts.append(f"{purpose}: {c.get('backend')}" + (f" ({c['why']})" if c.get("why") else ""))
    return "; ".join(parts)
