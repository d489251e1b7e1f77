"""The control plane of bpf/xdp_loop.c: a loop of XDP programs that multiplies frames, the
generator that needs no BPF_PROG_RUN live frames. The traffic backend on top (seeding,
pacing, time limits, the receiver's needs) is labkit/traffic/xdploop.py.

    with Loop(snd) as loop:                  # a veth pair A-B in snd's namespace, programs on
        loop.configure(flows=64, vary=vary_mask("sport"), version=4, proto="udp",
                       sport=1024, dport=9, src_ip="10.11.0.1", dst_ip="10.11.0.2")
        loop.grant(1_000_000)                # frames the loop may send towards snd's peer
        loop.seed(frame, 100)                # AF_PACKET into A: the loop starts
        loop.next_index()                    # frames sent so far (and what they cost)

How it works. B's program (`xdp_loop_fan`) takes the next index of an atomic counter,
rewrites the frame into flow index % flows and broadcasts it through a devmap holding B
and the sending port: one copy leaves through the sending port (ndo_xdp_xmit: its veth
peer gets an XDP frame), one goes out of B to A, whose program returns it (XDP_TX). So
every frame in the loop yields one frame towards the receiver per round, and the loop
holds as many frames as it was seeded with. Once the counter reaches the limit, frames
are dropped and the loop dies out: exactly `limit` frames were sent, index 0, 1, 2, ..,
so each flow appears once per `flows` frames. Raising the limit and seeding again
continues where it stopped (`resume`).

Options, measured on this kind of machine (2 CPUs, 64 B into a native-XDP drop receiver;
`make bench`): without threaded NAPI the whole loop and the receiver's NAPI poll run in
the softirq of one CPU, taking turns, so the receiver's ring never overflows and the
loop reaches about 2 Mpps; `threaded=True` (NAPI in kernel threads, which the scheduler
spreads over both CPUs) measured 2-3x slower, every handover being a wake-up. More frames
in the loop than about 32-64 only lose frames in its rings. `copies` puts the sending port
in the devmap several times: more frames per round, all of one flow (so only for one
flow); 3 overflowed the receiver's ring.

Pitfalls the design answers: a devmap entry's ifindex is resolved in the network
namespace of the process that writes the map, so the devmaps are written from a thread
inside the sender's namespace; broadcasting back to the ingress device is what keeps the
loop alive (no BPF_F_EXCLUDE_INGRESS); IPv6 is off on the loop's ends so that no
neighbour discovery frame of their own ever enters the loop.

The loop's links carry the run's prefix (`lkXXXX-xl<n>a`/`b`), so `labkit clean` removes
them from the root namespace after a crash; in a namespace they go with it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import socket
import time
from contextlib import ExitStack

from labkit import bpf, bpf_enums
from labkit.dataplanes import read_when_needed, xdp_gen
from labkit.dataplanes.xdp_gen import in_netns, low32, xmit_counters
from labkit.errors import InputError, LabkitError
from labkit.testbed import runs, signals
from labkit.testbed.topology import Interface, _delete_link
from labkit.testbed.undo import Undoable

SOURCE = "xdp_loop"
HEADER = "xdp_loop.h"
#: NEXT and LIMIT, the budget map's slots, and PORTS_MAX, the devmap's size (LOOP_ dropped)
header, __getattr__ = read_when_needed(
    lambda: {
        k[5:]: v for e in ("xdp_loop_budget", "xdp_loop_ports") for k, v in bpf_enums.enum_values(HEADER, e).items()
    }
)
#: how long frames still in the loop may take to die out once the limit is reached
SETTLE_S = 0.0005
_numbers = itertools.count()


class Loop(Undoable):
    """The loop for sending out of OUT (a topology.Interface, the sending port) on its host.
    Context manager: exit removes the loop's links with their programs, and unloads them."""

    def __init__(self, out, *, threaded: bool = False, copies: int = 1):
        if not isinstance(copies, int) or not 1 <= copies <= header().PORTS_MAX - 1:
            raise InputError(f"copies {copies!r}: copies per round towards the receiver, 1..{header().PORTS_MAX - 1}")
        self.out, self.host = out, out.host
        self.threaded, self.copies = threaded, copies
        self.a = self.b = None
        self.program = None
        self._sock = None

    # ---- building
    def _open(self, stack: ExitStack) -> None:
        stack.enter_context(signals.terminate_as_exception())
        run = stack.enter_context(runs.run_scope())
        n = next(_numbers)
        self.a, self.b = self._veth(stack, run.name(f"xl{n}a"), run.name(f"xl{n}b"))
        self.program = bpf.load(SOURCE)
        stack.callback(self.program.close)
        self._fill_devmap()
        stack.enter_context(bpf.attach_xdp(self.a, self.program.function("xdp_loop_tx", "xdp"), "native"))
        stack.enter_context(bpf.attach_xdp(self.b, self.program.function("xdp_loop_fan", "xdp"), "native"))
        if self.threaded:  # after the programs: a veth has NAPI instances only while it runs XDP
            self._threaded()
        self._sock = in_netns(self.host.netns, self._seed_socket)
        stack.callback(self._sock.close)

    def _veth(self, stack: ExitStack, name_a: str, name_b: str):
        with self.host.ipr() as ipr:
            mtu = ipr.link("get", index=self.out.ifindex)[0].get_attr("IFLA_MTU")
            with signals.deferred_signals():
                ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b})
                stack.callback(_delete_link, self.host, name_a)
            # IPv6 off before the links go up: no neighbour discovery frame of their own in the loop
            script = f"for i in {name_a} {name_b}; do echo 1 > /proc/sys/net/ipv6/conf/$i/disable_ipv6; done; true"
            self.host.run(["sh", "-c", script], check=False, timeout=10)
            ends = []
            for name in (name_a, name_b):
                idx = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, mtu=mtu, state="up")
                mac = ipr.link("get", index=idx)[0].get_attr("IFLA_ADDRESS")
                ends.append(Interface(self.host, name, idx, mac, None, None))
        a, b = ends
        a.peer, b.peer = b, a
        return a, b

    def _threaded(self) -> None:
        """Threaded NAPI on both ends (it goes with the links)."""
        script = f"for i in {self.a.name} {self.b.name}; do echo 1 > /sys/class/net/$i/threaded || exit 1; done"
        cp = self.host.run(["sh", "-c", script], check=False, timeout=10)
        if cp.returncode != 0:
            raise LabkitError(
                f"threaded NAPI could not be switched on for the loop's veths on {self.host}: "
                f"{(cp.stderr or cp.stdout).strip()}; use threaded=False"
            )

    def _fill_devmap(self) -> None:
        """B itself and the sending port COPIES times, written from inside the sender's
        namespace, where these ifindexes name these links."""

        def write():
            table = self.program.map("loop_fan")
            for slot, idx in enumerate([self.b.ifindex] + [self.out.ifindex] * self.copies):
                table[ctypes.c_int(slot)] = ctypes.c_int(idx)

        in_netns(self.host.netns, write)

    def _seed_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((self.a.name, 0))
        return sock

    # ---- configuring and driving
    def configure(
        self,
        *,
        flows: int = 1,
        vary: int = 1,
        version: int = 4,
        proto: str = "udp",
        sport: int = 0,
        dport: int = 0,
        src_ip: str = "0.0.0.0",
        dst_ip: str = "0.0.0.0",
    ) -> None:
        """FLOWS flows moving the fields of VARY (bits, dataplanes.xdp_gen.vary_mask) from
        the base values; the index restarts at 0 and nothing may be sent until `grant`."""
        l4 = xdp_gen.header().L4
        if (proto, version) not in l4:
            raise InputError(f"protocol {proto!r} over IPv{version}: the loop sends {sorted(l4)}")
        if flows > 1 and self.copies > 1:
            raise InputError(
                f"{flows} flows with copies={self.copies}: the copies of one round carry one flow, "
                "so every flow would be sent several times; use copies=1 for more than one flow"
            )
        table = self.program.map("gen_config")
        table[ctypes.c_int(0)] = table.Leaf(
            flows, vary, int(version == 6), l4[(proto, version)], sport, dport, low32(src_ip), low32(dst_ip)
        )
        self._set(header().LIMIT, 0)
        self._set(header().NEXT, 0)

    def _set(self, slot: int, value: int) -> None:
        self.program.map("loop_budget")[ctypes.c_int(slot)] = ctypes.c_uint64(value)

    def _get(self, slot: int) -> int:
        return int(self.program.map("loop_budget")[ctypes.c_int(slot)].value)

    def next_index(self) -> int:
        """Indices taken so far: frames sent, plus those dropped for being over the limit."""
        return self._get(header().NEXT)

    def limit(self) -> int:
        return self._get(header().LIMIT)

    def grant(self, limit: int) -> None:
        """Let the loop send frames up to index LIMIT (a running loop carries on)."""
        self._set(header().LIMIT, limit)

    def stop(self) -> None:
        """No more frames: the limit drops to the index reached, and the loop dies out (a
        frame or two taken between reading the index and writing the limit still leave,
        uncounted by `settled`)."""
        self._set(header().LIMIT, min(self.limit(), self.next_index()))

    def settled(self) -> int:
        """The frames sent, once the loop has died out at its limit. Frames that raced past
        the limit on two CPUs at once (each took an index before either saw it spent) leave
        the index above the limit: it is put back to the limit, after SETTLE_S for the
        last of them, so that the next frames continue the flows without a gap."""
        limit, seen = self.limit(), self.next_index()
        if seen <= limit:
            return seen
        while True:
            time.sleep(SETTLE_S)
            now = self.next_index()
            if now == seen:
                break
            seen = now
        self._set(header().NEXT, limit)
        return limit

    def seed(self, frame: bytes, frames: int) -> int:
        """Up to FRAMES copies of FRAME into the loop (AF_PACKET out of A, so they arrive
        at B); fewer where B's ring is full (the loop holds all it can). Frames seeded."""
        for i in range(frames):
            try:
                self._sock.send(frame)
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                    return i
                raise LabkitError(f"seeding the loop through {self.a.name} on {self.host} failed: {exc}") from exc
        return frames

    def xmit_counters(self, iface=None):
        """(frames transmitted with ndo_xdp_xmit, frames refused) of IFACE (default: the
        sending port)."""
        return xmit_counters(iface or self.out)

    def close(self) -> None:
        """Remove the loop (harmless twice)."""
        self.program = self._sock = None
        super().close()


