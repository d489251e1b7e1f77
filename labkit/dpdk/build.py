"""Build DPDK's l2fwd example from Debian's sources, stamped by DPDK version and source hash."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from contextlib import suppress
from pathlib import Path

from labkit import BUILD_DIR
from labkit.errors import InputError, LabkitError, MissingDependency

L2FWD_BUILD_DIR = BUILD_DIR / "l2fwd"  # the default; a remote session builds in its own (LABKIT_L2FWD_BUILD_DIR)
EXAMPLES_DIR = Path(os.environ.get("LABKIT_DPDK_EXAMPLES", "/usr/share/dpdk/examples"))
STAMP_NAME = ".dpdk-version"


def dpdk_version(pkg_config: str = "pkg-config") -> str:
    """The installed DPDK's version (`pkg-config --modversion libdpdk`), or MissingDependency."""
    try:
        cp = subprocess.run([pkg_config, "--modversion", "libdpdk"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise MissingDependency(
            f"`{pkg_config}` is not installed (Debian package pkg-config): run `sudo make setup`"
        ) from None
    if cp.returncode != 0 or not cp.stdout.strip():
        raise MissingDependency(
            "DPDK is not installed (pkg-config finds no libdpdk): install Debian's dpdk, dpdk-dev, "
            "libdpdk-dev and dpdk-doc with `sudo make setup`"
        )
    return cp.stdout.strip()


def _stamp(version: str, source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"{version} {digest}\n"


#: descriptors per port queue that l2fwd's source sets (RX_DESC_DEFAULT, TX_DESC_DEFAULT)
L2FWD_RING_DEFAULT = 1024
RING_SIZES = (256, 512, 1024, 2048, 4096, 8192)


def check_ring_size(ring_size) -> int:
    """A descriptor count l2fwd can be built with: a power of two 256..8192 (AF_XDP rings
    must be powers of two), or an InputError."""
    if ring_size is None:
        return L2FWD_RING_DEFAULT
    if isinstance(ring_size, bool) or not isinstance(ring_size, int) or ring_size not in RING_SIZES:
        raise InputError(f"ring size {ring_size!r}: one of {', '.join(map(str, RING_SIZES))} descriptors per queue")
    return ring_size


def build_dir_for(ring_size: int | None = None) -> Path:
    """Where l2fwd with RING_SIZE descriptors per queue is built (the default: build/l2fwd)."""
    n = check_ring_size(ring_size)
    home = l2fwd_build_dir()
    return home if n == L2FWD_RING_DEFAULT else home.with_name(f"l2fwd-ring{n}")


def l2fwd_build_dir() -> Path:
    """Where l2fwd is built: build/l2fwd, or LABKIT_L2FWD_BUILD_DIR (a remote session's)."""
    return Path(os.environ.get("LABKIT_L2FWD_BUILD_DIR") or L2FWD_BUILD_DIR)


def _set_ring_size(main_c: Path, n: int) -> None:
    """l2fwd's descriptor counts are constants of its source: set both to N in the copy."""
    text = main_c.read_text()
    for name in ("RX_DESC_DEFAULT", "TX_DESC_DEFAULT"):
        text, k = re.subn(rf"^#define {name} \d+$", f"#define {name} {n}", text, flags=re.M)
        if k != 1:
            raise LabkitError(
                f"l2fwd's source at {main_c} has no `#define {name}`: its ring size cannot be set "
                "(DPDK's example changed); use ring_size=None"
            )
    main_c.write_text(text)


def build_l2fwd(
    *,
    force: bool = False,
    examples_dir: Path | str | None = None,
    build_dir: Path | str | None = None,
    pkg_config: str = "pkg-config",
    ring_size: int | None = None,
) -> Path:
    """Build DPDK's l2fwd example from the installed sources into `build/l2fwd/` (outside
    git) and return the binary. A stamp holds DPDK's version and the source's hash: the
    build is redone only when either changes (or with FORCE). Concurrent callers take turns.
    RING_SIZE: descriptors per RX and TX queue (l2fwd's own is 1024), built apart in
    `build/l2fwd-ringN/`: for AF_XDP ports it is the size of the socket's rings."""
    examples = Path(examples_dir or EXAMPLES_DIR)
    ring = check_ring_size(ring_size)
    target = Path(build_dir or build_dir_for(ring))
    source = examples / "l2fwd"
    version = dpdk_version(pkg_config)
    if not (source / "main.c").is_file():
        raise MissingDependency(
            f"DPDK's l2fwd example sources are not at {source} (Debian package dpdk-doc installs "
            "/usr/share/dpdk/examples): run `sudo make setup`"
        )
    binary = target / "build" / "l2fwd"
    stamp_file = target / STAMP_NAME
    want = _stamp(version, source / "main.c") + (f"ring {ring}\n" if ring != L2FWD_RING_DEFAULT else "")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".l2fwd-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and os.access(binary, os.X_OK) and _read(stamp_file) == want:
            return binary
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        if ring != L2FWD_RING_DEFAULT:
            _set_ring_size(target / "main.c", ring)
        env = dict(os.environ, PKGCONF=pkg_config)
        cp = subprocess.run(["make", "-C", str(target), "shared"], capture_output=True, text=True, timeout=300, env=env)
        (target / "build.log").write_text(cp.stdout + cp.stderr)
        if cp.returncode != 0 or not os.access(binary, os.X_OK):
            tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-15:])
            raise LabkitError(f"building l2fwd (DPDK {version}) in {target} failed (log: {target}/build.log):\n{tail}")
        stamp_file.write_text(want)
    return binary


def _read(path: Path) -> str | None:
    with suppress(OSError):
        return path.read_text()
    return None


def l2fwd_status() -> tuple[bool, str]:
    """(True, what is there) or (False, what is missing and what to do), for `labkit doctor`."""
    try:
        version = dpdk_version()
    except MissingDependency as exc:
        return False, str(exc)
    if not (EXAMPLES_DIR / "l2fwd" / "main.c").is_file():
        return False, f"l2fwd sources missing at {EXAMPLES_DIR / 'l2fwd'} (Debian package dpdk-doc)"
    built = _read(l2fwd_build_dir() / STAMP_NAME) or ""
    state = "built" if built.startswith(version + " ") else "not built yet (built on first use)"
    return True, f"DPDK {version}, l2fwd {state} in {l2fwd_build_dir()}"
