"""What the NAT's control plane checks before it touches a map: networks, addresses and
where they lie, the source-NAT port range, the flow timeouts. Each check returns the
normalised value or raises an `InputError` that says what to change."""

from __future__ import annotations

import ipaddress

from labkit import bpf_enums
from labkit.dataplanes import read_when_needed
from labkit.errors import InputError

#: Seconds; TCP established after RFC 5382's 2 h 4 min, UDP after RFC 4787's 2 min floor.
DEFAULT_TIMEOUTS = {"tcp_established": 7440.0, "tcp_closing": 10.0, "udp": 120.0, "icmp": 30.0}


#: TIMEOUTS, the flow timeouts, the index of the config's `timeout` (enum nat_timeout of bpf/include/nat.h).
header, __getattr__ = read_when_needed(
    lambda: {"TIMEOUTS": bpf_enums.enum_names("nat.h", "nat_timeout", "NAT_TIMEOUT_")}
)


def check_port_range(port_range) -> tuple[int, int]:
    """(first, last): whole ports 1..65535, first <= last."""
    try:
        lo, hi = port_range
    except (TypeError, ValueError):
        raise InputError(f"port range {port_range!r}: give two ports (first, last), e.g. (20000, 29999)") from None
    for p in (lo, hi):
        if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535:
            raise InputError(f"port range {port_range!r}: ports are whole numbers 1..65535")
    if hi < lo:
        raise InputError(f"port range {lo}-{hi} is inverted: the first port must not exceed the last")
    return lo, hi


def check_timeouts(timeouts) -> dict:
    """The flow timeouts in seconds, every one given or defaulted, each > 0."""
    if timeouts is None:
        return dict(DEFAULT_TIMEOUTS)
    if not isinstance(timeouts, dict):
        raise InputError(f"timeouts {timeouts!r}: a dict like {DEFAULT_TIMEOUTS}")
    names = header().TIMEOUTS
    unknown = sorted(set(timeouts) - set(names))
    if unknown:
        raise InputError(f"timeouts: unknown {unknown}; the timeouts are {names}")
    out = dict(DEFAULT_TIMEOUTS)
    for name, value in timeouts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value > 10**7:
            raise InputError(f"timeout {name}={value!r}: seconds, more than 0 (and at most 10^7)")
        out[name] = float(value)
    return out


def check_network(value, what: str) -> ipaddress.IPv4Network:
    """VALUE as an IPv4 network with room for hosts (WHAT names it in the error)."""
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except (ValueError, TypeError):
        raise InputError(f"{what} {value!r} is not an IPv4 network like '10.20.0.0/16'") from None
    if net.prefixlen > 30:
        raise InputError(f"{what} {net} is too small for hosts: use a prefix of /30 or shorter")
    return net


def check_address(value, what: str) -> ipaddress.IPv4Address:
    """VALUE as an IPv4 address."""
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise InputError(f"{what} {value!r} is not an IPv4 address like '10.20.1.2'") from None


def check_host_in(addr: ipaddress.IPv4Address, net: ipaddress.IPv4Network, what: str, net_name: str) -> None:
    """ADDR is a host address of NET (NET_NAME names it in the error)."""
    if addr not in net:
        raise InputError(f"{what} {addr} is outside the {net_name} {net}: use an address in it")
    if addr in (net.network_address, net.broadcast_address):
        raise InputError(f"{what} {addr} is the network or broadcast address of {net}: use a host address")