# ---------------------------------------------------------------- the capability probe
PROBE_FRAMES = 16


def devmap_broadcast_probe() -> str:
    """The facility "devmap_broadcast" tried for real (labkit.probes registers it): a loop
    on a throw-away veth pair in a namespace of its own, seeded with a few frames, must put
    exactly PROBE_FRAMES frames through the sending veth's ndo_xdp_xmit into a peer that
    drops them with native XDP. Everything is removed again; raises when refused."""
    from labkit.dataplanes.minimal import Minimal
    from labkit.packets import FrameSpec, build
    from labkit.testbed import topology

    # host names of its own: a probe may be asked inside a topology of the same run
    with topology.Topology(topology.pair(*topology.PROBE_HOSTS)) as topo, Minimal() as minimal:
        snd, rcv = (topo.iface(h) for h in topology.PROBE_HOSTS)
        with bpf.attach_xdp(rcv, minimal.drop(), "native"), Loop(snd) as loop:
            loop.configure()
            loop.grant(PROBE_FRAMES)
            before = loop.xmit_counters()[0]
            loop.seed(build(FrameSpec(snd.mac, rcv.mac, "10.11.0.1", "10.11.0.2", "udp", 1024, 9, 64)), 4)
            deadline = time.monotonic() + 2
            while loop.next_index() < PROBE_FRAMES and time.monotonic() < deadline:
                time.sleep(0.01)
            sent = loop.settled()
            xmit = loop.xmit_counters()[0] - before
    if sent < PROBE_FRAMES or xmit < PROBE_FRAMES:
        raise LabkitError(
            f"a loop of XDP programs with a devmap broadcast sent {sent} of {PROBE_FRAMES} frames, "
            f"{xmit} of them through ndo_xdp_xmit (the broadcast redirect fails here)"
        )
    return f"a loop of XDP programs broadcast {PROBE_FRAMES} frames through a devmap, all as XDP frames"
