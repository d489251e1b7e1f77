"""The environment a run needs, written down so that another machine can be compared with it:

    lock = environment_lock.capture()          # this machine, now
    environment_lock.differences(lock, other)  # one line per difference, [] when they agree
    environment_lock.run_differences(run_id, metadata, lock, other)  # ... and from what the run recorded

A lock holds the Python packages (`pip freeze` of the running environment, kept verbatim
as its own file by the crate and parsed here into name -> version), the Debian packages the
data paths come from (bcc's python3-bpfcc, dpdk, iproute2, iptables: `dpkg-query`), the
kernel release and a sha256 of its configuration (/boot/config-RELEASE or /proc/config.gz,
decompressed, so both give the same hash; where neither exists the lock says so), and
labkit's commit with a flag when the tree had uncommitted changes (and a hash of those
changes, so two dirty trees can be told apart). Capturing never fails: what cannot be read
is recorded as such.
"""

from __future__ import annotations

import gzip
import hashlib
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from labkit import ROOT

#: the Debian packages labkit's data paths and tools come from
DEBIAN_PACKAGES = ("python3-bpfcc", "dpdk", "iproute2", "iptables")
#: where a kernel's configuration may be read, in this order ({release}: `uname -r`)
KERNEL_CONFIGS = ("/boot/config-{release}", "/proc/config.gz")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+)|@\s*(\S+))")


