"""Crafted frames for the exercises' checks: well-formed ones, and the awkward ones a data
path meets (truncated, IP options, VLAN tags, IPv6, ARP). Every function returns bytes.

    frames.udp(dport=53)                  # Ethernet / IPv4 / UDP, valid checksums
    frames.truncated(frames.udp(), 20)    # its first 20 bytes: the IPv4 header is cut
"""

from __future__ import annotations

import struct

from labkit import packets

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SRC_IP, DST_IP = "10.11.0.1", "10.11.0.2"

#: (first byte, last byte + 1, name) of the fields of Ethernet / IPv4 (no options) / UDP-or-TCP ports
LAYOUT = [
    (0, 6, "destination MAC"),
    (6, 12, "source MAC"),
    (12, 14, "EtherType"),
    (14, 15, "IPv4 version/IHL"),
    (15, 16, "IPv4 TOS"),
    (16, 18, "IPv4 total length"),
    (18, 20, "IPv4 id"),
    (20, 22, "IPv4 flags/fragment"),
    (22, 23, "IPv4 TTL"),
    (23, 24, "IPv4 protocol"),
    (24, 26, "IPv4 header checksum"),
    (26, 30, "IPv4 source"),
    (30, 34, "IPv4 destination"),
    (34, 36, "L4 source port"),
    (36, 38, "L4 destination port"),
    (38, 40, "UDP length"),
    (40, 42, "UDP checksum"),
]


def _frame(proto, sport, dport, size, src_ip, dst_ip, src_mac, dst_mac) -> bytes:
    spec = packets.FrameSpec(src_mac, dst_mac, src_ip, dst_ip, proto, sport, dport, size)
    spec.validate()
    return packets.build(spec)


def udp(
    dport: int = 9, sport: int = 1024, size: int = 60, src_ip=SRC_IP, dst_ip=DST_IP, src_mac=SRC_MAC, dst_mac=DST_MAC
) -> bytes:
    return _frame("udp", sport, dport, size, src_ip, dst_ip, src_mac, dst_mac)


def tcp(
    dport: int = 80, sport: int = 1024, size: int = 60, src_ip=SRC_IP, dst_ip=DST_IP, src_mac=SRC_MAC, dst_mac=DST_MAC
) -> bytes:
    return _frame("tcp", sport, dport, size, src_ip, dst_ip, src_mac, dst_mac)


def icmp(size: int = 60, src_ip=SRC_IP, dst_ip=DST_IP, src_mac=SRC_MAC, dst_mac=DST_MAC) -> bytes:
    return _frame("icmp", 1, 0, size, src_ip, dst_ip, src_mac, dst_mac)


def ipv6_udp(dport: int = 9, sport: int = 1024, size: int = 70) -> bytes:
    return _frame("udp", sport, dport, size, "fd00::1", "fd00::2", SRC_MAC, DST_MAC)


def arp(src_mac=SRC_MAC, src_ip=SRC_IP, target_ip=DST_IP) -> bytes:
    """An ARP request (who has TARGET_IP), padded to 60 bytes."""
    import ipaddress

    mac = packets.mac_bytes(src_mac)
    src, target = (ipaddress.IPv4Address(a).packed for a in (src_ip, target_ip))
    # Ethernet hardware, IPv4 protocol, address lengths 6 and 4, a request; no target MAC yet
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, src, b"\0" * 6, target)
    return (b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + body).ljust(60, b"\0")


def truncated(frame: bytes, length: int) -> bytes:
    """The first LENGTH bytes of FRAME, as a broken or hostile sender could send them."""
    return frame[:length]


def vlan(frame: bytes, vid: int = 100) -> bytes:
    """FRAME with an 802.1Q tag (EtherType 0x8100, VLAN VID) after the MAC addresses."""
    return frame[:12] + struct.pack("!HH", 0x8100, vid & 0x0FFF) + frame[12:]


def with_ip_options(frame: bytes, words: int = 1) -> bytes:
    """An IPv4 FRAME with WORDS x 4 bytes of IP options (NOPs ending in EOL): the header
    grows from 20 to 20 + 4*WORDS bytes and the L4 header moves; checksums stay valid."""
    ip = bytearray(frame[14:34])
    opts = b"\x01" * (4 * words - 1) + b"\x00"
    ip[0] = 0x40 | (5 + words)
    struct.pack_into("!H", ip, 2, struct.unpack_from("!H", ip, 2)[0] + len(opts))
    struct.pack_into("!H", ip, 10, 0)
    hdr = bytes(ip) + opts
    hdr = hdr[:10] + struct.pack("!H", packets.checksum(hdr)) + hdr[12:]
    return frame[:14] + hdr + frame[34:]


def describe_diff(expected: bytes, actual: bytes) -> list[str]:
    """Where two frames differ, field by field: 'IPv4 TTL: expected 3f, got 40'."""
    out = []
    if len(expected) != len(actual):
        out.append(f"length: expected {len(expected)} bytes, got {len(actual)}")
    n = min(len(expected), len(actual))
    done = set()
    for i in range(n):
        if expected[i] == actual[i]:
            continue
        span = next(((a, b, name) for a, b, name in LAYOUT if a <= i < b), (i, i + 1, f"byte {i}"))
        if span in done:
            continue
        done.add(span)
        a, b, name = span
        out.append(f"{name} (bytes {a}..{b - 1}): expected {expected[a:b].hex(' ')}, got {actual[a:b].hex(' ')}")
    return out
