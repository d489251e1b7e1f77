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


def file_prefixes() -> dict[int, str]:
    """{pid: its first `--file-prefix PREFIX`} of the DPDK processes here (any namespace)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        prefixes = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--file-prefix"]
        if prefixes:
            found[int(entry)] = prefixes[0]
    return found


def dpdk_processes(prefix: str = "lk") -> list[int]:
    """PIDs of DPDK processes whose --file-prefix starts with PREFIX (any namespace)."""
    return [pid for pid, p in file_prefixes().items() if p.startswith(prefix)]


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