def _run(argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def pip_freeze() -> str:
    """`pip freeze` of the running Python, verbatim ('' with a comment line if pip is missing)."""
    try:
        cp = _run([sys.executable, "-m", "pip", "freeze"])
    except (OSError, subprocess.SubprocessError) as exc:
        return f"# pip freeze failed: {exc}\n"
    if cp.returncode != 0:
        return f"# pip freeze failed: {cp.stderr.strip().splitlines()[-1:] or cp.returncode}\n"
    return cp.stdout


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packages(freeze: str) -> dict:
    """{name: version} of a `pip freeze` text; an install from a URL or path keeps its location
    as its version ('@ file:///...'), an editable install is 'editable PATH'."""
    out = {}
    editable_name = None
    for line in freeze.splitlines():
        line = line.strip()
        named = re.match(r"^# Editable .*\((\S+)==(\S+)\)", line)
        if named:
            editable_name = named.group(1)
            continue
        if line.startswith("-e "):
            if editable_name:
                out[_canonical(editable_name)] = "editable " + line[3:].strip()
            editable_name = None
            continue
        m = _REQUIREMENT.match(line)
        if m:
            out[_canonical(m.group(1))] = m.group(2) or "@ " + m.group(3)
    return out


def debian_versions(names=DEBIAN_PACKAGES) -> dict:
    """{package: installed version, or None where it is not installed (or dpkg is missing)}."""
    out = dict.fromkeys(names)
    try:
        cp = _run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", *names])
    except (OSError, subprocess.SubprocessError):
        return out
    for line in cp.stdout.splitlines():
        name, version, status = (line.split("\t") + ["", ""])[:3]
        if name in out and status.startswith("ii"):
            out[name] = version
    return out


def kernel_config(release: str | None = None, places=KERNEL_CONFIGS) -> dict:
    """{"path", "sha256"} of the running kernel's configuration, decompressed; {"path": None,
    "sha256": None, "note"} where none of PLACES exists."""
    release = release or platform.release()
    for place in places:
        path = Path(place.format(release=release))
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    tried = ", ".join(p.format(release=release) for p in places)
    return {"path": None, "sha256": None, "note": f"no kernel configuration readable here (tried {tried})"}


def git_state(root: Path = ROOT) -> dict:
    """{"commit", "dirty", "changes_sha256"} of the git tree at ROOT: the commit checked out,
    whether tracked files have uncommitted changes, and a sha256 of those changes (`git diff
    HEAD`; None when clean). Not a git tree, or no git: commit 'unknown', dirty None."""
    try:
        head = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
        status = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": "unknown", "dirty": None, "changes_sha256": None, "note": f"git failed: {exc}"}
    if head.returncode != 0 or status.returncode != 0:
        why = (head.stderr or status.stderr).strip().splitlines()[:1]
        return {"commit": "unknown", "dirty": None, "changes_sha256": None, "note": f"not a git tree: {why}"}
    dirty = bool(status.stdout.strip())
    changes = None
    if dirty:
        diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD", "--binary"], capture_output=True, timeout=60)
        changes = hashlib.sha256(diff.stdout).hexdigest()
    return {"commit": head.stdout.strip(), "dirty": dirty, "changes_sha256": changes}


def capture(freeze: str | None = None) -> dict:
    """This machine's environment now (FREEZE: a `pip freeze` text already taken)."""
    freeze = pip_freeze() if freeze is None else freeze
    return {
        "captured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "python_packages": packages(freeze),
        "debian_packages": debian_versions(),
        "kernel": {"release": platform.release(), "config": kernel_config()},
        "labkit": git_state(),
    }


def _short(commit) -> str:
    return str(commit)[:12]


def _dirty_words(state: dict) -> str:
    if state.get("dirty") is None:
        return "unknown (no git tree)"
    return "uncommitted changes" if state["dirty"] else "clean"


def differences(packaged: dict, here: dict) -> list[str]:
    """One line per way HERE differs from PACKAGED (two `capture()` results): kernel release,
    kernel configuration, each Debian and Python package, labkit's commit and dirty tree."""
    lines = []
    pk, hk = packaged.get("kernel") or {}, here.get("kernel") or {}
    if pk.get("release") != hk.get("release"):
        lines.append(f"kernel: {pk.get('release')} packaged, {hk.get('release')} here")
    pc, hc = pk.get("config") or {}, hk.get("config") or {}
    if pc.get("sha256") != hc.get("sha256"):
        old = f"sha256 {pc['sha256'][:12]} ({pc['path']})" if pc.get("sha256") else "not readable"
        new = f"sha256 {hc['sha256'][:12]} ({hc['path']})" if hc.get("sha256") else "not readable"
        lines.append(f"kernel config: {old} packaged, {new} here")
    if packaged.get("python") != here.get("python"):
        lines.append(f"python: {packaged.get('python')} packaged, {here.get('python')} here")
    for kind, key in (("debian package", "debian_packages"), ("python package", "python_packages")):
        old, new = packaged.get(key) or {}, here.get(key) or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                lines.append(
                    f"{kind} {name}: {old.get(name) or 'not installed'} packaged, "
                    f"{new.get(name) or 'not installed'} here"
                )
    pg, hg = packaged.get("labkit") or {}, here.get("labkit") or {}
    if pg.get("commit") != hg.get("commit"):
        lines.append(f"commit: labkit {_short(pg.get('commit'))} packaged, {_short(hg.get('commit'))} here")
    if pg.get("dirty") != hg.get("dirty"):
        lines.append(f"dirty tree: {_dirty_words(pg)} packaged, {_dirty_words(hg)} here")
    elif pg.get("dirty") and pg.get("changes_sha256") != hg.get("changes_sha256"):
        lines.append(
            "dirty tree: uncommitted changes packaged and here, but not the same changes "
            f"(sha256 {str(pg.get('changes_sha256'))[:12]} packaged, {str(hg.get('changes_sha256'))[:12]} here)"
        )
    return lines


def run_differences(run_id: str, meta: dict, packaged: dict, here: dict) -> list[str]:
    """One line per way HERE differs from what run RUN_ID's own metadata recorded while it ran
    (commit, dirty tree, kernel) where the crate's lock PACKAGED, taken at export, does not say
    so already (a run exported after the tree or the kernel changed)."""
    lines = []
    git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
    pg, hg = packaged.get("labkit") or {}, here.get("labkit") or {}
    commit = git.get("commit")
    if commit and commit not in (pg.get("commit"), hg.get("commit")):
        lines.append(f"commit: labkit {_short(commit)} when {run_id} ran, {_short(hg.get('commit'))} here")
    dirty = git.get("dirty")
    if isinstance(dirty, bool) and dirty not in (pg.get("dirty"), hg.get("dirty")):
        lines.append(f"dirty tree: {_dirty_words(git)} when {run_id} ran, {_dirty_words(hg)} here")
    kernel, pk, hk = meta.get("kernel"), packaged.get("kernel") or {}, here.get("kernel") or {}
    if kernel and kernel not in (pk.get("release"), hk.get("release")):
        lines.append(f"kernel: {kernel} when {run_id} ran, {hk.get('release')} here")
    return lines
