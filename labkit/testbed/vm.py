"""A local VM as a testbed host: booted and stopped by labkit like a namespace.

    with VmHost("vm", links=[(rcv_host, "lk1a2b-rcv")]) as vm:   # boots, joins the link
        vm.remote.run(["uname", "-r"]).stdout                      # the guest's kernel
        vm.remote.call(os.getpid)                                   # any importable function, there
        vm.interfaces                                               # the guest's data-plane interfaces
        vm.cpu_seconds()                                            # the vCPU threads' time, on this host

The guest is QEMU started through virtme-ng (`virtme-run`): the distribution kernel from
/boot, this machine's root filesystem shared read-only (so labkit, bcc and Python are
there), KVM where it is real and QEMU's TCG emulation otherwise (`accelerator()` tries
/dev/kvm and says why; TCG numbers are functional checks, not speed numbers). Each link
gets a virtio-net interface on a tap; the tap is moved into the link's namespace and
bridged there with that namespace's end of the link, whose address the guest takes over:
the guest stands in the receiver's place. vhost-net carries the taps where the host has
it. Commands and Python calls reach the guest the way they reach a remote host
(`remote.RemoteHost`, mitogen over SSH): an sshd started in the guest on a management
interface (QEMU's user network, forwarded to a free port on 127.0.0.1), with a host key
and a login key made for this VM alone and checked both ways.

Undo: QEMU, its taps and bridges carry the run's prefix (the taps and bridges in their
names, QEMU in its environment), so a run killed outright is undone by its watcher or
`labkit clean`, as for any other kernel state: QEMU killed, its taps gone with it. The
VM's folder of keys and its start script (under `VM_DIR`) go with the run's registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from labkit import capabilities
from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.testbed import runs
from labkit.testbed.hosts import ROOT_HOST, which
from labkit.testbed.undo import Undoable

#: the VMs' folders (keys, sshd configuration, start script): the guest reads them from the
#: shared root filesystem, so not under /run (a tmpfs of its own in the guest)
VM_DIR = Path(os.environ.get("LABKIT_VM_DIR", "/var/lib/labkit/vm"))
#: said wherever a VM's numbers are shown while it ran under TCG
TCG_WARNING = (
    "the VM ran under QEMU's TCG emulation (no usable KVM here): its numbers are functional checks "
    "(the program ran, the packets were counted), not speed numbers"
)
KVM_GET_API_VERSION = 0xAE00
MGMT_MAC = "52:54:00:00:00:01"


@capabilities.register(
    "kvm",
    "hardware-assisted KVM for a local VM",
    causes="no VT-x/AMD-V (a nested or software hypervisor such as PVM), /dev/kvm missing or not permitted",
    instead="QEMU's TCG emulation: the VM works, but its numbers are not speed numbers",
)
def _kvm() -> str:
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    finally:
        os.close(fd)
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    hw = [f for f in ("vmx", "svm") if f in flags]
    if not hw:
        pvm = os.path.exists("/sys/module/kvm_pvm") or _config("CONFIG_KVM_PVM")
        raise OSError(
            f"/dev/kvm opens (API {version}) but the CPU has no vmx/svm flag"
            + (": KVM here is PVM, a software hypervisor, under which a guest kernel crawls" if pvm else "")
        )
    return f"/dev/kvm opens (API {version}), CPU has {hw[0]}"


@capabilities.register(
    "vhost_net",
    "vhost-net (virtio-net served in the host kernel)",
    causes="CONFIG_VHOST_NET not set, module not loaded, /dev/vhost-net missing",
    instead="QEMU serves the virtio-net queues itself (vhost=off): slower, and its time is QEMU's",
)
def _vhost_net() -> str:
    os.close(os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC))
    return "/dev/vhost-net opens"


def _config(option: str) -> bool:
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.strip() == f"{option}=y" for line in f)
    except OSError:
        return False


def accelerator() -> tuple[str, str]:
    """('kvm' or 'tcg', why): what a VM here runs on, tried for real."""
    p = capabilities.probe("kvm")
    return ("kvm", p.reason) if p.ok else ("tcg", p.reason)


def guest_kernel(path: str | None = None) -> str:
    """The kernel image the guest boots: PATH, else this kernel's /boot image, else the
    newest distribution image in /boot whose modules are installed."""
    if path:
        if not os.path.isfile(path):
            raise InputError(f"guest kernel {path} does not exist: give a vmlinuz from /boot")
        return path
    own = f"/boot/vmlinuz-{os.uname().release}"
    if os.path.isfile(own):
        return own
    found = [
        k for k in glob.glob("/boot/vmlinuz-*") if os.path.isdir(f"/lib/modules/{k.split('vmlinuz-', 1)[1]}/kernel")
    ]
    if not found:
        raise MissingDependency(
            "no kernel image for a VM in /boot (this kernel has none): install a distribution kernel "
            "(Debian: apt-get install linux-image-amd64; `sudo make setup` does)"
        )
    return sorted(found, key=lambda k: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", k)])[-1]


def _virtme_run() -> str | None:
    """virtme-ng's `virtme-run`: on the PATH, or beside this Python (the venv's bin/)."""
    here = os.path.join(os.path.dirname(sys.executable), "virtme-run")
    return shutil.which("virtme-run") or (here if os.path.exists(here) else None)


def tools() -> str:
    """What a VM host needs here, found (a line saying so), else MissingDependency."""
    for tool, package in (("qemu-system-x86_64", "Debian qemu-system-x86"), ("busybox", "Debian busybox-static")):
        if not shutil.which(tool):
            raise MissingDependency(f"a VM needs {tool}: install {package} (`sudo make setup` does)")
    if not _virtme_run():
        raise MissingDependency("a VM needs virtme-ng (PyPI virtme-ng, in requirements.txt): run `sudo make setup`")
    return f"{_virtme_run()}, {shutil.which('qemu-system-x86_64')}, guest kernel {guest_kernel()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mac(index: int, seed: str) -> str:
    return f"52:54:00:{int(seed[2:4], 16):02x}:{int(seed[4:6], 16):02x}:{index + 16:02x}"


class VmHost(Undoable):
    """A local VM (NAME) whose data-plane interfaces join LINKS, each a (namespace Host,
    interface name) of a testbed link: the guest takes that interface's place and address
    (and, with FORWARDING, routes IPv4 between them). Use it in a `with`: it boots
    (BOOT_TIMEOUT seconds at most) before the body runs."""

    kind = "vm"

    def __init__(
        self,
        name: str = "vm",
        links=(),
        *,
        cpus: int = 1,
        memory: str = "512M",
        kernel: str | None = None,
        boot_timeout: float = 400.0,
        forwarding: bool = False,
    ):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,3}", name):
            raise InputError(f"VM name {name!r}: 1 to 4 lower-case letters or digits, starting with a letter")
        if not (isinstance(cpus, int) and 1 <= cpus <= (os.cpu_count() or 1)):
            raise InputError(f"cpus {cpus!r}: a whole number from 1 to this machine's {os.cpu_count()}")
        if not re.fullmatch(r"\d+[MG]", str(memory)):
            raise InputError(f"memory {memory!r}: a size such as 512M or 1G")
        self.name, self.links, self.cpus, self.memory = name, list(links), cpus, memory
        self.kernel = guest_kernel(kernel)
        self.boot_timeout, self.forwarding = boot_timeout, forwarding
        self.accel, self.accel_reason = "tcg", ""
        self.vhost = False
        self.remote = None  # the guest, as a remote.RemoteHost
        self.interfaces: list[str] = []  # the guest's data-plane interface names, one per link
        self.boot_seconds: float | None = None
        self.qemu_pid: int | None = None
        self.prefix: str | None = None  # the run's, which its taps, bridges and folder carry
        self._proc = None

    def __repr__(self):
        return f"VM {self.name} ({self.accel})"

    # ---- start and stop
    def _open(self, stack) -> None:
        from labkit.testbed.remote import RemoteHost

        tools()
        run = stack.enter_context(runs.run_scope())
        self.prefix = run.prefix
        self.accel, self.accel_reason = accelerator()
        self.vhost = capabilities.probe("vhost_net").ok
        folder = VM_DIR / run.prefix / self.name
        folder.mkdir(parents=True, exist_ok=True)
        stack.callback(_remove_folder, folder)
        port = _free_port()
        taps = [run.name(f"{self.name}t{i}") for i in range(len(self.links))]
        bridges = [run.name(f"{self.name}b{i}") for i in range(len(self.links))]
        macs = [_mac(i, run.prefix) for i in range(len(self.links))]
        guest = self._guest_setup(folder, port, macs)
        started = time.monotonic()
        self._proc = stack.enter_context(ROOT_HOST.spawn(self._command(folder, port, taps, macs), name="virtme-run"))
        stack.callback(self._stop_qemu)
        self.qemu_pid = self._wait_qemu(f"hostfwd=tcp:127.0.0.1:{port}-:22")
        for (host, ifname), tap, bridge in zip(self.links, taps, bridges):
            self.interfaces.append(self._join(stack, host, ifname, tap, bridge, guest))
        self._wait_ready(port, started)
        self.remote = stack.enter_context(
            RemoteHost(
                f"vm {self.name}",
                "127.0.0.1",
                port=port,
                identity_file=str(folder / "id"),
                known_hosts=str(folder / "known_hosts"),
                python="/usr/bin/python3",
                connect_timeout=60.0 if self.accel == "kvm" else 300.0,  # Python's start crawls under TCG
            )
        )
        for ifname, (address, prefixlen) in zip(self.interfaces, guest["addresses"]):
            if address:
                self.remote.run(["ip", "addr", "add", f"{address}/{prefixlen}", "dev", ifname])
        self.boot_seconds = time.monotonic() - started

    def _guest_setup(self, folder: Path, port: int, macs: list) -> dict:
        """Keys, sshd configuration and start script in FOLDER; the data interfaces' names
        and addresses (taken from the links' ends, given to the guest once it is up)."""
        for key in ("hostkey", "id"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"labkit-{key}", "-f", str(folder / key)],
                check=True,
                capture_output=True,
            )
        hostkey = (folder / "hostkey.pub").read_text().split()[:2]
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(hostkey)}\n")
        (folder / "sshd_config").write_text(
            f"Port 22\nListenAddress 0.0.0.0\nHostKey {folder}/hostkey\nAuthorizedKeysFile {folder}/id.pub\n"
            "PidFile /run/sshd-labkit.pid\nUsePAM yes\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "UseDNS no\n"
        )
        names = [f"data{i}" for i in range(len(macs))]
        lines = ["mkdir -p /run/sshd", "ip link set lo up", _by_mac(MGMT_MAC, "mgmt0")]
        lines += ["ip addr add 10.0.2.15/24 dev mgmt0", "ip link set mgmt0 up"]
        lines += [_by_mac(mac, n) + f" && ip link set {n} up" for mac, n in zip(macs, names)]
        if self.forwarding:  # the guest routes between its links, as the namespace in its place did
            lines += ["echo 1 > /proc/sys/net/ipv4/ip_forward"]
        lines += [f"exec /usr/sbin/sshd -D -e -f {folder}/sshd_config"]
        (folder / "start.sh").write_text("\n".join(lines) + "\n")
        addresses = []
        for host, ifname in self.links:
            with host.ipr() as ipr:
                idx = ipr.link_lookup(ifname=ifname)
                if not idx:
                    raise InputError(f"{host} has no interface {ifname!r} for the VM to join")
                addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx[0], family=2)]
            addresses.append(addrs[0] if addrs else (None, None))
        return {"names": names, "addresses": addresses}

    def _command(self, folder: Path, port: int, taps: list, macs: list) -> list:
        vhost = "on" if self.vhost else "off"
        qemu = [
            "-name",
            f"labkit-{self.name},debug-threads=on",  # threads named: "CPU 0/TCG", "CPU 0/KVM"
            "-netdev",
            f"user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
        ]
        for i, (tap, mac) in enumerate(zip(taps, macs)):
            qemu += ["-netdev", f"tap,id=d{i},ifname={tap},script=no,downscript=no,vhost={vhost}"]
            qemu += ["-device", f"virtio-net-pci,netdev=d{i},mac={mac}"]
        argv = [_virtme_run(), "--kimg", self.kernel, "--mods", "auto", "--disable-microvm", "--user", "root"]
        argv += ["--cpus", str(self.cpus), "--memory", self.memory, "--script-sh", f"sh {folder}/start.sh"]
        if self.accel != "kvm":
            argv.append("--disable-kvm")
        return argv + ["--qemu-opts", *qemu]

    def _wait_qemu(self, mine: str) -> int:
        """The pid of the QEMU that virtme-run forks to run this VM (its parent only waits),
        known by MINE in its command line: virtme-run also runs QEMU briefly to probe it."""
        deadline = time.monotonic() + 120
        qemu = which("qemu-system-x86_64", "qemu-system-x86")
        while time.monotonic() < deadline:
            if not self._proc.running:
                raise LabkitError(f"{self}: virtme-run ended before QEMU started:\n{self._proc.output()[-2000:]}")
            for pid in _children(self._proc.pid):
                try:
                    if os.readlink(f"/proc/{pid}/exe") == qemu and mine in open(f"/proc/{pid}/cmdline").read():
                        return pid
                except OSError:
                    continue
            time.sleep(0.2)
        raise LabkitError(f"{self}: QEMU did not start within 120 s:\n{self._proc.output()[-2000:]}")

    def _join(self, stack, host, ifname: str, tap: str, bridge: str, guest: dict) -> str:
        """TAP (made by QEMU here) moved into HOST's namespace and bridged there with IFNAME,
        whose address the guest's interface takes. Returns the guest interface's name."""
        from labkit.testbed.hosts import netlink

        deadline = time.monotonic() + 60
        with netlink() as ipr:
            while not ipr.link_lookup(ifname=tap):
                if time.monotonic() > deadline:
                    raise LabkitError(f"{self}: QEMU made no tap {tap} within 60 s")
                time.sleep(0.1)
            ipr.link("set", index=ipr.link_lookup(ifname=tap)[0], net_ns_fd=host.netns)
        with host.ipr() as ipr:
            ipr.link("add", ifname=bridge, kind="bridge", br_forward_delay=0, br_stp_state=0)
            stack.callback(_delete_link, host, bridge)
            br, t, end = (ipr.link_lookup(ifname=n)[0] for n in (bridge, tap, ifname))
            for a in ipr.get_addr(index=end, family=2):
                ipr.addr("del", index=end, address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"])
            for idx in (t, end):
                ipr.link("set", index=idx, master=br, state="up")
            ipr.link("set", index=br, state="up")
        return guest["names"][len(self.interfaces)]

    def _wait_ready(self, port: int, started: float) -> None:
        """Until the guest's sshd answers on PORT (its banner), or BOOT_TIMEOUT."""
        deadline = started + self.boot_timeout
        while time.monotonic() < deadline:
            if not self._proc.running:
                raise LabkitError(f"{self}: QEMU ended during boot:\n{self._proc.output()[-3000:]}")
            try:  # QEMU accepts on the port from the start; only the guest's sshd says "SSH-"
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(1)
        raise LabkitError(
            f"{self}: the guest did not come up within {self.boot_timeout:.0f} s ({self.accel}); "
            f"its console:\n{self._proc.output()[-3000:]}"
        )

    def _stop_qemu(self) -> None:
        pid, self.qemu_pid = self.qemu_pid, None
        if pid is None:  # a boot stopped before QEMU was found: QEMU is in virtme-run's session
            if self._proc is not None and self._proc.running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and runs._pid_alive(pid):
                time.sleep(0.05)

    # ---- measures
    def cpu_seconds(self) -> dict:
        """CPU seconds so far of QEMU's threads on this host: 'vcpu' (the guest's CPUs),
        'vhost' (vhost-net workers: QEMU's threads on newer kernels, kernel threads named
        vhost-PID on older ones), 'qemu' (all of QEMU, those kernel threads included)."""
        out = {"vcpu": 0.0, "vhost": 0.0, "qemu": 0.0}
        if self.qemu_pid is None:
            return out
        out["qemu"] = _stat_seconds(f"/proc/{self.qemu_pid}/stat")[1]  # the process's: ended threads too
        for stat in glob.glob(f"/proc/{self.qemu_pid}/task/*/stat"):
            comm, seconds = _stat_seconds(stat)
            if comm.startswith("CPU "):
                out["vcpu"] += seconds
            elif comm.startswith("vhost"):
                out["vhost"] += seconds
        if self.vhost:  # the vhost-net workers of older kernels are kernel threads of their own
            for stat in glob.glob("/proc/[0-9]*/stat"):
                comm, seconds = _stat_seconds(stat)
                if comm == f"vhost-{self.qemu_pid}":
                    out["vhost"] += seconds
                    out["qemu"] += seconds
        return out

    def metadata(self) -> dict:
        return {
            "kind": self.kind,
            "prefix": self.prefix,
            "accelerator": self.accel,
            "accelerator_reason": self.accel_reason,
            "warning": TCG_WARNING if self.accel == "tcg" else "",
            "vhost_net": self.vhost,
            "kernel": self.kernel,
            "cpus": self.cpus,
            "memory": self.memory,
            "boot_seconds": round(self.boot_seconds, 1) if self.boot_seconds else None,
            "interfaces": list(self.interfaces),
            "forwarding": self.forwarding,
            "qemu": (_first_line([which("qemu-system-x86_64", "qemu-system-x86"), "--version"])),
        }


def _by_mac(mac: str, name: str) -> str:
    """A guest shell line: the interface with MAC renamed NAME."""
    return f'ip link set "$(grep -l {mac} /sys/class/net/*/address | cut -d/ -f5)" name {name}'


def _stat_seconds(stat: str) -> tuple[str, float]:
    """(name, user + system CPU seconds) of a /proc/.../stat file; ('', 0.0) once it is gone."""
    try:
        text = open(stat).read()
    except OSError:
        return "", 0.0
    fields = text.rsplit(")", 1)[1].split()
    return text[text.index("(") + 1 : text.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(p) for p in open(f).read().split()]
        except OSError:
            continue
    return out


def _remove_folder(folder: Path) -> None:
    """FOLDER (a VM's) removed, and the run's folder of VMs with it once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # another VM of the run may still have its folder there
        folder.parent.rmdir()


def _delete_link(host, name: str) -> None:
    with contextlib.suppress(Exception), host.ipr() as ipr:  # the namespace may be gone, and the link with it
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])


def _first_line(argv: list) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
