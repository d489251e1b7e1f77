"""The kernel's own drop counters of a DPDK process's sockets: where packets are lost
before the application sees them.

    drops = socket_drops(l2fwd.proc.pid)     # {'xsk': {...}, 'packet': {...}}, summed over its sockets

A `net_af_xdp` port is an AF_XDP socket and a `net_af_packet` port a packet socket; the
kernel counts, per socket, what it could not deliver: for AF_XDP (`XDP_STATISTICS`)
frames dropped because the fill ring had no free buffer (`rx_dropped`, of which
`rx_fill_ring_empty_descs`: the application had not returned buffers yet, i.e. it did not
keep up) or because the receive ring was full (`rx_ring_full`), and invalid transmit
descriptors; for a packet socket (`PACKET_STATISTICS`) frames the ring had no room for
(`tp_drops`). These counters belong to the sockets, which live in the DPDK process: labkit
borrows a duplicate of each socket's descriptor with pidfd_getfd(2) (Linux 5.6+, root),
asks, and closes the duplicate; the process is not disturbed.

Reading PACKET_STATISTICS resets the packet socket's counters (the kernel's rule), so the
packet counts are those since the previous read: read once before a trial and once after.
Where the kernel refuses (no pidfd_getfd, not root) the result is empty, never an error.
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_PIDFD_GETFD = 438  # x86_64, arm64 and the generic syscall table alike
SOL_XDP, XDP_STATISTICS = 283, 7
SOL_PACKET, PACKET_STATISTICS = 263, 6
XSK_FIELDS = (
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
)
PACKET_FIELDS = ("tp_packets", "tp_drops")

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _getsockopt(fd: int, level: int, name: int, size: int) -> bytes | None:
    buf, ln = ctypes.create_string_buffer(size), ctypes.c_uint32(size)
    if _c().getsockopt(fd, level, name, buf, ctypes.byref(ln)) != 0:
        return None
    return buf.raw[: ln.value]


def socket_drops(pid: int) -> dict:
    """{'xsk': {field: total}, 'packet': {field: total}} over PID's AF_XDP and packet sockets
    (a kind is absent where the process has none); {} where the kernel refuses."""
    out: dict = {}
    try:
        pfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return out
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            nfd = _c().syscall(SYS_PIDFD_GETFD, pfd, int(fd), 0)
            if nfd < 0:
                continue
            try:
                raw = _getsockopt(nfd, SOL_XDP, XDP_STATISTICS, 48)
                if raw is not None and len(raw) >= 48:
                    _add(out, "xsk", XSK_FIELDS, struct.unpack("6Q", raw[:48]))
                    continue
                raw = _getsockopt(nfd, SOL_PACKET, PACKET_STATISTICS, 8)
                if raw is not None and len(raw) >= 8:
                    _add(out, "packet", PACKET_FIELDS, struct.unpack("2I", raw[:8]))
            finally:
                os.close(nfd)
    except OSError:
        pass  # the process is gone
    finally:
        os.close(pfd)
    return out


def _add(out: dict, kind: str, fields, values) -> None:
    d = out.setdefault(kind, {f: 0 for f in fields})
    for f, v in zip(fields, values):
        d[f] += v
