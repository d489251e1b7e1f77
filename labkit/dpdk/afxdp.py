"""DPDK's `net_af_xdp` ports: their options, copy or zero-copy, busy polling, and the XDP
program the driver attaches.

A `net_af_xdp` port opens an AF_XDP socket on one queue of a Linux interface and attaches
a small XDP program that redirects that queue's frames into the socket (the kernel copies
them into the socket's memory, or, on a driver with XSK zero-copy, the NIC writes there
directly). Options a DPDK user tunes, as vdev arguments of `Port.af_xdp(iface, ...)`:

- ``busy_budget``: packets per preferred-busy-poll round (DPDK's default 64); 0 turns
  busy polling off. With it on, the driver asks the kernel to run the interface's NAPI
  from its own receive calls; the kernel does that only with `napi_defer_hard_irqs` and
  `gro_flush_timeout` set on the interface (`BusyPollSettings` sets them, for the run);
- ``force_copy=1``: copy mode even where zero-copy is possible;
- ``start_queue``, ``queue_count``: the interface queues to open (a veth has one);
- ``shared_umem``, ``xdp_prog``: as DPDK's documentation of the driver says.

The socket's ring sizes are l2fwd's descriptor counts (`build_l2fwd(ring_size=...)`).
The driver removes its XDP program when the port closes (l2fwd does on SIGINT); after a
SIGKILL it stays: `remove_pmd_programs` takes off what the driver left.
"""

from __future__ import annotations

import os
from contextlib import suppress
from types import SimpleNamespace

from labkit.errors import InputError
from labkit.testbed import signals

#: the vdev arguments of net_af_xdp in DPDK 22.11, with a check of each value
AF_XDP_DEVARGS = {
    "start_queue": lambda v: int(v) >= 0,
    "queue_count": lambda v: 1 <= int(v) <= 64,
    "shared_umem": lambda v: int(v) in (0, 1),
    "xdp_prog": lambda v: os.path.isfile(str(v)),
    "busy_budget": lambda v: 0 <= int(v) <= 65535,
    "force_copy": lambda v: int(v) in (0, 1),
}
#: the kernel's xdp-features bit for AF_XDP zero-copy (NETDEV_XDP_ACT_XSK_ZEROCOPY)
XSK_ZEROCOPY = 8
#: what DPDK's documentation of the driver suggests for preferred busy polling
BUSY_POLL_SETTINGS = {"napi_defer_hard_irqs": "2", "gro_flush_timeout": "200000"}


def check_devargs(devargs: dict) -> None:
    """Every net_af_xdp argument known and in range, or an InputError naming it."""
    for k, v in devargs.items():
        if k not in AF_XDP_DEVARGS:
            raise InputError(f"net_af_xdp has no option {k!r}: it takes {', '.join(AF_XDP_DEVARGS)}")
        try:
            ok = AF_XDP_DEVARGS[k](v)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"net_af_xdp option {k}={v!r} is out of range (see DPDK's AF_XDP driver guide)")


def socket_mode(host, ifname: str, devargs: dict | None = None) -> str:
    """'zero-copy' where IFNAME's driver offers XSK zero-copy and force_copy is not set,
    'copy' otherwise (every veth), 'unknown' where the kernel cannot say (before 6.3)."""
    from labkit.dataplanes.xdp_gen import xdp_features

    with host.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
    feats = xdp_features(SimpleNamespace(host=host, ifindex=idx[0], name=ifname)) if idx else None
    if feats is None:
        return "unknown"
    if not feats & XSK_ZEROCOPY or int(dict(devargs or {}).get("force_copy", 0)):
        return "copy"
    return "zero-copy"


def xdp_program_id(host, ifname: str) -> int | None:
    """The id of the XDP program on IFNAME of HOST, None without one."""
    with host.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None
        attrs = dict((ipr.link("get", index=idx[0])[0].get_attr("IFLA_XDP") or {}).get("attrs", []))
    return attrs.get("IFLA_XDP_PROG_ID") if attrs.get("IFLA_XDP_ATTACHED") else None


def remove_pmd_programs(host, programs: dict) -> list[str]:
    """Detach the XDP programs a net_af_xdp port attached ({ifname: program id}) if they are
    still there (the port was not closed: l2fwd was killed); the interfaces cleaned."""
    removed = []
    for ifname, prog in programs.items():
        if prog is None or xdp_program_id(host, ifname) != prog:
            continue  # gone, or another program now: not ours to touch
        with host.ipr() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            for flags in (0, 2):  # native, then generic: the mode the driver chose
                with suppress(Exception):
                    ipr.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags)]})
        removed.append(ifname)
    return removed


class BusyPollSettings:
    """napi_defer_hard_irqs and gro_flush_timeout on interfaces of a host, for preferred
    busy polling; the old values come back on exit (errors, Ctrl-C, SIGTERM included)."""

    def __init__(self, host, ifnames, settings: dict | None = None):
        self.host, self.ifnames = host, list(ifnames)
        self.settings = dict(settings or BUSY_POLL_SETTINGS)
        self.saved: dict = {}

    def _path(self, ifname, knob):
        return f"/sys/class/net/{ifname}/{knob}"

    def _write(self, ifname, knob, value) -> None:
        self.host.run(["sh", "-c", f"echo {int(value)} > {self._path(ifname, knob)}"], timeout=10)

    def __enter__(self):
        with signals.deferred_signals():
            try:
                for ifname in self.ifnames:
                    for knob, value in self.settings.items():
                        old = self.host.read(self._path(ifname, knob)).strip()
                        self.saved[(ifname, knob)] = old
                        self._write(ifname, knob, value)
            except BaseException:
                self.restore()
                raise
        return self

    def restore(self) -> None:
        while self.saved:
            (ifname, knob), old = self.saved.popitem()
            with suppress(Exception):  # the interface is gone with its namespace
                self._write(ifname, knob, old)

    def __exit__(self, *exc):
        self.restore()


def xsk_sockets(host) -> int:
    """How many AF_XDP sockets are open in HOST's namespace (the kernel's count in
    /proc/net/protocols; `ss --xdp` needs CONFIG_XDP_SOCKETS_DIAG, which not every kernel has)."""
    for line in host.read("/proc/net/protocols").splitlines():
        f = line.split()
        if f and f[0] == "XDP":
            return int(f[2])
    return 0
