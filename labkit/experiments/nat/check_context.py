"""What the NAT's correctness checks share (`labkit.experiments.nat.checks` holds the checks
and their table): the `Context` of one variant's run, whose exchanges run once on first
use, and the typed `CheckResult` each check returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from labkit import packets
from labkit.dataplanes.nat import Nat
from labkit.experiments.nat.exchanges import tcp_many, tcp_transfer, udp_exchange, udp_fragmented
from labkit.experiments.nat.testbed import SERVER, NatLab

#: the kernel counters of checksum and header errors, per host
CSUM_COUNTERS = (("Ip", "InHdrErrors"), ("Udp", "InCsumErrors"), ("Tcp", "InCsumErrors"), ("Icmp", "InCsumErrors"))
CSUM_NAMES = [f"{p}:{n}" for p, n in CSUM_COUNTERS]  # as measure.snmp_probe names them


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: NAME, PASSED, what was EXPECTED and what was seen (DETAIL)."""

    name: str
    passed: bool
    expected: str
    detail: str

    def __post_init__(self):
        object.__setattr__(self, "passed", bool(self.passed))

    def to_dict(self, variant: str, offloads: str) -> dict:
        """The row the experiment keeps: check, ok, detail, offloads, variant."""
        return {"check": self.name, "ok": self.passed, "detail": self.detail, "offloads": offloads, "variant": variant}


@dataclass
class Context:
    """What the checks share: the lab, the NAT and the variant under test, the exchanges'
    outcomes (each run once, on first use) and what was read around the traffic."""

    lab: NatLab
    nat: Nat | None
    variant: str
    path: object = None  # what the variant's set-up yielded: the XDP fast path for 'xdp_nat'
    captured: list[packets.Parsed] = field(default_factory=list)  # the server's wire, parsed
    before: dict = field(default_factory=dict)  # CSUM_COUNTERS per host, before the traffic
    after: dict = field(default_factory=dict)
    ttl_expired: int = 0  # the server's InHdrErrors caused on purpose (expired TTLs)
    stats: dict | None = None  # the eBPF NAT's outcomes, read before the variant went
    fast: dict | None = None  # the XDP fast path's outcomes
    _tcp: dict = field(default_factory=dict, repr=False)

    @property
    def clients(self) -> range:
        return range(1, self.lab.clients + 1)

    @property
    def in_ebpf(self) -> bool:
        """The eBPF NAT translates (it has flows, mappings and counters to check)."""
        return self.variant != "iptables"

    @cached_property
    def udp(self) -> dict:
        return udp_exchange(self.lab)

    @property
    def udp_peers(self) -> list:
        return list(self.udp["seen"].values())

    def tcp(self, i: int) -> dict:
        if i not in self._tcp:
            self._tcp[i] = tcp_transfer(self.lab, i)
        return self._tcp[i]

    @cached_property
    def many(self) -> dict:
        return tcp_many(self.lab)

    @cached_property
    def big(self) -> dict:
        return udp_fragmented(self.lab)

    @cached_property
    def flows(self) -> list:
        return self.nat.flows()

    @property
    def inbound(self) -> list[packets.Parsed]:
        """What the server's wire carried to the server."""
        return [p for p in self.captured if p.dst_ip == SERVER]


def line_of(cp, index: int) -> str:
    """Line INDEX of a command's output (the nearest there is), or its error output."""
    lines = cp.stdout.strip().splitlines()
    return lines[max(-len(lines), min(index, len(lines) - 1))] if lines else cp.stderr.strip()
