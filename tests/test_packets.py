"""Frames built by labkit.packets parse back to their fields, checksums are verified, and
IPv4 fragments are told apart (no ports in a later one, no L4 checksum from one fragment)."""

import struct

import pytest

from labkit import packets

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def frame(proto="udp", size=200, sport=4000, dport=53) -> bytearray:
    return bytearray(packets.build(packets.FrameSpec(MAC_A, MAC_B, "10.1.0.1", "10.2.0.2", proto, sport, dport, size)))


def fragment(f: bytearray, flags_offset: int, cut: int | None = None) -> bytes:
    """F as an IPv4 fragment (flags and offset in 8-byte units), cut to CUT bytes, its
    IPv4 checksum made valid again."""
    f = bytearray(f[:cut] if cut else f)
    f[16:18] = struct.pack("!H", len(f) - 14)
    f[20:22] = struct.pack("!H", flags_offset)
    f[24:26] = b"\0\0"
    f[24:26] = struct.pack("!H", packets.checksum(bytes(f[14:34])))
    return bytes(f)


@pytest.mark.parametrize("proto, number", [("udp", 17), ("tcp", 6), ("icmp", 1)])
def test_a_built_frame_parses_back_with_valid_checksums(proto, number):
    p = packets.parse(bytes(frame(proto)))
    assert (p.dst_mac, p.src_mac, p.ethertype) == (MAC_B, MAC_A, packets.ETH_P_IP)
    assert (p.src_ip, p.dst_ip, p.proto) == ("10.1.0.1", "10.2.0.2", number)
    assert p.sport == 4000 and p.dport == (None if proto == "icmp" else 53)
    assert p.ip_checksum_ok is True and p.l4_checksum_ok is True and p.fragment is False


def test_damaged_checksums_are_told():
    f = frame()
    f[-1] ^= 0x5A  # the payload: the UDP checksum no longer matches
    assert packets.parse(bytes(f)).l4_checksum_ok is False
    g = frame()
    g[22] ^= 0x01  # the TTL: the IPv4 header checksum no longer matches
    assert packets.parse(bytes(g)).ip_checksum_ok is False


def test_first_fragment_has_ports_but_no_checkable_l4_checksum():
    p = packets.parse(fragment(frame(size=1000), 0x2000, cut=14 + 20 + 512))  # MF, offset 0
    assert p.fragment is True and (p.sport, p.dport) == (4000, 53)
    assert p.ip_checksum_ok is True and p.l4_checksum_ok is None


@pytest.mark.parametrize("flags_offset", [0x2040, 0x0040])  # more to come / the last one, offset 512
def test_later_fragment_has_no_ports(flags_offset):
    p = packets.parse(fragment(frame(size=1000), flags_offset, cut=14 + 20 + 64))
    assert p.fragment is True and p.sport is None and p.dport is None and p.l4_checksum_ok is None
    assert (p.src_ip, p.dst_ip, p.proto) == ("10.1.0.1", "10.2.0.2", 17) and p.ip_checksum_ok is True


def test_frames_that_are_not_ipv4_or_too_short_parse_without_fields():
    arp = packets.mac_bytes(MAC_B) + packets.mac_bytes(MAC_A) + b"\x08\x06" + bytes(28)
    p = packets.parse(arp)
    assert p.ethertype == 0x0806 and p.src_ip is None and p.fragment is None
    assert packets.parse(b"\x02\x00").src_ip is None
