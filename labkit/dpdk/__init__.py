"""DPDK in labkit: build the l2fwd example, run it on a host, read its statistics, and
account for what it takes from the machine.

    binary = dpdk.build_l2fwd()                     # once; rebuilt when DPDK's version changes
    ports = [dpdk.Port.af_packet(d0), dpdk.Port.af_packet(d1)]
    with dpdk.L2fwd(topo.host("dut"), ports, dpdk.EalOptions(lcores="1"),
                    dpdk.L2fwdOptions(portmask=0x3)) as fwd:
        ...                                          # traffic through port 0
        stats = fwd.next_stats()                     # {port: PortStats(sent, received, dropped)}
        fwd.resources()                              # CPU time, memory, hugepages

The poster's command line is expressible as it was written:

    eal, app = dpdk.parse_command_line("-c 1 -n 1 -- -q 1 -p 1")

Ports are virtual by default: `net_af_packet` on a veth (no hugepages, no PCI), or
`net_af_xdp` (an AF_XDP socket and the driver's XDP program; `afxdp` says how it is
tuned: busy polling, copy or zero-copy, ring sizes); real ports are PCI addresses with a DPDK-capable driver bound,
and then hugepages are used. Every input is checked before anything runs (port mask
against the ports given, queues per lcore against the lcores, PCI addresses against
/sys/bus/pci), with an error that says what to change.

Each run gets its own EAL `--file-prefix` (the labkit run prefix plus a counter) and its
runtime directory /var/run/dpdk/PREFIX is removed when l2fwd has stopped, so a crashed or
finished run never blocks the next. l2fwd is stopped with SIGINT (it then closes its
ports), then SIGTERM, then SIGKILL, and is always reaped.
"""

from __future__ import annotations

# The package's public names, where `dpdk.X` finds them; one module per concern:
# build (the l2fwd example), afxdp (net_af_xdp ports), options (ports, EAL and l2fwd options), runtime (file
# prefixes, runtime directories, processes), l2fwd (running it, statistics, resources), sockets (the kernel's
# drop counters of a DPDK process's AF_XDP and packet sockets).
from labkit.dpdk.afxdp import (  # noqa: F401 (read as dpdk.X)
    AF_XDP_DEVARGS,
    BUSY_POLL_SETTINGS,
    BusyPollSettings,
    socket_mode,
    xsk_sockets,
)
from labkit.dpdk.build import L2FWD_BUILD_DIR, STAMP_NAME, build_l2fwd, dpdk_version, l2fwd_status  # noqa: F401
from labkit.dpdk.l2fwd import L2fwd, PortStats, parse_stats  # noqa: F401
from labkit.dpdk.options import (  # noqa: F401
    EalOptions,
    L2fwdOptions,
    Port,
    check_pci_address,
    l2fwd_mac,
    parse_command_line,
)
from labkit.dpdk.runtime import dpdk_processes, file_prefix, remove_runtime_dir, runtime_dirs  # noqa: F401
