"""A small Python model of the eBPF NAT (bpf/nat.c), written from its stated rules, not from
its code: given a frame and the NAT's configuration and flow state, what must come out.

The fuzz test runs the same frames through the real program (BPF_PROG_TEST_RUN) and
through this model and compares every byte. Checksums are computed here from scratch
over the rewritten packet; where the input checksum was already wrong, the output must
keep exactly the same error (an incremental update carries it), so the model computes
"from scratch, plus the input's error".

    m = NatModel("10.20.0.0/16", "198.51.100.1", (20000, 29999), static={"10.20.1.2": "198.51.100.10"})
    exp = m.outbound(frame, observed=out_frame)   # observed: to learn a new flow's port
    m.differences(exp, out_frame)                 # [] when the program did what the model says
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from labkit.bpf_enums import enum_names
from labkit.dataplanes import read_when_needed
from labkit.errors import InputError

#: OUTCOMES, the program's outcomes, in the order of its `stats` map: enum nat_outcome of
#: bpf/include/nat.h ("out_static", "out_snat_new", ..., "drop_rewrite_failed").
header, __getattr__ = read_when_needed(lambda: {"OUTCOMES": enum_names("nat.h", "nat_outcome", "NAT_")})
TCP, UDP, ICMP = 6, 17, 1
ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
ICMP_ERRORS = (3, 11, 12)  # destination unreachable, time exceeded, parameter problem
ETH, IP = 14, 20
L4 = ETH + IP
#: Offsets of the checksum fields in the L4 header, per protocol.
L4_CSUM = {TCP: 16, UDP: 6, ICMP: 2}
L4_HDR = {TCP: 20, UDP: 8, ICMP: 8}


def _ip(addr) -> int:
    return int(ipaddress.IPv4Address(addr))


def _sum16(data: bytes) -> int:
    """The one's-complement sum of DATA as a class mod 0xFFFF (0 and 0xFFFF are one value)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data)) % 0xFFFF


@dataclass
class Packet:
    """What the NAT reads of a frame (the model's own parser, after the stated rules)."""

    outcome: str | None = None  # set when parsing alone decides (not IPv4, malformed)
    saddr: int = 0
    daddr: int = 0
    proto: int = 0
    tot_len: int = 0
    options: bool = False
    fragment: bool = False
    has_l4: bool = False
    sport: int = 0  # TCP/UDP source port; ICMP echo identifier
    dport: int = 0
    icmp_type: int | None = None
    l4: int = L4  # where the L4 header starts in the frame (after the IPv4 options)
    later: bool = False  # a fragment other than the first: no L4 header
    ip_id: int = 0


def parse(frame: bytes) -> Packet:
    if len(frame) < ETH:
        return Packet("pass_malformed")
    if frame[12:14] != b"\x08\x00":
        return Packet("pass_not_ipv4")
    if len(frame) < L4:
        return Packet("pass_malformed")
    ver, ihl = frame[ETH] >> 4, frame[ETH] & 0x0F
    tot = struct.unpack("!H", frame[ETH + 2 : ETH + 4])[0]
    if ver != 4 or ihl < 5 or tot < ihl * 4 or tot + ETH > len(frame):
        return Packet("pass_malformed")
    p = Packet(None, _ip(frame[ETH + 12 : ETH + 16]), _ip(frame[ETH + 16 : ETH + 20]), frame[ETH + 9], tot)
    p.options = ihl > 5
    frag = struct.unpack("!H", frame[ETH + 6 : ETH + 8])[0]
    p.fragment, p.later = (frag & 0x3FFF) != 0, (frag & 0x1FFF) != 0
    p.ip_id = struct.unpack("!H", frame[ETH + 4 : ETH + 6])[0]
    p.l4 = l4 = ETH + ihl * 4
    if p.later:
        return p
    need = L4_HDR.get(p.proto)
    if need is not None and tot - ihl * 4 >= need:
        p.has_l4 = True
        if p.proto == ICMP:
            p.icmp_type = frame[l4]
            p.sport = struct.unpack("!H", frame[l4 + 4 : l4 + 6])[0]
        else:
            p.sport, p.dport = struct.unpack("!HH", frame[l4 : l4 + 4])
    return p


