"""DPDK ports and options (EAL and l2fwd's own), every one checked before anything runs."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from labkit.dpdk.build import _read, check_ring_size
from labkit.errors import InputError

#: drivers a PCI device can be bound to for DPDK to drive it (mlx5 works with its kernel driver)
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio", "mlx5_core", "mlx4_core")
PCI_RE = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
PORT_KINDS = ("af_packet", "af_xdp", "pci")


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
        """net_af_xdp on IFACE; DEVARGS such as busy_budget=0 (busy polling off), force_copy=1
        (see labkit.dpdk.afxdp)."""
        from labkit.dpdk.afxdp import check_devargs

        check_devargs(devargs)
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
        have = sorted(
            p.name
            for p in Path("/sys/bus/pci/devices").glob("*")
            if _read(p / "class") and _read(p / "class").startswith("0x02")
        )
        raise InputError(
            f"PCI device {full} does not exist on this machine; network devices here: "
            f"{', '.join(have) or 'none'} (see `dpdk-devbind.py --status`)"
        )
    driver = os.path.basename(os.readlink(dev / "driver")) if (dev / "driver").exists() else None
    if driver not in DPDK_DRIVERS:
        raise InputError(
            f"PCI device {full} is bound to {driver or 'no driver'}: bind it to vfio-pci for DPDK "
            f"(`dpdk-devbind.py -b vfio-pci {full}`), or use a virtual port (af_packet/af_xdp) "
            "on its Linux interface"
        )
    return full


def proc_numbers(path: str, *prefixes: str) -> dict:
    """{name: number} of the `name: number ...` lines of /proc file PATH that start with one
    of PREFIXES ({} where it cannot be read)."""
    lines = (line.split(":", 1) for line in (_read(Path(path)) or "").splitlines() if line.startswith(prefixes))
    return {k: int(v.split()[0]) for k, v in lines}


def hugepages() -> dict:
    """The machine's hugepage counters from /proc/meminfo (pages, and the page size in kB)."""
    return proc_numbers("/proc/meminfo", "HugePages_", "Hugepagesize")


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
                    "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`) or set hugepages=False"
                )
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
    ring_size: int | None = None  # descriptors per RX/TX queue (l2fwd's own: 1024; built apart)

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
                f"(ports 0..{nports - 1}): use port mask {(1 << nports) - 1:#x} or give more ports"
            )
        q = self.queues_per_lcore
        if q is not None:
            if not isinstance(q, int) or not (1 <= q <= 16):
                raise InputError(f"queues per lcore {q!r}: 1..16 (l2fwd's -q)")
            if len(enabled) > q * nlcores:
                raise InputError(
                    f"{len(enabled)} port(s) in the mask but {nlcores} lcore(s) x {q} queue(s) per lcore serve only "
                    f"{q * nlcores}: l2fwd would exit with 'Not enough cores'. Use queues_per_lcore="
                    f"{-(-len(enabled) // nlcores)} (-q), or give more lcores"
                )
        check_ring_size(self.ring_size)
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
        eal_w, app_w = words[:cut], words[cut + 1 :]
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
            raise InputError(
                f"{w!r} in the command line: give ports as labkit Ports (Port.af_packet(iface), "
                "Port.pci('0000:3b:00.0')), not as EAL arguments"
            )
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
