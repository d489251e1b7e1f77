"""`labkit doctor`: what this machine has, what is missing, and which experiment needs it.
Every check is tried for real where it can be (an XDP attach on a throw-away veth pair),
and a failing check never stops the others."""
from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from labkit import BUILD_DIR


def _check(name, fn):
    try:
        ok, detail = fn()
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return name, ok, detail


def _tool(tool, package):
    def f():
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
        return (True, path) if path else (False, f"not installed (Debian package {package})")
    return f


def _root():
    return (os.geteuid() == 0, "root" if os.geteuid() == 0 else "not root: namespaces, XDP, BPF and iptables need sudo")


def _bcc():
    from labkit.bpf import check_bcc

    bcc = check_bcc()
    return True, f"{bcc.__file__} (kernel headers OK)"


def _libbpf():
    from labkit.bpf import libbpf

    libbpf()
    return True, "bpf_prog_test_run_opts found"


def _kernel_version():
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return major, minor


def _live_frames():
    v = _kernel_version()
    return (v >= (5, 18), f"kernel {platform.release()}: BPF_PROG_RUN live frames need 5.18+")


def _pktgen():
    from labkit.traffic.pktgen import KernelPktgen

    return KernelPktgen.available()


def _dpdk():
    import subprocess

    cp = subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True, text=True)
    return (cp.returncode == 0, cp.stdout.strip() or "libdpdk not found (Debian packages dpdk dpdk-dev libdpdk-dev)")


def _l2fwd():
    cands = list(BUILD_DIR.glob("**/l2fwd"))
    cands = [c for c in cands if c.is_file() and os.access(c, os.X_OK)]
    return (bool(cands), str(cands[0]) if cands else "not built: `sudo make setup` builds it from the DPDK examples")


def _bpffs():
    mounted = any(l.split()[1] == "/sys/fs/bpf" and l.split()[2] == "bpf" for l in open("/proc/mounts"))
    return mounted, "mounted" if mounted else "not mounted (`mount -t bpf bpf /sys/fs/bpf`; set-up does it)"


def _btf():
    p = Path("/sys/kernel/btf/vmlinux")
    return p.exists(), str(p) if p.exists() else "no kernel BTF"


def _xdp_on_veth():
    """Attach a bare XDP program to a throw-away veth in both modes."""
    from labkit import bpf
    from labkit.testbed import topology

    results = []
    with topology.Topology(topology.pair()) as topo, bpf.load("xdp_minimal") as prog:
        fn = prog.function("xdp_pass_bare")
        for mode in ("native", "generic"):
            try:
                with bpf.attach_xdp(topo.iface("rcv"), fn, mode):
                    results.append(f"{mode}: yes")
            except Exception as exc:
                results.append(f"{mode}: no ({exc})")
    return all("yes" in r for r in results), ", ".join(results)


def checks() -> list[tuple[str, bool, str]]:
    out = [_check("root", _root), _check("bcc (python3-bpfcc) + kernel headers", _bcc),
           _check("libbpf (BPF_PROG_TEST_RUN)", _libbpf), _check("kernel BTF", _btf),
           _check("bpffs", _bpffs), _check("BPF_PROG_RUN live frames (in-kernel generator)", _live_frames),
           _check("kernel pktgen", _pktgen)]
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables"), ("ethtool", "ethtool"),
                      ("trafgen", "netsniff-ng"), ("dpdk-testpmd", "dpdk"), ("iperf3", "iperf3"),
                      ("tcpdump", "tcpdump"), ("ping", "iputils-ping"), ("chromium", "chromium")):
        out.append(_check(tool, _tool(tool, pkg)))
    out.append(_check("DPDK (libdpdk)", _dpdk))
    out.append(_check("DPDK l2fwd built", _l2fwd))
    if os.geteuid() == 0:
        out.append(_check("XDP on veth (native, generic)", _xdp_on_veth))
    return out


NEEDS = {
    "01-xdp-drop": ["root", "bcc (python3-bpfcc) + kernel headers", "libbpf (BPF_PROG_TEST_RUN)", "iptables", "ethtool",
                    "XDP on veth (native, generic)"],
    "02-l2-forwarding": ["root", "bcc (python3-bpfcc) + kernel headers", "DPDK (libdpdk)", "DPDK l2fwd built"],
    "03-ebpf-nat": ["root", "bcc (python3-bpfcc) + kernel headers", "iptables", "iperf3", "tcpdump", "ping"],
    "report browser check": ["chromium"],
}


def main() -> int:
    results = checks()
    width = max(len(n) for n, _, _ in results)
    print(f"labkit doctor on {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs\n")
    for name, ok, detail in results:
        print(f"  {'ok ' if ok else 'NO '} {name:<{width}}  {detail}")
    from labkit.traffic import backends_status

    print("\ntraffic generators:")
    for name, (ok, why) in backends_status().items():
        print(f"  {'ok ' if ok else 'NO '} {name:<10} {why}")
    status = {n: ok for n, ok, _ in results}
    print("\nexperiments:")
    bad = False
    for exp, needs in NEEDS.items():
        missing = [n for n in needs if not status.get(n, False)]
        bad |= bool(missing) and exp.startswith("01")
        print(f"  {'ready  ' if not missing else 'missing'} {exp}" + (f": {', '.join(missing)}" if missing else ""))
    return 1 if bad else 0