@dataclass
class Expected:
    """What the program must do with one frame."""

    outcome: str
    frame: bytes | None  # the frame that must come out (None: dropped)
    csum_fields: list = field(default_factory=list)  # (offset, is_udp) compared modulo +0/-0

    @property
    def dropped(self) -> bool:
        return self.frame is None


class ModelMismatch(AssertionError):
    """The program chose something the NAT's rules forbid (e.g. a port in use)."""


class NatModel:
    def __init__(
        self,
        inside_network: str,
        snat_address: str | None,
        port_range: tuple[int, int],
        static: dict | None = None,
        port_probes: int = 32,
    ):
        try:
            self.inside = ipaddress.IPv4Network(inside_network)
        except ValueError as exc:
            raise InputError(f"inside network {inside_network!r}: {exc}") from None
        self.snat = _ip(snat_address) if snat_address else 0
        self.port_min, self.port_max = port_range
        #: a new flow tries this many ports drawn at random
        self.port_probes = port_probes
        self.static_out = {_ip(i): _ip(o) for i, o in (static or {}).items()}
        self.static_in = {o: i for i, o in self.static_out.items()}
        #: (inside, remote, inside port, remote port or 0, proto) -> (nat addr, nat port)
        self.flows: dict[tuple, tuple[int, int]] = {}
        #: (remote, nat addr, remote port or 0, nat port, proto) -> (inside, inside port)
        self.reverse: dict[tuple, tuple[int, int]] = {}
        #: (source, destination, IP identifier, proto) of a translated first fragment -> the
        #: address it got (outbound: the SNAT address; inbound: the inside host)
        self.frags: dict[tuple, int] = {}

    # ------------------------------------------------------------ outbound
    def outbound(self, frame: bytes, observed: bytes | None = None) -> Expected:
        """What nat_egress must do with FRAME. For a new SNAT flow the program picks the
        port: pass its output as OBSERVED so the model learns (and checks) the choice."""
        p = parse(frame)
        if p.outcome:
            return Expected(p.outcome, frame)
        st = self.static_out.get(p.saddr)
        snat = st is None and self.snat and ipaddress.IPv4Address(p.saddr) in self.inside
        if st is None and not snat:
            return Expected("pass_no_rule", frame)
        if st is not None:  # stateless: every fragment gets the address
            if not (p.proto in (TCP, UDP, ICMP) and (p.has_l4 or p.later)):
                return Expected("drop_protocol", None)
            if (exp := self._icmp_error(frame, p, outbound=True, static_to=st)) is not None:
                return exp
            return self._rewrite(frame, p, "out_static", src=st)
        if p.later:  # the address its first fragment got, if that came first
            fk = (p.saddr, p.daddr, p.ip_id, p.proto)
            if fk not in self.frags:
                return Expected("drop_fragment", None)
            return self._rewrite(frame, p, "out_fragment", src=self.frags[fk])
        if (exp := self._icmp_error(frame, p, outbound=True)) is not None:
            return exp
        if not p.has_l4 or not (p.proto in (TCP, UDP) or (p.proto == ICMP and p.icmp_type == ICMP_ECHO)):
            return Expected("drop_protocol", None)
        key = (p.saddr, p.daddr, p.sport, 0 if p.proto == ICMP else p.dport, p.proto)
        if key in self.flows:
            nat_addr, nat_port = self.flows[key]
            outcome = "out_snat"
        else:
            if observed is None and self._no_port_possible(p):
                return Expected("drop_no_port", None)
            nat_addr, nat_port = self.snat, self._choose_port(p, observed)
            rkey = (p.daddr, self.snat, 0 if p.proto == ICMP else p.dport, nat_port, p.proto)
            self.flows[key] = (self.snat, nat_port)
            self.reverse[rkey] = (p.saddr, p.sport)
            outcome = "out_snat_new"
        if p.fragment:
            self.frags[(p.saddr, p.daddr, p.ip_id, p.proto)] = nat_addr
        return self._rewrite(frame, p, outcome, src=nat_addr, sport=nat_port)

    def _no_port_possible(self, p: Packet) -> bool:
        """Could a new flow find no port? The program tries port_probes ports drawn at
        random: all of them can be taken as soon as any port is taken for this remote (how
        likely is the program's luck; that it was possible is what the model checks)."""
        rport = 0 if p.proto == ICMP else p.dport
        return any(
            (p.daddr, self.snat, rport, port, p.proto) in self.reverse
            for port in range(self.port_min, self.port_max + 1)
        )

    def _choose_port(self, p: Packet, observed: bytes | None) -> int:
        rport = 0 if p.proto == ICMP else p.dport
        free = lambda port: (p.daddr, self.snat, rport, port, p.proto) not in self.reverse  # noqa: E731
        if observed is None:
            return next(x for x in range(self.port_min, self.port_max + 1) if free(x))
        if len(observed) < p.l4 + 6:
            raise ModelMismatch("a new SNAT flow's packet came out truncated")
        off = p.l4 + 4 if p.proto == ICMP else p.l4
        port = struct.unpack("!H", observed[off : off + 2])[0]
        if not self.port_min <= port <= self.port_max:
            raise ModelMismatch(f"new flow got port {port}, outside the range {self.port_min}-{self.port_max}")
        if not free(port):
            raise ModelMismatch(f"new flow got port {port}, which another flow to the same remote holds")
        return port

    # ------------------------------------------------------------ inbound
    def inbound(self, frame: bytes) -> Expected:
        """What nat_ingress must do with FRAME."""
        p = parse(frame)
        if p.outcome:
            return Expected(p.outcome, frame)
        if self.snat and p.daddr == self.snat:
            if p.later:
                fk = (p.saddr, p.daddr, p.ip_id, p.proto)
                if fk not in self.frags:
                    return Expected("pass_fragment", frame)
                return self._rewrite(frame, p, "in_fragment", dst=self.frags[fk])
            if (exp := self._icmp_error(frame, p)) is not None:
                return exp
            if not p.has_l4 or not (p.proto in (TCP, UDP) or (p.proto == ICMP and p.icmp_type == ICMP_ECHO_REPLY)):
                return Expected("pass_no_flow", frame)
            if p.proto == ICMP:
                rkey = (p.saddr, p.daddr, 0, p.sport, p.proto)
            else:
                rkey = (p.saddr, p.daddr, p.sport, p.dport, p.proto)
            if rkey not in self.reverse:
                return Expected("pass_no_flow", frame)
            inside, in_port = self.reverse[rkey]
            if p.fragment:
                self.frags[(p.saddr, p.daddr, p.ip_id, p.proto)] = inside
            if p.proto == ICMP:
                return self._rewrite(frame, p, "in_snat", dst=inside, sport=in_port)
            return self._rewrite(frame, p, "in_snat", dst=inside, dport=in_port)
        st = self.static_in.get(p.daddr)
        if st is None:
            return Expected("pass_no_rule", frame)
        if not (p.proto in (TCP, UDP, ICMP) and (p.has_l4 or p.later)):
            return Expected("drop_protocol", None)
        if (exp := self._icmp_error(frame, p, static_to=st)) is not None:
            return exp
        return self._rewrite(frame, p, "in_static", dst=st)

    # ------------------------------------------------------------ ICMP errors
    def _icmp_error(
        self, frame: bytes, p: Packet, outbound: bool = False, static_to: int | None = None
    ) -> Expected | None:
        """An ICMP error about a packet of a SNAT flow, the embedded header that packet as
        its receiver got it. Inbound: it left with the SNAT address and port as source, which
        become the inside host's again (outer destination too). Outbound (TCP/UDP): the
        inside host's error names itself as the packet's destination, which becomes the SNAT
        address and port (outer source too). Through a static mapping (STATIC_TO: the other
        side's address) only the addresses change, outcome in_static / out_static. Every
        checksum follows. None: not such an error (an ICMP error with IP options, or fragmented,
        counts as none)."""
        if not (p.proto == ICMP and p.icmp_type in ICMP_ERRORS and not p.options and not p.fragment):
            return None
        inner, l4 = L4 + 8, L4 + 8 + IP
        if len(frame) < l4 + 8 or p.tot_len < IP + 8 + IP + 8:
            return None
        if frame[inner] != 0x45 or struct.unpack("!H", frame[inner + 6 : inner + 8])[0] & 0x1FFF:
            return None
        at = inner + (16 if outbound else 12)  # the embedded address the NAT rewrites
        ours = _ip(frame[at : at + 4])
        if ours != (p.saddr if outbound else p.daddr):
            return None
        proto, theirs = frame[inner + 9], _ip(frame[inner + (12 if outbound else 16) :][:4])
        if proto not in (TCP, UDP, ICMP):
            return None
        csum_at = {ICMP: l4 + 2, UDP: l4 + 6}.get(proto, l4 + 16 if p.tot_len - 2 * IP - 8 >= 18 else None)
        if static_to is not None:
            port_at, from_port, found = None, 0, (static_to, 0)
            if proto == ICMP:
                csum_at = None  # an echo's checksum covers no address
        else:
            if proto == ICMP and outbound:
                return None
            port_at = l4 + 4 if proto == ICMP else l4 + (2 if outbound else 0)
            from_port = struct.unpack("!H", frame[port_at : port_at + 2])[0]
            if outbound:
                rport = struct.unpack("!H", frame[l4 : l4 + 2])[0]
                found = self.flows.get((ours, theirs, from_port, rport, proto))
            else:
                rport = 0 if proto == ICMP else struct.unpack("!H", frame[l4 + 2 : l4 + 4])[0]
                found = self.reverse.get((theirs, ours, rport, from_port, proto))
            if found is None:
                return None
        to, to_port = found
        out = bytearray(frame)
        end = ETH + p.tot_len
        icmp_err, ip_err, inner_err = _sum16(frame[L4:end]), _sum16(frame[ETH:L4]), _sum16(frame[inner:l4])
        outer_at = ETH + (12 if outbound else 16)
        out[outer_at : outer_at + 4] = struct.pack("!I", to)
        out[at : at + 4] = struct.pack("!I", to)
        if port_at is not None:
            out[port_at : port_at + 2] = struct.pack("!H", to_port)
        else:
            to_port = from_port
        fields = [(ETH + 10, False), (inner + 10, False), (L4 + 2, False)]
        for csum, (lo, hi), err in ((ETH + 10, (ETH, L4), ip_err), (inner + 10, (inner, l4), inner_err)):
            out[csum : csum + 2] = b"\0\0"
            out[csum : csum + 2] = struct.pack("!H", (err - _sum16(bytes(out[lo:hi]))) % 0xFFFF)
        old = struct.unpack("!H", frame[csum_at : csum_at + 2])[0] if csum_at is not None else 0
        if csum_at is not None and not (proto == UDP and old == 0):
            # the embedded L4 checksum, cut short with its packet: updated, not recomputed
            # (RFC 1624): it loses what its address (TCP/UDP) and port gained
            s_ = (~old & 0xFFFF) + (from_port ^ 0xFFFF) + to_port
            if proto != ICMP:
                s_ += _sum16(struct.pack("!I", to)) + (0xFFFF - _sum16(struct.pack("!I", ours)))
            new = (~(s_ % 0xFFFF)) & 0xFFFF
            if proto == UDP and new == 0:
                new = 0xFFFF
            out[csum_at : csum_at + 2] = struct.pack("!H", new)
            fields.append((csum_at, proto == UDP))
        out[L4 + 2 : L4 + 4] = b"\0\0"
        out[L4 + 2 : L4 + 4] = struct.pack("!H", (icmp_err - _sum16(bytes(out[L4:end]))) % 0xFFFF)
        if static_to is not None:
            return Expected("out_static" if outbound else "in_static", bytes(out), fields)
        return Expected("out_icmp_error" if outbound else "in_icmp_error", bytes(out), fields)

    # ------------------------------------------------------------ rewriting
    def _rewrite(
        self, frame: bytes, p: Packet, outcome: str, *, src=None, dst=None, sport=None, dport=None
    ) -> Expected:
        out = bytearray(frame)
        end, l4 = ETH + p.tot_len, p.l4
        pseudo_in = self._pseudo(frame, p)
        ip_err = _sum16(frame[ETH:l4])
        csum_off = None if p.later or p.proto not in L4_CSUM else l4 + L4_CSUM[p.proto]
        udp_none = p.proto == UDP and csum_off is not None and frame[csum_off : csum_off + 2] == b"\0\0"
        # the input's error: 0 (mod 0xFFFF) for a packet whose checksum verifies (a first
        # fragment's never does alone: its error is what the rest of the datagram adds)
        l4_err = _sum16(pseudo_in + frame[l4:end]) if csum_off is not None else None
        if src is not None:
            out[ETH + 12 : ETH + 16] = struct.pack("!I", src)
        if dst is not None:
            out[ETH + 16 : ETH + 20] = struct.pack("!I", dst)
        if p.proto == ICMP:
            if sport is not None:
                out[l4 + 4 : l4 + 6] = struct.pack("!H", sport)
        else:
            if sport is not None:
                out[l4 : l4 + 2] = struct.pack("!H", sport)
            if dport is not None:
                out[l4 + 2 : l4 + 4] = struct.pack("!H", dport)
        fields = [(ETH + 10, False)]
        # IPv4 header checksum (options included): from scratch, plus the input's error
        out[ETH + 10 : ETH + 12] = b"\0\0"
        out[ETH + 10 : ETH + 12] = struct.pack("!H", (ip_err - _sum16(bytes(out[ETH:l4]))) % 0xFFFF)
        if csum_off is not None and not udp_none:
            out[csum_off : csum_off + 2] = b"\0\0"
            others = _sum16(self._pseudo(bytes(out), p) + bytes(out[l4:end]))
            value = (l4_err - others) % 0xFFFF
            if p.proto == UDP and value == 0:
                value = 0xFFFF  # 0 means "no checksum" in UDP
            out[csum_off : csum_off + 2] = struct.pack("!H", value)
            fields.append((csum_off, p.proto == UDP))
        return Expected(outcome, bytes(out), fields)

    @staticmethod
    def _pseudo(frame: bytes, p: Packet) -> bytes:
        if p.proto not in (TCP, UDP):
            return b""  # the ICMP checksum covers the message only
        return frame[ETH + 12 : ETH + 20] + struct.pack("!BBH", 0, p.proto, p.tot_len - (p.l4 - ETH))

    # ------------------------------------------------------------ comparing
    @staticmethod
    def differences(expected: Expected, dropped: bool, observed: bytes) -> list[str]:
        """What differs between what the model expects and what the program did ([] = same).
        Checksum fields compare as one's-complement values (0x0000 and 0xFFFF are equal),
        except a UDP checksum, which must never become 0 ('none')."""
        if expected.dropped != dropped:
            return [
                f"expected {'a drop' if expected.dropped else 'the packet to pass'} ({expected.outcome}), "
                f"the program {'dropped' if dropped else 'passed'} it"
            ]
        if dropped:
            return []
        exp = expected.frame
        if len(exp) != len(observed):
            return [f"length {len(observed)} instead of {len(exp)}"]
        csum = {off: udp for off, udp in expected.csum_fields}
        diffs = []
        i = 0
        while i < len(exp):
            if i in csum:
                e, o = struct.unpack("!H", exp[i : i + 2])[0], struct.unpack("!H", observed[i : i + 2])[0]
                same = e == o if csum[i] else (e % 0xFFFF) == (o % 0xFFFF)
                if not same:
                    diffs.append(f"checksum at byte {i}: {o:#06x}, expected {e:#06x}")
                i += 2
                continue
            if exp[i] != observed[i]:
                diffs.append(f"byte {i}: {observed[i]:#04x}, expected {exp[i]:#04x}")
            i += 1
        return diffs[:8]
