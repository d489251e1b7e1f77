"""Addresses checked before anything touches the kernel: MACs, IP addresses, interface
addresses with a prefix. Each check returns the normalised value or raises InputError.
"""

from __future__ import annotations

import ipaddress
import re

from labkit.errors import InputError

MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def check_mac(mac: str) -> str:
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise InputError(f"MAC address {mac!r} is malformed: write six hex pairs, e.g. '02:00:00:00:00:01'")
    if mac.replace(":", "").strip("0") == "":
        raise InputError(f"MAC address {mac!r} is all zeros, which no interface may have: use e.g. '02:00:00:00:00:01'")
    if int(mac[:2], 16) & 1:
        raise InputError(f"MAC address {mac!r} is a multicast address: use a unicast one (first octet even)")
    return mac.lower()


def check_interface(addr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'10.0.0.1/24' -> an interface address; a clear error otherwise."""
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError:
        raise InputError(
            f"address {addr!r} is malformed: write an address with a prefix, e.g. '10.11.0.1/24'"
        ) from None
    if "/" not in str(addr):
        raise InputError(f"address {addr!r} has no prefix length: write e.g. '{addr}/24'")
    return iface


def check_ip(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        raise InputError(f"IP address {addr!r} is malformed: write e.g. '10.11.0.2'") from None
