#!/usr/bin/env bash
# Set up a machine for labkit: system packages, kernel headers for bcc, bpffs,
# the Python virtual environment in .venv (with Debian's bcc linked in), the
# Jupyter kernel "labkit", and DPDK's l2fwd example built in build/.
#
# Idempotent: every step first checks whether its work is already done, so a
# second run changes nothing and takes a second or two. Safe to interrupt and
# rerun. Works wherever the repository lives (all paths are relative to it).
#
# Usage: sudo scripts/setup.sh            (normally through `sudo make setup`)
# Environment:
#   PYTHON=/path/to/python3   interpreter for .venv (default: python3 on PATH;
#                             setting it recreates .venv if it was made by another)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
VENV_PY="$VENV/bin/python"
BUILD="$REPO/build"
DEBIAN_BCC="/usr/lib/python3/dist-packages/bcc"
KREL="$(uname -r)"
MODDIR="/lib/modules/$KREL"

say()  { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
die()  { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (it installs packages, links kernel headers and mounts bpffs). Run: sudo make setup"
fi
command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    || die "this set-up needs a Debian or Ubuntu system (dpkg and apt-get were not found)"

export DEBIAN_FRONTEND=noninteractive
# Root's tools (trafgen, ip, iptables) live in sbin, which a plain PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
ARCH="$(dpkg --print-architecture)"

mkdir -p "$BUILD"
# Two set-ups at once (say, two make targets in parallel) would fight over
# apt and pip: take turns.
exec 9>"$BUILD/.setup.lock"
flock 9

# ---------------------------------------------------------------- packages
PACKAGES=(
    python3-bpfcc libbpfcc bpfcc-tools libbpf1
    iproute2 iptables ethtool netsniff-ng iputils-ping tcpdump iperf3
    dpdk dpdk-dev libdpdk-dev dpdk-doc     # dpdk-doc ships /usr/share/dpdk/examples
    openvswitch-switch                     # Open vSwitch's userspace datapath (its own daemons per run)
    pkg-config make gcc python3-venv
    kmod                                   # modprobe: the kernel's pktgen where it is a module
    chromium                               # the reports are checked in a real headless browser
    openssh-server ansible-core            # remote hosts (mitogen over SSH) and `labkit provision`
    sudo                                   # remote hosts whose login is not root (and their test)
    qemu-system-x86 busybox-static         # a local VM as a testbed host (virtme-ng boots it)
)
# The VM's kernel: this machine's own image where /boot has one (a normal host), else Debian's.
ls /boot/vmlinuz-* >/dev/null 2>&1 || PACKAGES+=(linux-image-amd64)

headers_present() {
    # A kernel build tree that bcc can compile against (normal hosts have one).
    [ -f "$MODDIR/build/Makefile" ] && [ -d "$MODDIR/build/include" ]
}

apt_knows() {
    apt-cache show "$1" >/dev/null 2>&1
}

headers_package() {
    # The headers package to install, or nothing when the build tree is there.
    if headers_present; then
        return 0
    fi
    if is_installed "linux-headers-$KREL" || apt_knows "linux-headers-$KREL"; then
        echo "linux-headers-$KREL"
    elif is_installed "linux-headers-$ARCH" || apt_knows "linux-headers-$ARCH"; then
        echo "linux-headers-$ARCH"
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}" "$@"; do
        is_installed "$p" || echo "$p"
    done
}

HEADERS_PKG="$(headers_package)"
mapfile -t MISSING < <(missing_packages $HEADERS_PKG)
if [ "${#MISSING[@]}" -gt 0 ]; then
    say "installing missing packages: ${MISSING[*]}"
    apt-get update -qq
    # After the update apt may know the exact headers package for this kernel.
    HEADERS_PKG="$(headers_package)"
    mapfile -t MISSING < <(missing_packages $HEADERS_PKG)
    if [ -z "$HEADERS_PKG" ] && ! headers_present; then
        warn "no headers package found for kernel $KREL (tried linux-headers-$KREL and linux-headers-$ARCH); bcc programs will not compile"
    fi
    if [ "${#MISSING[@]}" -gt 0 ]; then
        apt-get install -y -qq "${MISSING[@]}"
    fi
else
    say "system packages: all present"
fi

# ----------------------------------------------------------- kernel headers
# A kernel without its own headers package (a custom build) gets the newest
# distribution headers of the same architecture; bcc compiles against them.
if headers_present; then
    say "kernel headers: $MODDIR/build -> $(readlink -f "$MODDIR/build") (left as it is)"
else
    HDR_ARCH="$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$HDR_ARCH" ]; then
        warn "no /usr/src/linux-headers-*-$ARCH directory: bcc programs will fail with 'Unable to find kernel headers'"
    else
        HDR_COMMON="${HDR_ARCH%-"$ARCH"}-common"
        if [ ! -d "$HDR_COMMON" ]; then
            HDR_COMMON="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)"
        fi
        mkdir -p "$MODDIR"
        ln -sfn "$HDR_ARCH" "$MODDIR/build"
        say "kernel headers: linked $MODDIR/build -> $HDR_ARCH"
        if [ -n "$HDR_COMMON" ] && [ -d "$HDR_COMMON" ]; then
            ln -sfn "$HDR_COMMON" "$MODDIR/source"
            say "kernel headers: linked $MODDIR/source -> $HDR_COMMON"
        fi
    fi
