"""Build DPDK's l2fwd example from Debian's sources, stamped by DPDK version and source hash.
"""
from __future__ import annotations
import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from labkit import BUILD_DIR
from labkit.errors import LabkitError, MissingDependency

L2FWD_BUILD_DIR = BUILD_DIR / "l2fwd"
EXAMPLES_DIR = Path(os.environ.get("LABKIT_DPDK_EXAMPLES", "/usr/share/dpdk/examples"))


STAMP_NAME = ".dpdk-version"


def dpdk_version(pkg_config: str = "pkg-config") -> str:
    """The installed DPDK's version (`pkg-config --modversion libdpdk`), or MissingDependency."""
    try:
        cp = subprocess.run([pkg_config, "--modversion", "libdpdk"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise MissingDependency(f"`{pkg_config}` is not installed (Debian package pkg-config): run `sudo make setup`") from None
    if cp.returncode != 0 or not cp.stdout.strip():
        raise MissingDependency(
            "DPDK is not installed (pkg-config finds no libdpdk): install Debian's dpdk, dpdk-dev, "
            "libdpdk-dev and dpdk-doc with `sudo make setup`")
    return cp.stdout.strip()


def _stamp(version: str, source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"{version} {digest}\n"


def build_l2fwd(*, force: bool = False, examples_dir: Path | str | None = None,
                build_dir: Path | str | None = None, pkg_config: str = "pkg-config") -> Path:
    """Build DPDK's l2fwd example from the installed sources into `build/l2fwd/` (outside
    git) and return the binary. A stamp holds DPDK's version and the source's hash: the
    build is redone only when either changes (or with FORCE). Concurrent callers take turns."""
    examples = Path(examples_dir or EXAMPLES_DIR)
    target = Path(build_dir or L2FWD_BUILD_DIR)
    source = examples / "l2fwd"
    version = dpdk_version(pkg_config)
    if not (source / "main.c").is_file():
        raise MissingDependency(
            f"DPDK's l2fwd example sources are not at {source} (Debian package dpdk-doc installs "
            "/usr/share/dpdk/examples): run `sudo make setup`")
    binary = target / "build" / "l2fwd"
    stamp_file = target / STAMP_NAME
    want = _stamp(version, source / "main.c")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".l2fwd-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and os.access(binary, os.X_OK) and _read(stamp_file) == want:
            return binary
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        env = dict(os.environ, PKGCONF=pkg_config)
        cp = subprocess.run(["make", "-C", str(target), "shared"], capture_output=True, text=True, timeout=300, env=env)
        (target / "build.log").write_text(cp.stdout + cp.stderr)
        if cp.returncode != 0 or not os.access(binary, os.X_OK):
            tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-15:])
            raise LabkitError(f"building l2fwd (DPDK {version}) in {target} failed (log: {target}/build.log):\n{tail}")
        stamp_file.write_text(want)
    return binary


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def l2fwd_status() -> tuple[bool, str]:
    """(True, what is there) or (False, what is missing and what to do), for `labkit doctor`."""
    try:
        version = dpdk_version()
    except MissingDependency as exc:
        return False, str(exc)
    if not (EXAMPLES_DIR / "l2fwd" / "main.c").is_file():
        return False, f"l2fwd sources missing at {EXAMPLES_DIR / 'l2fwd'} (Debian package dpdk-doc)"
    built = _read(L2FWD_BUILD_DIR / STAMP_NAME) or ""
    state = "built" if built.startswith(version + " ") else "not built yet (built on first use)"
    return True, f"DPDK {version}, l2fwd {state} in {L2FWD_BUILD_DIR}"
