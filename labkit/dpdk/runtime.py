"""DPDK's runtime directories and processes: one EAL --file-prefix per run, removed when
its process has stopped; what dead runs left is found here for `labkit clean`.
"""

from __future__ import annotations

import itertools
import os
import re
import resource
import shutil
import threading
from pathlib import Path

from labkit.testbed import runs

RUNTIME_BASES = ("/var/run/dpdk", "/run/dpdk")
_prefix_counter = itertools.count()
_prefix_lock = threading.Lock()


def file_prefix(app: str) -> str:
    """A unique EAL --file-prefix: the labkit run's prefix, the app, a counter."""
    run = runs.current_run()
    base = run.prefix if run is not None else "lk" + os.urandom(2).hex()
    with _prefix_lock:
        n = next(_prefix_counter)
    return f"{base}-{app}{n}"


def remove_runtime_dir(prefix: str) -> None:
    """Remove DPDK's runtime directory of PREFIX (config, sockets, memseg files); harmless twice."""
    if not prefix or "/" in prefix or prefix in (".", ".."):
        return
    for base in RUNTIME_BASES:
        shutil.rmtree(os.path.join(base, prefix), ignore_errors=True)


def runtime_dirs(prefix: str = "lk") -> list[str]:
    """DPDK runtime directories whose name starts with PREFIX."""
    out = set()
    for base in RUNTIME_BASES:
        if os.path.isdir(base):
            out.update(os.path.realpath(os.path.join(base, d)) for d in os.listdir(base) if d.startswith(prefix))
    return sorted(out)


def stale_runtime_dirs() -> list[str]:
    """Runtime directories of labkit runs whose process is gone (for `labkit clean`)."""
    live = runs.live_prefixes()
    return [
        d for d in runtime_dirs() if runs.PREFIX_RE.match(os.path.basename(d)) and os.path.basename(d)[:6] not in live
    ]


def clean_runtime_dirs(log=print) -> list[str]:
    """Remove the runtime directories of dead labkit runs; returns what was removed."""
    removed = []
    for d in stale_runtime_dirs():
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
        log(f"removed DPDK runtime directory: {d}")
    return removed


def dpdk_processes(prefix: str = "lk") -> list[int]:
    """PIDs of DPDK processes whose --file-prefix starts with PREFIX (any namespace)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, a in enumerate(argv[:-1]):
            if a == b"--file-prefix" and argv[i + 1].decode(errors="replace").startswith(prefix):
                pids.append(int(entry))
    return pids


def locked_memory_hint(out: str) -> str:
    """Where a DPDK program's output OUT shows its packet buffers refused for locked memory
    (AF_XDP's umem, AF_PACKET's mmap'ed rings), what to do; "" otherwise. A process without
    CAP_IPC_LOCK is held to RLIMIT_MEMLOCK, and raising that above its hard limit needs
    CAP_SYS_RESOURCE, which containers and some CI machines do not give."""
    if "Failed to create umem" not in out and not re.search(r"mmap failed.*Resource temporarily unavailable", out):
        return ""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
    return (
        "\n-> the packet buffers need locked memory: a process without CAP_IPC_LOCK may lock only "
        f"RLIMIT_MEMLOCK ({limit} here). Run with CAP_IPC_LOCK, or raise the limit (`ulimit -l unlimited`; "
        "above the hard limit that needs CAP_SYS_RESOURCE)"
    )
