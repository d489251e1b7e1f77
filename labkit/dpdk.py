"""DPDK in labkit: build the l2fwd example, run it on a host, read its statistics, and
account for what it takes from the machine.

    binary = dpdk.build_l2fwd()                     # once; rebuilt when DPDK's version changes
    ports = [dpdk.Port.af_packet(d0), dpdk.Port.af_packet(d1)]
    with dpdk.L2fwd(topo.host("dut"), ports, dpdk.EalOptions(lcores="1"),
                    dpdk.L2fwdOptions(portmask=0x3)) as fwd:
        ...                                          # traffic through port 0
        stats = fwd.next_stats()                     # {port: PortStats(sent, received, dropped)}
        fwd.resources()                              # CPU time, memory, hugepages

The poster's command line is expressible as it was written:

    eal, app = dpdk.parse_command_line("-c 1 -n 1 -- -q 1 -p 1")

Ports are virtual by default: `net_af_packet` on a veth (no hugepages, no PCI), or
`net_af_xdp` when asked; real ports are PCI addresses with a DPDK-capable driver bound,
and then hugepages are used. Every input is checked before anything runs (port mask
against the ports given, queues per lcore against the lcores, PCI addresses against
/sys/bus/pci), with an error that says what to change.

Each run gets its own EAL `--file-prefix` (the labkit run prefix plus a counter) and its
runtime directory /var/run/dpdk/PREFIX is removed when l2fwd has stopped, so a crashed or
finished run never blocks the next. l2fwd is stopped with SIGINT (it then closes its
ports), then SIGTERM, then SIGKILL, and is always reaped.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import BUILD_DIR, lifecycle
from .errors import InputError, LabkitError, MissingDependency

EXAMPLES_DIR = Path(os.environ.get("LABKIT_DPDK_EXAMPLES", "/usr/share/dpdk/examples"))
L2FWD_BUILD_DIR = BUILD_DIR / "l2fwd"
STAMP_NAME = ".dpdk-version"
RUNTIME_BASES = ("/var/run/dpdk", "/run/dpdk")
#: drivers a PCI device can be bound to for DPDK to drive it (mlx5 works with its kernel driver)
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio", "mlx5_core", "mlx4_core")
PCI_RE = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
PORT_KINDS = ("af_packet", "af_xdp", "pci")


# ---------------------------------------------------------------- DPDK installation
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


# ---------------------------------------------------------------- ports and options
@dataclass(frozen=True)
class Port:
    """One DPDK port: a virtual device over a Linux interface, or a real PCI device."""

    kind: str  # af_packet | af_xdp | pci
    name: str  # interface name (af_packet, af_xdp) or PCI address
    devargs: tuple = ()  # further vdev arguments, e.g. (("framecnt", 4096),) for net_af_packet

    @classmethod
    def af_packet(cls, iface, **devargs) -> "Port":
        """net_af_packet on IFACE; DEVARGS such as framecnt=4096 (ring frames), qdisc_bypass=1."""
        return cls("af_packet", getattr(iface, "name", iface), tuple(sorted(devargs.items())))

    @classmethod
    def af_xdp(cls, iface, **devargs) -> "Port":
        return cls("af_xdp", getattr(iface, "name", iface), tuple(sorted(devargs.items())))

    @classmethod
    def pci(cls, address: str) -> "Port":
        return cls("pci", address)

    def eal_args(self, index: int) -> list[str]:
        if self.kind == "pci":
            return ["-a", self.name]
        extra = "".join(f",{k}={v}" for k, v in self.devargs)
        return [f"--vdev=net_{self.kind}{index},iface={self.name}{extra}"]

    def __str__(self):
        return f"{self.kind}:{self.name}"


def check_pci_address(address: str) -> str:
    """A PCI address that exists here and has a driver DPDK can use, or a clear InputError."""
    if not isinstance(address, str) or not PCI_RE.match(address):
        raise InputError(f"PCI address {address!r} is malformed: write it as in `lspci -D`, e.g. '0000:3b:00.0'")
    full = address if address.count(":") == 2 else f"0000:{address}"
    dev = Path("/sys/bus/pci/devices") / full.lower()
    if not dev.exists():
        have = sorted(p.name for p in Path("/sys/bus/pci/devices").glob("*")
                      if _read(p / "class") and _read(p / "class").startswith("0x02"))
        raise InputError(f"PCI device {full} does not exist on this machine; network devices here: "
                         f"{', '.join(have) or 'none'} (see `dpdk-devbind.py --status`)")
    driver = os.path.basename(os.readlink(dev / "driver")) if (dev / "driver").exists() else None
    if driver not in DPDK_DRIVERS:
        raise InputError(f"PCI device {full} is bound to {driver or 'no driver'}: bind it to vfio-pci for DPDK "
                         f"(`dpdk-devbind.py -b vfio-pci {full}`), or use a virtual port (af_packet/af_xdp) "
                         "on its Linux interface")
    return full


def hugepages() -> dict:
    """The machine's hugepage counters from /proc/meminfo (pages, and the page size in kB)."""
    out = {}
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("HugePages_") or line.startswith("Hugepagesize"):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def _lcore_list(spec: str) -> list[int]:
    """'1', '0,1', '0-3', '1@0'-less lists of lcores (EAL -l syntax, without @ mappings)."""
    cores = []
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"lcore list {spec!r}: write lcores as '1', '0,1' or '0-1'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"lcore range {part!r} runs backwards")
        cores.extend(range(lo, hi + 1))
    return sorted(set(cores))