fi

# -------------------------------------------------------------------- tracefs
# The softirq clock tells the xdp_loop generator's own NAPI polls from the receiver's by
# the napi:napi_poll tracepoint, whose format bcc reads from tracefs.
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
    if mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; then
        say "mounted tracefs on /sys/kernel/tracing"
    else
        warn "could not mount tracefs on /sys/kernel/tracing (CPU per packet fed by xdp_loop then includes the loop)"
    fi
fi

# -------------------------------------------------------------------- bpffs
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    if mount -t bpf bpf /sys/fs/bpf 2>/dev/null; then
        say "mounted bpffs on /sys/fs/bpf"
    else
        warn "could not mount bpffs on /sys/fs/bpf (pinning BPF objects will not work)"
    fi
fi

# -------------------------------------------------------------- Python venv
venv_works() {
    [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import sys' >/dev/null 2>&1
}

if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable"
    if venv_works; then
        want="$("$PYTHON" -c 'import sys; print(sys.base_prefix, sys.version)')"
        have="$("$VENV_PY" -c 'import sys; print(sys.base_prefix, sys.version)')"
        if [ "$want" != "$have" ]; then
            say "PYTHON=$PYTHON differs from the interpreter of .venv: recreating .venv"
            rm -rf "$VENV"
        fi
    fi
else
    PYTHON=python3
    command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is not on PATH (apt-get install python3, or set PYTHON=...)"
fi

if ! venv_works; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "$("$PYTHON" -V 2>&1) is too old: labkit needs Python 3.9 or newer (set PYTHON=...)"
    rm -rf "$VENV"
    say "creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when what pip would read has changed: the pins, the project
# metadata, where the repository lives (the editable install records it), and
# whether the labkit package exists yet.
stamp_of_requirements() {
    {
        sha256sum "$REPO/requirements.txt" "$REPO/pyproject.toml" 2>/dev/null || true
        echo "$REPO"
        [ -f "$REPO/labkit/__init__.py" ] && echo "labkit package present"
        "$VENV_PY" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}
REQ_STAMP="$VENV/.requirements.sha256"
labkit_importable() {
    # find_spec does not run labkit's code: only "can pip's install be found".
    (cd / && "$VENV_PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("labkit") is None)') 2>/dev/null
}
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$(stamp_of_requirements)" ] \
   || { [ -f "$REPO/labkit/__init__.py" ] && ! labkit_importable; }; then
    say "installing Python requirements into .venv (requirements.txt, then labkit in editable mode)"
    "$VENV_PY" -m pip install -q --disable-pip-version-check -r "$REPO/requirements.txt"
    "$VENV_PY" -m pip install -q --disable-pip-version-check -e "$REPO"
    stamp_of_requirements > "$REQ_STAMP"
else
    say "Python requirements: up to date (.venv/.requirements.sha256)"
fi

# ---------------------------------------------------- bcc from Debian, linked
SITE="$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "$(readlink "$SITE/bcc" 2>/dev/null || true)" != "$DEBIAN_BCC" ]; then
    [ -d "$DEBIAN_BCC" ] || die "$DEBIAN_BCC is missing: apt-get install python3-bpfcc"
    if "$VENV_PY" -m pip show -q bcc >/dev/null 2>&1; then
        warn "removing PyPI's package 'bcc' from .venv: it is an unrelated library that hides Debian's bcc"
        "$VENV_PY" -m pip uninstall -y -q bcc
    fi
    rm -rf "$SITE/bcc"
    ln -s "$DEBIAN_BCC" "$SITE/bcc"
    say "linked $SITE/bcc -> $DEBIAN_BCC"
fi
BCC_STATUS="bcc import FAILED"
if (cd / && "$VENV_PY" -c 'import bcc') >/dev/null 2>&1; then
    BCC_STATUS="bcc import OK"
else
    warn "'.venv/bin/python -c \"import bcc\"' fails; see: cd / && $VENV_PY -c 'import bcc'"
fi

# ------------------------------------------------------------ Jupyter kernel
# --sys-prefix puts the kernel spec in .venv/share/jupyter, where papermill and
# JupyterLab started from .venv look; its argv names .venv/bin/python.
KSPEC="$VENV/share/jupyter/kernels/labkit/kernel.json"
if ! "$VENV_PY" - "$KSPEC" "$VENV_PY" >/dev/null 2>&1 <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
sys.exit(spec["argv"][0] != sys.argv[2])
EOF
then
    "$VENV_PY" -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)" >/dev/null
    say "registered Jupyter kernel 'labkit' (Python (labkit)) in .venv/share/jupyter/kernels"
fi

# --------------------------------------------------------- JupyterLab settings
# Defaults for every JupyterLab started from .venv (`make lab`, the students' servers):
# no "Jupyter news?" pop-up over the outputs, no update check. Students' servers also
# hide nbgrader's instructor UI through labs/student-config (labs/README.md).
OVERRIDES="$VENV/share/jupyter/lab/settings/overrides.json"
OVERRIDES_JSON='{
  "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}
}'
if [ "$(cat "$OVERRIDES" 2>/dev/null)" != "$OVERRIDES_JSON" ]; then
    mkdir -p "$(dirname "$OVERRIDES")"
    printf '%s\n' "$OVERRIDES_JSON" > "$OVERRIDES"
    say "JupyterLab settings: news and update checks off ($OVERRIDES)"
fi

# ------------------------------------------------------------- DPDK l2fwd
# labkit.dpdk.build_l2fwd builds the example into build/l2fwd/ once, and again only
# when the DPDK version or the example's source changes (its own stamp).
DPDK_VERSION="$(pkg-config --modversion libdpdk 2>/dev/null || true)"
DPDK_STATUS="dpdk missing"
if [ -z "$DPDK_VERSION" ]; then
    warn "pkg-config finds no libdpdk: the DPDK experiment will report DPDK as missing"
elif L2FWD_BIN="$("$VENV_PY" -c 'from labkit.dpdk import build_l2fwd; print(build_l2fwd())' 2>"$BUILD/l2fwd-build.log")"; then
    DPDK_STATUS="dpdk $DPDK_VERSION, l2fwd built"
else
    tail -n 20 "$BUILD/l2fwd-build.log" >&2 || true
    warn "building l2fwd failed (log: build/l2fwd-build.log): the DPDK experiment will report it missing"
    DPDK_STATUS="dpdk $DPDK_VERSION, l2fwd build FAILED"
fi

# ------------------------------------------------------------------ summary
if headers_present; then
    HDR_STATUS="headers $(readlink -f "$MODDIR/build")"
else
    HDR_STATUS="headers MISSING"
fi
if command -v trafgen >/dev/null 2>&1; then
    # `trafgen -v` exits 1 after printing its version.
    TRAFGEN_STATUS="trafgen $( { trafgen -v 2>/dev/null || true; } | awk 'NR == 1 {print $2}')"
else
    TRAFGEN_STATUS="trafgen missing"
fi
PY_VERSION="$("$VENV_PY" -c 'import platform; print(platform.python_version())')"
echo "setup done: python $PY_VERSION (.venv) | $BCC_STATUS | $HDR_STATUS | $DPDK_STATUS | $TRAFGEN_STATUS"
