"""How the NAT's maps hold addresses and ports: in network byte order, as the program
compares them with the packet's fields (a u32 or u16 read in host order from memory)."""

from __future__ import annotations

import ipaddress
import struct


def be32(addr: ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 the program compares (network byte order in memory)."""
    return struct.unpack("=I", addr.packed)[0]


def from_be32(value: int) -> str:
    """The address a map's u32 holds, as text."""
    return str(ipaddress.IPv4Address(struct.pack("=I", value & 0xFFFFFFFF)))


def from_be16(value: int) -> int:
    """The port a map's u16 holds."""
    return struct.unpack("!H", struct.pack("=H", value & 0xFFFF))[0]