@dataclass
class EalOptions:
    """DPDK's EAL options (what comes before `--`)."""

    lcores: str | None = "1"  # -l: lcores to run on, e.g. "1" or "0,1"
    coremask: str | None = None  # -c: a hex core mask instead of -l (the poster used -c 1)
    memory_channels: int | None = None  # -n
    memory_mb: int = 512  # -m: memory to reserve (without hugepages it is ordinary memory)
    hugepages: bool | None = None  # None: only for PCI ports
    file_prefix: str | None = None  # default: the run prefix plus a counter
    log_level: str | None = None  # --log-level, e.g. "lib.eal:error"
    extra: list = field(default_factory=list)  # further EAL arguments, passed as given

    def lcore_ids(self) -> list[int]:
        if self.coremask is not None:
            try:
                mask = int(str(self.coremask), 16)
            except ValueError:
                raise InputError(f"core mask {self.coremask!r} is not hexadecimal: write e.g. '1' or '0x3'") from None
            cores = [i for i in range(mask.bit_length()) if mask >> i & 1]
        else:
            cores = _lcore_list(self.lcores if self.lcores is not None else "0")
        if not cores:
            raise InputError("no lcore selected: give lcores='1' or a non-zero core mask")
        have = os.cpu_count() or 1
        bad = [c for c in cores if c >= have]
        if bad:
            raise InputError(f"lcore(s) {bad} do not exist: this machine has CPUs 0..{have - 1}")
        return cores

    def validate(self, ports: list[Port]) -> "EalOptions":
        if self.lcores is not None and self.coremask is not None:
            raise InputError("give either lcores (-l) or coremask (-c), not both")
        self.lcore_ids()
        if self.memory_channels is not None and not (1 <= int(self.memory_channels) <= 32):
            raise InputError(f"memory channels {self.memory_channels}: 1..32")
        if not (64 <= int(self.memory_mb) <= 1 << 20):
            raise InputError(f"memory {self.memory_mb} MB: give at least 64 MB (l2fwd's mbuf pool needs ~20 MB)")
        if self.use_hugepages(ports):
            hp = hugepages()
            need = int(self.memory_mb) * 1024 // max(1, hp.get("Hugepagesize", 2048))
            if hp.get("HugePages_Free", 0) < need:
                raise InputError(
                    f"hugepages asked for {self.memory_mb} MB, but only {hp.get('HugePages_Free', 0)} pages of "
                    f"{hp.get('Hugepagesize', 2048)} kB are free: reserve them (e.g. `echo {need} > "
                    "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`) or set hugepages=False")
        return self

    def use_hugepages(self, ports: list[Port]) -> bool:
        if self.hugepages is None:
            return any(p.kind == "pci" for p in ports)
        return bool(self.hugepages)

    def args(self, ports: list[Port], prefix: str) -> list[str]:
        a = ["-c", str(self.coremask)] if self.coremask is not None else ["-l", str(self.lcores)]
        if self.memory_channels is not None:
            a += ["-n", str(int(self.memory_channels))]
        a += ["--file-prefix", prefix, "-m", str(int(self.memory_mb))]
        if not self.use_hugepages(ports):
            a.append("--no-huge")
        if not any(p.kind == "pci" for p in ports):
            a.append("--no-pci")
        if self.log_level:
            a += ["--log-level", self.log_level]
        for i, p in enumerate(ports):
            a += p.eal_args(i)
        return a + [str(x) for x in self.extra]


