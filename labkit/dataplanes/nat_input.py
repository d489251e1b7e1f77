"""What the NAT's control plane checks before it touches a map (addresses, networks,
port ranges, timeouts), how it writes addresses and ports into maps, and the kernel's
clock its flows are timed by (jiffies, bpf_jiffies64)."""
from __future__ import annotations

import gzip
import ipaddress
import re
import struct
import time

from labkit import bpf
from labkit.errors import InputError, LabkitError

#: The flow timeouts, the index of the config's `timeout` (enum nat_timeout of bpf/include/nat.h).
TIMEOUTS = bpf.enum_names("nat.h", "nat_timeout", "NAT_TIMEOUT_")
#: Seconds; TCP established after RFC 5382's 2 h 4 min, UDP after RFC 4787's 2 min floor.
DEFAULT_TIMEOUTS = {"tcp_established": 7440.0, "tcp_closing": 10.0, "udp": 120.0, "icmp": 30.0}


def _be32(addr: ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 the program compares (network byte order in memory)."""
    return struct.unpack("=I", addr.packed)[0]


def _from_be32(value: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", value & 0xFFFFFFFF)))


def _be16(port: int) -> int:
    return struct.unpack("=H", struct.pack("!H", port))[0]


def _from_be16(value: int) -> int:
    return struct.unpack("!H", struct.pack("=H", value & 0xFFFF))[0]


def check_port_range(port_range) -> tuple[int, int]:
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
    unknown = sorted(set(timeouts) - set(TIMEOUTS))
    if unknown:
        raise InputError(f"timeouts: unknown {unknown}; the timeouts are {TIMEOUTS}")
    out = dict(DEFAULT_TIMEOUTS)
    for name, value in timeouts.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value > 10 ** 7:
            raise InputError(f"timeout {name}={value!r}: seconds, more than 0 (and at most 10^7)")
        out[name] = float(value)
    return out


_HZ = None


def kernel_hz() -> int:
    """The kernel's tick rate (CONFIG_HZ): jiffies per second, the unit of flow times."""
    global _HZ
    if _HZ is None:
        text = ""
        try:
            text = gzip.open("/proc/config.gz", "rt").read()
        except OSError:
            import platform

            try:
                text = open(f"/boot/config-{platform.release()}").read()
            except OSError:
                pass
        m = re.search(r"^CONFIG_HZ=(\d+)", text, re.M)
        _HZ = int(m.group(1)) if m else _measure_hz()
    return _HZ


def _measure_hz() -> int:
    j0, t0 = jiffies_now(), time.monotonic()
    time.sleep(0.5)
    rate = (jiffies_now() - j0) / (time.monotonic() - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))


def jiffies_now() -> int:
    """The kernel's jiffies counter (what bpf_jiffies64 reads), from /proc/timer_list."""
    with open("/proc/timer_list") as f:
        for line in f:
            if line.startswith("jiffies: "):
                return int(line.split()[1])
    raise LabkitError("no 'jiffies:' line in /proc/timer_list: cannot age the NAT's flows")


def _network(value, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except (ValueError, TypeError):
        raise InputError(f"{what} {value!r} is not an IPv4 network like '10.20.0.0/16'") from None
    if net.prefixlen > 30:
        raise InputError(f"{what} {net} is too small for hosts: use a prefix of /30 or shorter")
    return net


def _address(value, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise InputError(f"{what} {value!r} is not an IPv4 address like '10.20.1.2'") from None


def _host_in(addr: ipaddress.IPv4Address, net: ipaddress.IPv4Network, what: str, net_name: str) -> None:
    if addr not in net:
        raise InputError(f"{what} {addr} is outside the {net_name} {net}: use an address in it")
    if addr in (net.network_address, net.broadcast_address):
        raise InputError(f"{what} {addr} is the network or broadcast address of {net}: use a host address")
