"""Build and parse the frames experiments send: Ethernet / IPv4 or IPv6 / UDP, TCP or ICMP,
with valid checksums. Pure Python, no kernel: used by generators, tests, program cost
measurement and the NAT model."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from labkit.addresses import check_ip, check_mac
from labkit.errors import InputError

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_HLEN = 14
MIN_FRAME = 60  # without FCS; the NIC pads to 64 on the wire
PROTO = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in check_mac(mac).split(":"))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of DATA."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_header(src: str, dst: str, proto: int, payload_len: int) -> bytes:
    """An IPv4 header without options (identifier 0, don't fragment, TTL 64), its checksum set."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        0,
        0x4000,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


def l4_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    c = checksum(_pseudo(src, dst, proto, len(segment)) + segment)
    return 0xFFFF if (proto == 17 and c == 0) else c


@dataclass
class FrameSpec:
    """One frame's fields. `size` is the frame length without FCS (60..MTU+14)."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    proto: str = "udp"
    sport: int = 9
    dport: int = 9
    size: int = 60

    def validate(self, mtu: int = 1500) -> None:
        check_mac(self.src_mac), check_mac(self.dst_mac)
        check_ip(self.src_ip), check_ip(self.dst_ip)
        if ipaddress.ip_address(self.src_ip).version != ipaddress.ip_address(self.dst_ip).version:
            raise InputError(f"source {self.src_ip} and destination {self.dst_ip} are of different IP versions")
        if self.proto not in ("udp", "tcp", "icmp"):
            raise InputError(f"protocol {self.proto!r}: choose udp, tcp or icmp")
        check_size(self.size, mtu)
        for p in (self.sport, self.dport):
            if not 0 <= int(p) <= 65535:
                raise InputError(f"port {p} is out of range 0..65535")


def check_size(size: int, mtu: int = 1500) -> int:
    """Frame size (bytes, without FCS): at least 60, at most MTU + 14."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise InputError(f"packet size {size!r} must be a whole number of bytes")
    if size < MIN_FRAME:
        raise InputError(
            f"packet size {size} is below {MIN_FRAME} bytes, the Ethernet minimum (64 on the wire with FCS)"
        )
    if size > mtu + ETH_HLEN:
        raise InputError(
            f"packet size {size} is above the link's MTU ({mtu}) plus the 14-byte Ethernet header; "
            f"use at most {mtu + ETH_HLEN}, or raise the MTU"
        )
    return size


def build(spec: FrameSpec, payload_fill: bytes = b"\0") -> bytes:
    """A complete frame of exactly spec.size bytes (padded), with valid checksums."""
    v6 = ipaddress.ip_address(spec.src_ip).version == 6
    l3_len = spec.size - ETH_HLEN
    ip_hlen = 40 if v6 else 20
    proto = PROTO["icmpv6" if (v6 and spec.proto == "icmp") else spec.proto]
    l4_len = l3_len - ip_hlen
    hlen = 20 if spec.proto == "tcp" else 8
    if l4_len < hlen:
        raise InputError(f"packet size {spec.size} is too small for {'IPv6' if v6 else 'IPv4'}/{spec.proto.upper()}")
    payload = (payload_fill * (l4_len - hlen))[: l4_len - hlen]
    if spec.proto == "udp":
        seg = struct.pack("!HHHH", spec.sport, spec.dport, l4_len, 0) + payload
        c = l4_checksum(spec.src_ip, spec.dst_ip, proto, seg)
        seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    elif spec.proto == "tcp":
        seg = struct.pack("!HHIIBBHHH", spec.sport, spec.dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload
        c = l4_checksum(spec.src_ip, spec.dst_ip, proto, seg)
        seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    else:  # echo request, identifier = sport
        seg = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, spec.sport, 1) + payload
        c = l4_checksum(spec.src_ip, spec.dst_ip, proto, seg) if v6 else checksum(seg)
        seg = seg[:2] + struct.pack("!H", c) + seg[4:]
    if v6:
        ip = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            l4_len,
            proto,
            64,
            ipaddress.IPv6Address(spec.src_ip).packed,
            ipaddress.IPv6Address(spec.dst_ip).packed,
        )
        ethertype = ETH_P_IPV6
    else:
        ip = ipv4_header(spec.src_ip, spec.dst_ip, proto, l4_len)
        ethertype = ETH_P_IP
    return mac_bytes(spec.dst_mac) + mac_bytes(spec.src_mac) + struct.pack("!H", ethertype) + ip + seg


@dataclass
class Parsed:
    dst_mac: str
    src_mac: str
    ethertype: int
    src_ip: str | None = None
    dst_ip: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    ip_checksum_ok: bool | None = None
    #: None where one frame cannot tell: not IPv4, or an IPv4 fragment (the checksum covers
    #: the whole datagram)
    l4_checksum_ok: bool | None = None
    #: an IPv4 fragment (more fragments follow, or a non-zero offset); only the first
    #: (offset 0) carries the ports
    fragment: bool | None = None


def _fmt_mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse(frame: bytes) -> Parsed:
    """Parse an Ethernet/IPv4 frame and check its checksums (None where not applicable).
    A frame too short for its Ethernet header parses with only what it holds."""
    if len(frame) < ETH_HLEN:
        return Parsed(_fmt_mac(frame[0:6]), _fmt_mac(frame[6:12]), 0)
    p = Parsed(_fmt_mac(frame[0:6]), _fmt_mac(frame[6:12]), struct.unpack("!H", frame[12:14])[0])
    if p.ethertype != ETH_P_IP or len(frame) < 34:
        return p
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    p.src_ip = str(ipaddress.IPv4Address(ip[12:16]))
    p.dst_ip = str(ipaddress.IPv4Address(ip[16:20]))
    p.proto = ip[9]
    p.ip_checksum_ok = checksum(ip[:ihl]) == 0
    flags_offset = struct.unpack("!H", ip[6:8])[0]
    p.fragment = bool(flags_offset & 0x3FFF)  # MF, or an offset
    if flags_offset & 0x1FFF:
        return p  # a later fragment: no L4 header
    seg = ip[ihl:total]
    whole = not p.fragment  # a first fragment's L4 checksum covers the whole datagram
    if p.proto in (6, 17) and len(seg) >= 4:
        p.sport, p.dport = struct.unpack("!HH", seg[:4])
        if p.proto == 17 and len(seg) >= 8 and seg[6:8] == b"\0\0":
            p.l4_checksum_ok = True  # UDP over IPv4: checksum 0 means "none"
        elif whole:
            p.l4_checksum_ok = checksum(_pseudo(p.src_ip, p.dst_ip, p.proto, len(seg)) + seg) == 0
    elif p.proto == 1 and len(seg) >= 8:
        p.sport = struct.unpack("!H", seg[4:6])[0]  # echo identifier
        p.l4_checksum_ok = checksum(seg) == 0 if whole else None
    return p