@dataclass
class L2fwdOptions:
    """l2fwd's application options (what comes after `--`)."""

    portmask: int = 0x3  # -p: ports to forward between (pairs 0<->1, 2<->3, ...)
    queues_per_lcore: int | None = None  # -q: ports one lcore serves; None: enough for the lcores given
    stats_period_s: int = 1  # -T: print statistics every N s (0: never; labkit then sees no counts)
    mac_updating: bool = True  # rewrite dst MAC to 02:00:00:00:00:<tx port> and src to the tx port's
    promiscuous: bool = False  # -P
    portmap: list | None = None  # --portmap pairs, e.g. [(0, 1)]

    def ports_in_mask(self) -> list[int]:
        return [i for i in range(int(self.portmask).bit_length()) if int(self.portmask) >> i & 1]

    def validate(self, nports: int, nlcores: int) -> "L2fwdOptions":
        if not isinstance(self.portmask, int) or self.portmask <= 0:
            raise InputError(f"port mask {self.portmask!r}: give a positive bit mask, e.g. 0x3 for ports 0 and 1")
        enabled = self.ports_in_mask()
        missing = [p for p in enabled if p >= nports]
        if missing:
            raise InputError(
                f"port mask {self.portmask:#x} names port(s) {missing}, but only {nports} port(s) are given "
                f"(ports 0..{nports - 1}): use port mask {(1 << nports) - 1:#x} or give more ports")
        q = self.queues_per_lcore
        if q is not None:
            if not isinstance(q, int) or not (1 <= q <= 16):
                raise InputError(f"queues per lcore {q!r}: 1..16 (l2fwd's -q)")
            if len(enabled) > q * nlcores:
                raise InputError(
                    f"{len(enabled)} port(s) in the mask but {nlcores} lcore(s) x {q} queue(s) per lcore serve only "
                    f"{q * nlcores}: l2fwd would exit with 'Not enough cores'. Use queues_per_lcore="
                    f"{-(-len(enabled) // nlcores)} (-q), or give more lcores")
        if not isinstance(self.stats_period_s, int) or not (0 <= self.stats_period_s < 86400):
            raise InputError(f"statistics period {self.stats_period_s!r}: whole seconds 0..86399 (l2fwd's -T)")
        if self.portmap:
            for pair in self.portmap:
                if len(pair) != 2 or any(p not in enabled for p in pair):
                    raise InputError(f"port pair {pair}: both ports must be in the port mask {self.portmask:#x}")
        return self

    def args(self, nlcores: int) -> list[str]:
        q = self.queues_per_lcore or -(-len(self.ports_in_mask()) // nlcores)
        a = ["-p", f"{int(self.portmask):#x}", "-q", str(q), "-T", str(int(self.stats_period_s))]
        if self.promiscuous:
            a.append("-P")
        if not self.mac_updating:
            a.append("--no-mac-updating")
        if self.portmap:
            a += ["--portmap", ",".join(f"({a_},{b_})" for a_, b_ in self.portmap)]
        return a


def parse_command_line(cmdline: str) -> tuple[EalOptions, L2fwdOptions]:
    """An l2fwd command line as people write it (`-c 1 -n 1 -- -q 1 -p 1`), as options.
    Ports (--vdev/-a) are not taken from it: give them as `Port`s."""
    words = shlex.split(cmdline)
    if words and os.path.basename(words[0]).startswith(("l2fwd", "dpdk-l2fwd")):
        words = words[1:]
    if "--" in words:
        cut = words.index("--")
        eal_w, app_w = words[:cut], words[cut + 1:]
    else:
        eal_w, app_w = words, []
    eal = EalOptions(lcores=None)
    it = iter(eal_w)
    for w in it:
        if w == "-c":
            eal.coremask = next(it, "")
        elif w == "-l":
            eal.lcores = next(it, "")
        elif w == "-n":
            eal.memory_channels = int(next(it, "0"))
        elif w == "-m":
            eal.memory_mb = int(next(it, "0"))
        elif w == "--file-prefix":
            eal.file_prefix = next(it, "")
        elif w == "--no-huge":
            eal.hugepages = False
        elif w == "--no-pci":
            pass
        elif w.startswith("--vdev") or w in ("-a", "-w"):
            raise InputError(f"{w!r} in the command line: give ports as labkit Ports (Port.af_packet(iface), "
                             "Port.pci('0000:3b:00.0')), not as EAL arguments")
        else:
            eal.extra.append(w)
    if eal.coremask is None and eal.lcores is None:
        eal.lcores = "1"
    app = L2fwdOptions(queues_per_lcore=1, stats_period_s=10)  # l2fwd's own defaults
    it = iter(app_w)
    for w in it:
        if w == "-p":
            app.portmask = int(next(it, "0"), 16)
        elif w == "-q":
            app.queues_per_lcore = int(next(it, "0"))
        elif w == "-T":
            app.stats_period_s = int(next(it, "0"))
        elif w == "-P":
            app.promiscuous = True
        elif w == "--no-mac-updating":
            app.mac_updating = False
        elif w == "--portmap":
            app.portmap = [tuple(int(x) for x in m) for m in re.findall(r"\((\d+),(\d+)\)", next(it, ""))]
        else:
            raise InputError(f"l2fwd option {w!r} is unknown: l2fwd takes -p, -q, -T, -P, --no-mac-updating, --portmap")
    return eal, app


def l2fwd_mac(port: int) -> str:
    """The destination MAC l2fwd writes on frames it sends out of PORT (MAC updating on)."""
    return f"02:00:00:00:00:{port:02x}"


# ---------------------------------------------------------------- runtime directories
_prefix_counter = itertools.count()
_prefix_lock = threading.Lock()


def file_prefix(app: str) -> str:
    """A unique EAL --file-prefix: the labkit run's prefix, the app, a counter."""
    run = lifecycle.current_run()
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
    live = lifecycle.live_prefixes()
    return [d for d in runtime_dirs() if lifecycle.PREFIX_RE.match(os.path.basename(d))
            and os.path.basename(d)[:6] not in live]


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


# ---------------------------------------------------------------- statistics
@dataclass
class PortStats:
    sent: int
    received: int
    dropped: int


_BLOCK_RE = re.compile(r"Port statistics =+(.*?)Aggregate statistics =+.*?Total packets dropped:\s*\d+", re.S)
_PORT_RE = re.compile(r"Statistics for port (\d+) -+\s*Packets sent:\s*(\d+)\s*Packets received:\s*(\d+)\s*"
                      r"Packets dropped:\s*(\d+)", re.S)


def parse_stats(output: str) -> list[dict[int, PortStats]]:
    """Every complete statistics block l2fwd printed, oldest first: {port: PortStats}.
    The counters are cumulative since l2fwd started."""
    blocks = []
    for m in _BLOCK_RE.finditer(output):
        blocks.append({int(p): PortStats(int(s), int(r), int(d)) for p, s, r, d in _PORT_RE.findall(m.group(1))})
    return blocks


@dataclass
class Resources:
    """What a DPDK process took from the machine."""

    cpu_seconds: float  # user + system, all its threads
    wall_seconds: float
    lcores: int
    busy_cores: float  # cpu_seconds / wall_seconds: ~1 per polling lcore, traffic or not
    rss_mb: float  # resident memory now
    peak_rss_mb: float
    memory_mb: int  # what EAL was told to reserve (-m)
    hugepages: bool
    hugepages_used: int  # pages taken from the machine while it ran
    hugepage_kb: int

    def as_dict(self) -> dict:
        return asdict(self)


def _proc_status(pid: int) -> dict:
    out = {}
    text = _read(Path(f"/proc/{pid}/status")) or ""
    for line in text.splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------- l2fwd
class L2fwd:
    """DPDK's l2fwd running on HOST over PORTS. A context manager: entering builds (if
    needed), starts it and waits until it forwards; leaving stops and reaps it and
    removes its runtime directory."""

    def __init__(self, host, ports: list, eal: EalOptions | None = None, app: L2fwdOptions | None = None, *,
                 binary: str | Path | None = None, ready_timeout: float = 30.0):
        self.host = host
        self.ports = [p if isinstance(p, Port) else Port.af_packet(p) for p in ports]
        self.eal = eal or EalOptions()
        self.app = app or L2fwdOptions(portmask=(1 << len(self.ports)) - 1)
        self.binary = Path(binary) if binary else None
        self.ready_timeout = ready_timeout
        self.proc = None
        self.prefix = None
        self._hp0 = None
        self._t0 = None
        self._final: Resources | None = None
        self._output = ""
        self.validate()

    # ---- checks, before anything runs
    def validate(self) -> None:
        if not self.ports:
            raise InputError("l2fwd needs at least one port: give Port.af_packet(iface) or Port.pci(address)")
        kinds = {p.kind for p in self.ports}
        bad = kinds - set(PORT_KINDS)
        if bad:
            raise InputError(f"port kind(s) {sorted(bad)}: choose from {PORT_KINDS}")
        if "pci" in kinds and len(kinds) > 1:
            raise InputError("mixing PCI and virtual ports makes DPDK's port numbering depend on probe order: "
                             "use only PCI ports or only virtual ones")
        for p in self.ports:
            if p.kind == "pci":
                check_pci_address(p.name)
            else:
                self._check_iface(p.name)
        if len({p.name for p in self.ports}) != len(self.ports):
            raise InputError(f"a port is named twice: {[str(p) for p in self.ports]}")
        self.eal.validate(self.ports)
        self.app.validate(len(self.ports), len(self.eal.lcore_ids()))

    def _check_iface(self, name: str) -> None:
        with self.host.ipr() as ipr:
            if not ipr.link_lookup(ifname=name):
                names = sorted(l.get_attr("IFLA_IFNAME") for l in ipr.get_links())
                raise InputError(f"interface {name!r} does not exist on {self.host}; interfaces there: {', '.join(names)}")

    def argv(self, prefix: str = "PREFIX") -> list[str]:
        binary = str(self.binary or L2FWD_BUILD_DIR / "build" / "l2fwd")
        return [binary, *self.eal.args(self.ports, prefix), "--", *self.app.args(len(self.eal.lcore_ids()))]

    # ---- running
    def start(self) -> "L2fwd":
        if self.proc is not None:
            return self
        if self.binary is None:
            self.binary = build_l2fwd()
        self.prefix = self.eal.file_prefix or file_prefix("l2fwd")
        self._hp0 = hugepages()
        self._t0 = time.monotonic()
        self.proc = self.host.spawn(self.argv(self.prefix), name="l2fwd")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            out = self.proc.output()
            if "entering main loop" in out and ("done" in out.split("Checking link status", 1)[-1]):
                return
            if not self.proc.running:
                raise LabkitError(f"l2fwd exited ({self.proc.returncode}) before forwarding:\n{_tail(out)}"
                                  + _hint(out))
            time.sleep(0.05)
        raise LabkitError(f"l2fwd did not start forwarding within {self.ready_timeout:.0f} s:\n{_tail(self.proc.output())}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def output(self) -> str:
        if self.proc is not None:
            try:
                self._output = self.proc.output()
            except (OSError, ValueError):
                pass
        return self._output

    def stats(self) -> dict[int, PortStats]:
        """The latest statistics l2fwd printed ({} before the first period)."""
        blocks = parse_stats(self.output())
        return blocks[-1] if blocks else {}

    def next_stats(self, timeout: float | None = None) -> dict[int, PortStats]:
        """Wait for the next statistics block l2fwd prints (at most one period plus a margin)
        and return it: counts that include everything that happened before the call."""
        if self.app.stats_period_s <= 0:
            raise InputError("l2fwd runs with stats_period_s=0 and prints no statistics: use 1 or more")
        n = len(parse_stats(self.output()))
        deadline = time.monotonic() + (timeout or self.app.stats_period_s * 2 + 3)
        while time.monotonic() < deadline:
            blocks = parse_stats(self.output())
            if len(blocks) > n:  # printed (counters read and written in one printf) after the call
                return blocks[-1]
            if not self.running:
                raise LabkitError(f"l2fwd has exited ({self.proc.returncode}):\n{_tail(self.output())}")
            time.sleep(0.05)
        raise LabkitError(f"l2fwd printed no statistics within the wait:\n{_tail(self.output())}")

    def resources(self) -> Resources:
        """CPU time, memory and hugepages of the running (or finished) l2fwd."""
        if self._final is not None:
            return self._final
        if self.proc is None:
            raise LabkitError("l2fwd has not been started")
        st = _proc_status(self.proc.pid)
        hp = hugepages()
        used = max(0, (self._hp0 or {}).get("HugePages_Free", 0) - hp.get("HugePages_Free", 0))
        return Resources(cpu_seconds=self.proc.cpu_seconds(), wall_seconds=time.monotonic() - self._t0,
                         lcores=len(self.eal.lcore_ids()),
                         busy_cores=self.proc.cpu_seconds() / max(1e-9, time.monotonic() - self._t0),
                         rss_mb=st.get("VmRSS", 0) / 1024, peak_rss_mb=st.get("VmHWM", 0) / 1024,
                         memory_mb=int(self.eal.memory_mb), hugepages=self.eal.use_hugepages(self.ports),
                         hugepages_used=used, hugepage_kb=hp.get("Hugepagesize", 0))

    def stop(self) -> int | None:
        """SIGINT (l2fwd closes its ports), then SIGTERM, then SIGKILL; reaped; runtime
        directory removed. Harmless twice."""
        proc, rc = self.proc, None
        if proc is not None:
            if self._final is None and proc.running:
                try:
                    self._final = self.resources()
                except Exception:
                    self._final = None
            self.output()
            rc = proc.stop(grace=3)
            self.output()
            try:
                proc.close()
            except Exception:
                pass
        if self.prefix:
            remove_runtime_dir(self.prefix)
        return rc

    def __enter__(self) -> "L2fwd":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _tail(out: str, n: int = 15) -> str:
    lines = [l for l in out.replace("\x1b[2J", "").replace("\x1b[1;1H", "").splitlines() if l.strip()]
    return "\n".join(lines[-n:])


def _hint(out: str) -> str:
    if "Not enough cores" in out:
        return "\n-> more ports than lcores x queues per lcore: raise queues_per_lcore (-q) or give more lcores"
    if "Invalid portmask" in out:
        return "\n-> the port mask names ports DPDK did not find: check the ports given"
    if "Cannot init mbuf pool" in out or "Cannot allocate memory" in out:
        return "\n-> not enough memory for DPDK: raise memory_mb (-m) or reserve hugepages"
    if "No Ethernet ports" in out:
        return "\n-> DPDK found no port: check the interface names or the PCI driver binding"
    return ""
