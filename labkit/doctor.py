"""`labkit doctor`: what this machine has, what is missing, and which experiment needs it.
Every kernel facility is shown as labkit.capabilities probed it (tried for real: what was
refused, the errno, the likely causes and what labkit uses instead). Every check is tried
for real where it can be (an XDP attach on a throw-away veth pair;
an Open vSwitch of its own opening `system` and `afxdp` ports on throw-away veths, as the
`ovs` and `ovs_afxdp` variants of 02 do; an AF_XDP socket for DPDK's net_af_xdp), a
failing one says what to install or fix, and a failing check never stops the others."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from labkit import BUILD_DIR, capabilities


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


def _facility(name):
    def f():
        p = capabilities.probe(name)
        return p.ok, p.reason if p.ok else "; ".join(
            x for x in (p.reason, p.causes and f"likely causes: {p.causes}", p.instead and f"instead: {p.instead}") if x
        )

    return f


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
    """A bare XDP program attached to a throw-away veth in both modes (the probes')."""
    probes = [capabilities.probe(m) for m in ("xdp_native", "xdp_generic")]
    return all(p.ok for p in probes), ", ".join(
        f"{p.name.split('_')[1]}: {'yes' if p.ok else 'no (' + p.reason + ')'}" for p in probes
    )


def _ovs_installed():
    from labkit import ovs

    ok, detail = ovs.status()
    if ok:
        kernel, why = ovs.kernel_datapath()
        missing = f"; no kernel datapath ({why}): the variants use the userspace one, which needs none"
        detail += "; kernel datapath also there" if kernel else missing
    return ok, detail


def _ovs_ports(port_type: str):
    """Start a switch of the run's own with PORT_TYPE ports on a throw-away veth pair (the
    `ovs` variant's `system` ports, or `ovs_afxdp`'s `afxdp`), then remove it all."""

    def f():
        from labkit import ovs
        from labkit.testbed import topology

        ok, version = ovs.status()
        if not ok:
            return False, version
        try:
            spec = topology.TopologySpec(
                hosts=["a", "sw", "b"], links=[topology.LinkSpec("a", "sw"), topology.LinkSpec("sw", "b")]
            )
            with topology.Topology(spec) as topo:
                ports = [topo.iface("sw", "a").name, topo.iface("sw", "b").name]
                with ovs.OvsSwitch(topo.host("sw"), ports, port_type=port_type, ready_timeout=20):
                    pass
        except Exception as exc:
            hint = {
                "afxdp": "this Open vSwitch cannot open AF_XDP ports: Debian's openvswitch-switch is built "
                "with AF_XDP (`apt-get install openvswitch-switch`); the kernel needs CONFIG_XDP_SOCKETS",
                "system": "Open vSwitch is installed but its userspace datapath did not start: "
                "see the daemon's log above, and reinstall openvswitch-switch",
            }[port_type]
            return False, f"{str(exc).splitlines()[0]} -- {hint}"
        return True, f"{version}: a netdev bridge opened {port_type} ports on throw-away veths"

    return f


@capabilities.register(
    "ovs",
    "Open vSwitch's userspace datapath (the ovs variants of 02)",
    causes="Open vSwitch not installed (Debian package openvswitch-switch), or its daemons refused",
    instead="none: the ovs variants cannot run",
)
def _ovs_probe() -> str:
    ok, detail = _ovs_ports("system")()
    if not ok:
        raise RuntimeError(detail)
    return detail


def _dpdk_af_xdp():
    """DPDK's net_af_xdp driver is installed and its libraries resolve."""
    import subprocess

    from labkit.dpdk.build import dpdk_version
    from labkit.errors import MissingDependency

    try:
        version = dpdk_version()
    except MissingDependency as exc:
        return False, str(exc)
    cp = subprocess.run(["pkg-config", "--variable=libdir", "libdpdk"], capture_output=True, text=True)
    libdir = Path(cp.stdout.strip() or "/usr/lib")
    found = [*sorted(libdir.glob("dpdk/pmds-*/librte_net_af_xdp.so*")), *sorted(libdir.glob("librte_net_af_xdp.so*"))]
    if not found:
        return False, (
            f"DPDK {version} has no net_af_xdp driver (librte_net_af_xdp): install Debian's "
            "librte-net-af-xdp23 (or dpdk), or build DPDK with libxdp/libbpf"
        )
    ldd = subprocess.run(["ldd", str(found[0])], capture_output=True, text=True)
    missing = [l.split()[0] for l in ldd.stdout.splitlines() if "not found" in l]
    if missing:
        return False, f"{found[0]} needs {', '.join(missing)}: install them (Debian: libxdp1 libbpf1)"
    from labkit.traffic.testpmd import af_xdp_sockets

    ok, why = af_xdp_sockets()
    return (ok, f"DPDK {version}, {found[0]}; {why}")


def _vm_host():
    from labkit.testbed import vm

    return True, vm.tools()


def checks() -> list[tuple[str, bool, str]]:
    out = [
        _check("root", _root),
        _check("bcc (python3-bpfcc) + kernel headers", _bcc),
        _check("libbpf (BPF_PROG_TEST_RUN)", _libbpf),
        _check("kernel BTF", _btf),
        _check("bpffs", _bpffs),
        _check("BPF_PROG_RUN live frames (in-kernel generator)", _facility("live_frames")),
        _check("kernel pktgen", _facility("pktgen")),
    ]
    for tool, pkg in (
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("iptables", "iptables"),
        ("ethtool", "ethtool"),
        ("trafgen", "netsniff-ng"),
        ("dpdk-testpmd", "dpdk"),
        ("iperf3", "iperf3"),
        ("tcpdump", "tcpdump"),
        ("ping", "iputils-ping"),
        ("chromium", "chromium"),
    ):
        out.append(_check(tool, _tool(tool, pkg)))
    out.append(_check("DPDK (libdpdk)", _dpdk))
    out.append(_check("DPDK l2fwd built", _l2fwd))
    out.append(_check("DPDK net_af_xdp (dpdk_l2fwd_afxdp)", _dpdk_af_xdp))
    out.append(_check("Open vSwitch installed", _ovs_installed))
    out.append(_check("VM host (QEMU, virtme-ng, a kernel in /boot)", _vm_host))
    out.append(_check("KVM real (VM numbers are speed numbers)", _facility("kvm")))
    out.append(_check("vhost-net", _facility("vhost_net")))
    if os.geteuid() == 0:
        out.append(_check("XDP on veth (native, generic)", _xdp_on_veth))
        out.append(_check("Open vSwitch system ports (ovs)", _ovs_ports("system")))
        out.append(_check("Open vSwitch afxdp ports (ovs_afxdp)", _ovs_ports("afxdp")))
    return out


NEEDS = {
    "01-xdp-drop": [
        "root",
        "bcc (python3-bpfcc) + kernel headers",
        "libbpf (BPF_PROG_TEST_RUN)",
        "iptables",
        "ethtool",
        "XDP on veth (native, generic)",
    ],
    "02-l2-forwarding": ["root", "bcc (python3-bpfcc) + kernel headers", "DPDK (libdpdk)", "DPDK l2fwd built"],
    "02-l2-forwarding ovs": ["root", "Open vSwitch installed", "Open vSwitch system ports (ovs)"],
    "02-l2-forwarding ovs_afxdp": ["root", "Open vSwitch installed", "Open vSwitch afxdp ports (ovs_afxdp)"],
    "02-l2-forwarding dpdk_l2fwd_afxdp": ["root", "DPDK l2fwd built", "DPDK net_af_xdp (dpdk_l2fwd_afxdp)"],
    "03-ebpf-nat": ["root", "bcc (python3-bpfcc) + kernel headers", "iptables", "iperf3", "tcpdump", "ping"],
    "05-vm-vs-container": [
        "root",
        "bcc (python3-bpfcc) + kernel headers",
        "iptables",
        "ping",
        "VM host (QEMU, virtme-ng, a kernel in /boot)",
    ],
    "report browser check": ["chromium"],
}


def main() -> int:
    results = checks()
    width = max(len(n) for n, _, _ in results)
    print(f"labkit doctor on {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs\n")
    for name, ok, detail in results:
        print(f"  {'ok ' if ok else 'NO '} {name:<{width}}  {detail}")
    print("\nkernel facilities (each tried for real once; LABKIT_REFUSE=name,... treats names as refused):")
    for name in sorted(capabilities.KNOWN):
        p = capabilities.probe(name)
        print(f"  {'ok ' if p.ok else 'NO '} {name:<17} {p.reason}")
        if not p.ok:
            if p.causes and not p.forced:
                print(f"  {'':<21} likely causes: {p.causes}")
            if p.instead:
                print(f"  {'':<21} labkit uses instead: {p.instead}")
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
