"""The far side of a remote host: what labkit runs in the interpreter that mitogen starts
there (labkit.testbed.remote is the near side).

Its module state lives on the far host for the whole session: the session's labkit run
(prefix and registry under the host's /run/labkit, so a dead session is found and undone
by `labkit clean --inventory`), the processes it spawned, and the context managers held
open for the near side (an XDP attachment, a generator). Everything here imports only
what a provisioned host has, or what mitogen serves it from the controlling machine
(labkit, pyroute2): never pandas or Jupyter. Arguments and results are plain values.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import suppress
from pathlib import Path

_SESSION: dict = {"procs": {}, "held": {}, "run": None, "bpf": None}


def session_open(runtime_dir: str | None, sources: dict) -> str:
    """Open a labkit run on this host (its registry, under RUNTIME_DIR or /run/labkit),
    and put the BPF sources where labkit.bpf looks. Returns the run prefix."""
    from contextlib import ExitStack
    from functools import partial

    if runtime_dir:
        os.environ["LABKIT_RUNTIME_DIR"] = runtime_dir  # before labkit.testbed.runs is imported
    os.environ.setdefault("PATH", "/usr/bin:/bin")
    os.environ["PATH"] += ":/usr/local/sbin:/usr/sbin:/sbin"
    from labkit.testbed import runs

    runs.require_root("a remote labkit session")
    # No watcher here: it would be a process of its own needing labkit installed on this host,
    # which only serves it through the session. A lost session is undone by `labkit clean
    # --inventory` (its registry stays until then).
    stack = ExitStack()
    run = stack.enter_context(runs.run_scope(partial(runs.Run, watchdog=False, netns=os.readlink("/proc/self/ns/net"))))
    bpf_dir = runs.REGISTRY_DIR / f"{run.prefix}-bpf"
    _SESSION.update(run=stack, bpf=bpf_dir)  # from here on, session_close undoes it all
    try:
        for rel, text in sources.items():
            path = bpf_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except BaseException:
        session_close()
        raise
    os.environ["LABKIT_BPF_DIR"] = str(bpf_dir)  # where labkit.bpf compiles from in this session
    return run.prefix


def session_close() -> None:
    import shutil

    for key in list(_SESSION["held"]):
        release(key)
    for pid in list(_SESSION["procs"]):
        proc_close(pid)
    if _SESSION["run"] is not None:
        _SESSION["run"].close()  # the session's run: closed, its registry gone
    if _SESSION["bpf"] is not None:
        shutil.rmtree(_SESSION["bpf"], ignore_errors=True)
    for name in ("LABKIT_BPF_DIR", "LABKIT_L2FWD_BUILD_DIR"):
        os.environ.pop(name, None)
    _SESSION.update(run=None, bpf=None)


def run(argv, timeout, input, env):
    from labkit.testbed.hosts import ROOT_HOST

    cp = ROOT_HOST.run(argv, check=False, timeout=timeout, input=input, env={**os.environ, **env} if env else None)
    return cp.returncode, cp.stdout or "", cp.stderr or ""


def spawn(argv, name, env, cwd) -> int:
    from labkit.testbed.hosts import ROOT_HOST

    proc = ROOT_HOST.spawn(argv, name=name, env={**os.environ, **env} if env else None, cwd=cwd)
    _SESSION["procs"][proc.pid] = proc
    return proc.pid


def proc(pid: int, what: str, *args):
    proc = _SESSION["procs"][pid]
    out = getattr(proc, what)
    return out(*args) if callable(out) else out


def proc_close(pid: int):
    proc = _SESSION["procs"].pop(pid, None)
    if proc is None:
        return "", None
    proc.close()
    return proc.output(), proc.returncode


def hold(factory: str, args: list, kwargs: dict) -> int:
    import importlib
    from contextlib import ExitStack

    module, function = factory.split(":", 1)
    stack = ExitStack()
    value = stack.enter_context(getattr(importlib.import_module(module), function)(*args, **kwargs))
    key = id(stack)
    _SESSION["held"][key] = (stack, value)
    return key


def held_call(key: int, method: str | None, args: list):
    value = _SESSION["held"][key][1]
    return (getattr(value, method) if method else value)(*args)


def release(key: int) -> None:
    stack, _ = _SESSION["held"].pop(key, (None, None))
    if stack is not None:
        stack.close()


def facts(interfaces: list) -> dict:
    import platform

    import labkit

    def out(argv):
        with suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        return None

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    nics = {}
    for ifname in interfaces:
        info = dict(line.split(": ", 1) for line in (out(["ethtool", "-i", ifname]) or "").splitlines() if ": " in line)
        nics[ifname] = {k: info.get(k) for k in ("driver", "version", "firmware-version", "bus-info")}
    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", "installed")
    except ImportError:
        bcc_version = None
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "nics": nics,
        "versions": {
            "python": platform.python_version(),
            "bcc": bcc_version,
            "labkit": labkit.__version__,
            "dpdk": out(["pkg-config", "--modversion", "libdpdk"]),
            "trafgen": (out(["trafgen", "-v"]) or "").splitlines()[0:1],
            "pktgen": os.path.exists("/proc/net/pktgen") or bool(out(["modinfo", "-n", "pktgen"])),
        },
    }


def interface_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def tools_missing(tools: list) -> list:
    """Of TOOLS (names of commands or 'python:module'), those this host lacks."""
    import importlib.util
    import shutil

    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = []
    for tool in tools:
        if tool.startswith("python:"):
            if importlib.util.find_spec(tool[len("python:") :]) is None:
                missing.append(tool)
        elif not shutil.which(tool, path=path):
            missing.append(tool)
    return missing


def link_counters(ifname: str) -> dict:
    """The kernel's counters of IFNAME (/sys/class/net/IF/statistics), as link probes read them."""
    base = Path(f"/sys/class/net/{ifname}/statistics")
    return {p.name: int(p.read_text()) for p in base.iterdir()}
