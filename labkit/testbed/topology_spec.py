"""A topology as data: hosts, the links between them (veth pairs, or real interfaces) and
their addresses, checked before anything is built (`topology.Topology` builds it).

    spec = pair()                                   # snd -- rcv, one veth pair
    spec = TopologySpec(hosts=["a", "b"], links=[LinkSpec("a", "b", "10.0.0.1/24", "10.0.0.2/24")])
    spec.validate()                                 # names, addresses, the 15-character limit
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from labkit.addresses import check_interface, check_ip, check_mac
from labkit.errors import InputError
from labkit.testbed import runs

HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass
class LinkSpec:
    """A veth pair between hosts `a` and `b`, each end optionally addressed."""

    a: str
    b: str
    a_addr: str | None = None
    b_addr: str | None = None
    a_mac: str | None = None
    b_mac: str | None = None
    mtu: int = 1500
    a_name: str | None = None  # short interface names; default: host name + index
    b_name: str | None = None
    #: rx/tx queues of each end: one per sending CPU lets several CPUs deliver into the
    #: peer without sharing one 256-frame XDP ring
    queues: int = 1


@dataclass
class RealLink:
    """Real interfaces standing in for a link: `a_if` on the sending side, `b_if` on the
    receiving side (cabled to each other, or to a traffic generator). They live in the root
    namespace of this machine; hosts `a` and `b` then are the root namespace."""

    a: str
    b: str
    a_if: str | None
    b_if: str
    a_addr: str | None = None
    b_addr: str | None = None


@dataclass
class TopologySpec:
    hosts: list[str]
    links: list = field(default_factory=list)
    #: ethtool -K settings applied to every veth end, e.g. {"tx": "off"}; recorded in metadata.
    offloads: dict = field(default_factory=dict)
    #: IPv6 in the namespaces. Off by default: router solicitations and neighbour discovery
    #: would otherwise add stray packets to every counter an experiment reads.
    ipv6: bool = False
    #: hosts that forward IPv4 (routers, NATs, devices under test)
    forwarding: list = field(default_factory=list)
    #: static routes: (host, destination prefix or "default", gateway address)
    routes: list = field(default_factory=list)

    def validate(self, prefix_len: int = 6) -> None:
        """Check everything that can be checked without the kernel."""
        if not self.hosts:
            raise InputError("a topology needs at least one host")
        seen = set()
        for h in self.hosts:
            if not isinstance(h, str) or not HOST_NAME_RE.match(h):
                raise InputError(f"host name {h!r}: use lower-case letters and digits, starting with a letter")
            if h in seen:
                raise InputError(f"host {h!r} is named twice")
            seen.add(h)
            if prefix_len + 1 + len(h) > runs.IFNAMSIZ:
                raise InputError(f"host name {h!r} is too long: at most {runs.IFNAMSIZ - prefix_len - 1} characters")
        for h in self.forwarding:
            if h not in seen:
                raise InputError(f"forwarding host {h!r} is not among the hosts {self.hosts}")
        for r in self.routes:
            if len(r) != 3 or r[0] not in seen:
                raise InputError(f"route {r!r}: write (host, 'prefix/len' or 'default', gateway) with a known host")
            if r[1] != "default":
                check_interface(r[1])
            check_ip(r[2])
        names = set()
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if end not in seen:
                    raise InputError(f"link {i} names host {end!r}, which is not among the hosts {self.hosts}")
            for addr in (link.a_addr, link.b_addr):
                if addr is not None:
                    check_interface(addr)
            if isinstance(link, RealLink):
                for ifname in (link.a_if, link.b_if):
                    if ifname is not None:
                        check_real_ifname(ifname)
                continue
            for mac in (link.a_mac, link.b_mac):
                if mac is not None:
                    check_mac(mac)
            if not (isinstance(link.queues, int) and 1 <= link.queues <= 64):
                raise InputError(f"queues {link.queues!r} of link {link.a}-{link.b}: a whole number 1..64")
            if not (68 <= int(link.mtu) <= 65535):
                raise InputError(f"MTU {link.mtu} of link {link.a}-{link.b} is out of range 68..65535")
            for short in self._end_names(i, link):
                full = f"{'x' * prefix_len}-{short}"
                if len(full) > runs.IFNAMSIZ:
                    raise InputError(
                        f"interface name {short!r} becomes {len(full)} characters with the run prefix; "
                        f"Linux allows {runs.IFNAMSIZ}: use at most {runs.IFNAMSIZ - prefix_len - 1} characters"
                    )
                if short in names:
                    raise InputError(f"interface name {short!r} is used twice")
                names.add(short)

    def _end_names(self, i: int, link: LinkSpec) -> tuple[str, str]:
        count = {}
        for j, l in enumerate(self.links[: i + 1]):
            if isinstance(l, RealLink):
                continue
            for end in (l.a, l.b):
                count[end] = count.get(end, -1) + 1
            if j == i:
                return (link.a_name or f"{link.a}{count[link.a]}", link.b_name or f"{link.b}{count[link.b]}")
        raise AssertionError


def check_real_ifname(ifname: str) -> str:
    if not ifname or len(ifname) > runs.IFNAMSIZ or "/" in ifname or " " in ifname:
        raise InputError(f"interface name {ifname!r} is not a valid Linux interface name (1..15 characters)")
    if not os.path.exists(f"/sys/class/net/{ifname}"):
        have = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
        raise InputError(f"interface {ifname!r} does not exist on this machine; interfaces here: {', '.join(have)}")
    return ifname


def pair(
    sender: str = "snd",
    receiver: str = "rcv",
    *,
    sender_addr="10.11.0.1/24",
    receiver_addr="10.11.0.2/24",
    mtu: int = 1500,
    sender_if: str | None = None,
    receiver_if: str | None = None,
    offloads: dict | None = None,
    ipv6: bool = False,
    queues: int = 1,
) -> TopologySpec:
    """The two-host testbed most experiments use: a sender and a receiver, joined by a veth
    pair, or by real interfaces when `receiver_if` (and `sender_if`) name them."""
    if receiver_if or sender_if:
        if not receiver_if:
            raise InputError("sender_if is set but receiver_if is not: name the receiving interface too")
        link = RealLink(sender, receiver, sender_if, receiver_if, sender_addr if sender_if else None, receiver_addr)
    else:
        link = LinkSpec(sender, receiver, sender_addr, receiver_addr, mtu=mtu, queues=queues)
    return TopologySpec(hosts=[sender, receiver], links=[link], offloads=offloads or {}, ipv6=ipv6)
