"""l2fwd run on a host: started, its statistics read, what it takes from the machine
accounted, stopped with SIGINT then SIGTERM then SIGKILL, and always reaped.
"""

from __future__ import annotations

import re
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from labkit.dpdk.afxdp import remove_pmd_programs, socket_mode, xdp_program_id
from labkit.dpdk.build import build_dir_for, build_l2fwd
from labkit.dpdk.options import PORT_KINDS, EalOptions, L2fwdOptions, Port, check_pci_address, hugepages, proc_numbers
from labkit.dpdk.runtime import file_prefix, locked_memory_hint, remove_runtime_dir
from labkit.dpdk.sockets import socket_drops
from labkit.errors import InputError, LabkitError


@dataclass
class PortStats:
    sent: int
    received: int
    dropped: int


_BLOCK_RE = re.compile(r"Port statistics =+(.*?)Aggregate statistics =+.*?Total packets dropped:\s*\d+", re.S)
_PORT_RE = re.compile(
    r"Statistics for port (\d+) -+\s*Packets sent:\s*(\d+)\s*Packets received:\s*(\d+)\s*"
    r"Packets dropped:\s*(\d+)",
    re.S,
)


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


class L2fwd:
    """DPDK's l2fwd running on HOST over PORTS. A context manager: entering builds (if
    needed), starts it and waits until it forwards; leaving stops and reaps it and
    removes its runtime directory."""

    def __init__(
        self,
        host,
        ports: list,
        eal: EalOptions | None = None,
        app: L2fwdOptions | None = None,
        *,
        binary: str | Path | None = None,
        ready_timeout: float = 30.0,
    ):
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
        self.xdp_programs: dict = {}  # {ifname: id} of the programs net_af_xdp ports attached
        self._packet_totals = {"tp_packets": 0, "tp_drops": 0}  # packet sockets' counters reset when read
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
            raise InputError(
                "mixing PCI and virtual ports makes DPDK's port numbering depend on probe order: "
                "use only PCI ports or only virtual ones"
            )
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
                raise InputError(
                    f"interface {name!r} does not exist on {self.host}; interfaces there: {', '.join(names)}"
                )
        if any(p.kind == "af_xdp" and p.name == name for p in self.ports):
            prog = xdp_program_id(self.host, name)
            if prog is not None:
                raise InputError(
                    f"{name} on {self.host} already has an XDP program (id {prog}): a net_af_xdp port "
                    "attaches its own; detach it first, or run `labkit clean` if a crashed run left it"
                )

    def socket_modes(self) -> dict:
        """{port: 'copy' | 'zero-copy' | 'unknown'} of the net_af_xdp ports."""
        return {str(p): socket_mode(self.host, p.name, dict(p.devargs)) for p in self.ports if p.kind == "af_xdp"}

    def argv(self, prefix: str = "PREFIX") -> list[str]:
        binary = str(self.binary or build_dir_for(self.app.ring_size) / "build" / "l2fwd")
        return [binary, *self.eal.args(self.ports, prefix), "--", *self.app.args(len(self.eal.lcore_ids()))]

    # ---- running
    def start(self) -> "L2fwd":
        if self.proc is not None:
            return self
        if self.binary is None:
            self.binary = build_l2fwd(ring_size=self.app.ring_size)
        self.prefix = self.eal.file_prefix or file_prefix("l2fwd")
        self._hp0 = hugepages()
        self._t0 = time.monotonic()
        self.proc = self.host.spawn(self.argv(self.prefix), name="l2fwd")
        try:
            self._wait_ready()
            self.xdp_programs = {p.name: xdp_program_id(self.host, p.name) for p in self.ports if p.kind == "af_xdp"}
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
                raise LabkitError(
                    f"l2fwd exited ({self.proc.returncode}) before forwarding:\n{_tail(out)}" + _hint(out)
                )
            time.sleep(0.05)
        raise LabkitError(
            f"l2fwd did not start forwarding within {self.ready_timeout:.0f} s:\n{_tail(self.proc.output())}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def output(self) -> str:
        if self.proc is not None:
            with suppress(OSError, ValueError):
                self._output = self.proc.output()
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

    def socket_drops(self) -> dict:
        """Cumulative kernel drop counters of l2fwd's sockets (labkit.dpdk.sockets): for
        net_af_xdp ports 'xsk_rx_dropped' (of which 'xsk_fill_ring_empty': l2fwd had not
        returned buffers), 'xsk_rx_ring_full', 'xsk_tx_invalid'; for net_af_packet ports
        'packet_drops' (the ring had no room); 'socket_dropped' the sum of what never reached
        l2fwd. {} where the kernel does not say."""
        if not self.running:
            return {}
        d = socket_drops(self.proc.pid)
        out = {}
        if "xsk" in d:
            x = d["xsk"]
            out.update(
                {
                    "xsk_rx_dropped": x["rx_dropped"],
                    "xsk_fill_ring_empty": x["rx_fill_ring_empty_descs"],
                    "xsk_rx_ring_full": x["rx_ring_full"],
                    "xsk_tx_invalid": x["tx_invalid_descs"],
                }
            )
        if "packet" in d:
            for k in self._packet_totals:  # the kernel reset them when read: keep the running totals
                self._packet_totals[k] += d["packet"][k]
            out["packet_drops"] = self._packet_totals["tp_drops"]
        if out:
            out["socket_dropped"] = (
                out.get("xsk_rx_dropped", 0) + out.get("xsk_rx_ring_full", 0) + out.get("packet_drops", 0)
            )
        return out

    def resources(self) -> Resources:
        """CPU time, memory and hugepages of the running (or finished) l2fwd."""
        if self._final is not None:
            return self._final
        if self.proc is None:
            raise LabkitError("l2fwd has not been started")
        st = proc_numbers(f"/proc/{self.proc.pid}/status", "VmRSS", "VmHWM")
        hp = hugepages()
        used = max(0, (self._hp0 or {}).get("HugePages_Free", 0) - hp.get("HugePages_Free", 0))
        return Resources(
            cpu_seconds=self.proc.cpu_seconds(),
            wall_seconds=time.monotonic() - self._t0,
            lcores=len(self.eal.lcore_ids()),
            busy_cores=self.proc.cpu_seconds() / max(1e-9, time.monotonic() - self._t0),
            rss_mb=st.get("VmRSS", 0) / 1024,
            peak_rss_mb=st.get("VmHWM", 0) / 1024,
            memory_mb=int(self.eal.memory_mb),
            hugepages=self.eal.use_hugepages(self.ports),
            hugepages_used=used,
            hugepage_kb=hp.get("Hugepagesize", 0),
        )

    def stop(self) -> int | None:
        """SIGINT (l2fwd closes its ports), then SIGTERM, then SIGKILL; reaped; runtime
        directory removed. Harmless twice."""
        proc, rc = self.proc, None
        if proc is not None:
            if self._final is None and proc.running:
                with suppress(Exception):
                    self._final = self.resources()
            self.output()
            rc = proc.stop(grace=3)
            self.output()
            with suppress(Exception):
                proc.close()
        if self.xdp_programs:  # closed ports took theirs off; a killed l2fwd leaves them
            with suppress(Exception):  # the namespace is gone
                remove_pmd_programs(self.host, self.xdp_programs)
            self.xdp_programs = {}
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
    if locked_memory_hint(out):
        return locked_memory_hint(out)
    if "Not enough cores" in out:
        return "\n-> more ports than lcores x queues per lcore: raise queues_per_lcore (-q) or give more lcores"
    if "Invalid portmask" in out:
        return "\n-> the port mask names ports DPDK did not find: check the ports given"
    if "Cannot init mbuf pool" in out or "Cannot allocate memory" in out:
        return "\n-> not enough memory for DPDK: raise memory_mb (-m) or reserve hugepages"
    if "No Ethernet ports" in out:
        return "\n-> DPDK found no port: check the interface names or the PCI driver binding"
    return ""
