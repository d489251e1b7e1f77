"""Traffic generators behind one interface.

    spec = TrafficSpec.between(topo.iface("snd"), topo.iface("rcv"), size=64, count=1_000_000)
    gen = traffic.generator("trafgen", topo.iface("snd"))
    offered = gen.send(spec)          # blocks; bounded by count and spec.timeout_s
    offered.pps, offered.packets

Backends register themselves in BACKENDS by name. Each says whether it can run here
(`available()`), with a reason that tells the user what to install or use instead.
Every backend is bounded in count and time and reaps what it starts.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field

from labkit import capabilities
from labkit.addresses import check_ip, check_mac
from labkit.errors import InputError, MissingDependency
from labkit.packets import FrameSpec, check_size

BACKENDS: dict[str, type["Generator"]] = {}
#: The order `generator("auto", ...)` tries backends in.
PREFERENCE = ["xdp", "xdp_loop", "trafgen", "pktgen", "testpmd"]


def register(cls):
    BACKENDS[cls.name] = cls
    return cls


@dataclass
class TrafficSpec:
    """What to send. `size` is the frame length in bytes without FCS (64 means a 64-byte
    frame as the interface sees it), 60..MTU+14."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    size: int = 64
    count: int = 100_000
    flows: int = 1  # distinct flows: source ports sport .. sport+flows-1
    proto: str = "udp"
    sport: int = 1024
    dport: int = 9
    rate_pps: float | None = None  # None: as fast as the generator can
    timeout_s: float = 60.0  # a generator never runs longer than this
    cpus: int = 1  # sending threads/CPUs, where the backend can use several
    mtu: int = 1500

    @classmethod
    def between(cls, src, dst, **kw) -> "TrafficSpec":
        """From a sending interface to a receiving one (topology.Interface objects)."""
        kw.setdefault("mtu", 1500)
        return cls(
            src_mac=src.mac, dst_mac=dst.mac, src_ip=src.address or "10.11.0.1", dst_ip=dst.address or "10.11.0.2", **kw
        )

    def validate(self) -> "TrafficSpec":
        check_mac(self.src_mac), check_mac(self.dst_mac)
        check_ip(self.src_ip), check_ip(self.dst_ip)
        check_size(self.size, self.mtu)
        if not isinstance(self.count, int) or self.count < 1:
            raise InputError(f"count {self.count!r}: send at least one packet (a whole number >= 1)")
        if not isinstance(self.flows, int) or self.flows < 1:
            raise InputError(f"flows {self.flows!r}: at least one flow (a whole number >= 1)")
        if self.sport + self.flows - 1 > 65535:
            raise InputError(f"flows {self.flows} from source port {self.sport} run past port 65535")
        if self.rate_pps is not None and self.rate_pps <= 0:
            raise InputError(f"rate {self.rate_pps} pps: give a positive rate, or None for as fast as possible")
        if self.timeout_s <= 0:
            raise InputError("timeout_s must be positive: every generator is bounded in time")
        if self.cpus < 1:
            raise InputError(f"cpus {self.cpus}: at least one")
        if self.proto not in ("udp", "tcp", "icmp"):
            raise InputError(f"protocol {self.proto!r}: choose udp, tcp or icmp")
        if ipaddress.ip_address(self.src_ip).version != ipaddress.ip_address(self.dst_ip).version:
            raise InputError("source and destination addresses are of different IP versions")
        return self

    def frame(self, flow: int = 0) -> FrameSpec:
        return FrameSpec(
            self.src_mac, self.dst_mac, self.src_ip, self.dst_ip, self.proto, self.sport + flow, self.dport, self.size
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Offered:
    """What a generator says it put on the wire."""

    generator: str
    packets: int
    bytes: int
    seconds: float
    cpu_seconds: float = float("nan")  # the generator's own CPU time
    per_cpu: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else float("nan")

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else float("nan")


class Generator(ABC):
    """A traffic generator sending out of `iface` (a topology.Interface) on its host."""

    name = "abstract"
    #: short description shown by `labkit doctor`
    description = ""

    def __init__(self, iface, **options):
        self.iface = iface
        self.host = iface.host
        self.options = options
        ok, why = self.available()
        if not ok:
            raise MissingDependency(f"traffic generator {self.name!r} cannot run here: {why}")

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, '') or (False, what is missing and what to do)."""

    @abstractmethod
    def send(self, spec: TrafficSpec) -> Offered:
        """Send spec.count packets (bounded by spec.timeout_s) and return what was offered."""

    def close(self) -> None:
        """Undo anything the generator set up (attachments, processes). Harmless twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def tool_file(text: str, name: str, suffix: str):
    """TEXT in a temporary file `labkit-NAME-...SUFFIX` that every user may read (a tool
    may drop its privileges), for a tool's configuration or script; removed on exit."""
    with tempfile.NamedTemporaryFile("w", prefix=f"labkit-{name}-", suffix=suffix, delete=False) as f:
        f.write(text)
    try:
        os.chmod(f.name, 0o644)
        yield f.name
    finally:
        os.unlink(f.name)


def choose(name: str = "auto", purpose: str = "load generator") -> str:
    """The backend NAME stands for: itself, or for 'auto' the first of PREFERENCE that can
    run here (each backend's `available()`, which asks labkit.capabilities' probes, never a
    version number). The choice and why are recorded for the run's metadata under PURPOSE."""
    _load_backends()
    if name != "auto":
        if name not in BACKENDS:
            raise InputError(f"traffic generator {name!r}: choose one of {sorted(BACKENDS)} or 'auto'")
        capabilities.chose(purpose, name, "asked for by name")
        return name
    reasons = []
    for cand in (c for c in PREFERENCE if c in BACKENDS):
        ok, why = BACKENDS[cand].available()
        if ok:
            refused = ", ".join(r.split(":")[0] for r in reasons)
            after = f", after {refused} refused ({'; '.join(reasons)})" if reasons else ""
            capabilities.chose(purpose, cand, "the fastest that works here" + after)
            return cand
        reasons.append(f"{cand}: {why}")
    raise MissingDependency("no traffic generator can run here:\n  " + "\n  ".join(reasons))


def generator(name: str, iface, purpose: str = "load generator", **options) -> Generator:
    """The backend NAME ('xdp', 'xdp_loop', 'trafgen', 'pktgen', 'testpmd', or 'auto': the
    first of PREFERENCE that works here) on IFACE; PURPOSE names what it serves in the run's
    record of choices."""
    return BACKENDS[choose(name, purpose)](iface, **options)


def backends_status() -> dict[str, tuple[bool, str]]:
    _load_backends()
    return {name: cls.available() for name, cls in BACKENDS.items()}


def _load_backends():
    from labkit.traffic import pktgen, testpmd, trafgen  # noqa: F401

    for backend in ("xdpgen", "xdploop"):
        with suppress(ImportError):
            __import__(f"labkit.traffic.{backend}")
