"""A fast generator that needs no BPF_PROG_RUN live frames (backend "xdp_loop"): a loop of
XDP programs multiplying a few seeded frames, whose copies reach the receiver as XDP frames.

    with traffic.generator("xdp_loop", topo.iface("snd")) as gen:   # builds the loop, compiles bpf/xdp_loop.c
        spec = TrafficSpec.between(topo.iface("snd"), topo.iface("rcv"), size=64,
                                   count=3_000_000, flows=1000)
        offered = gen.send(spec)          # blocks; bounded by count and spec.timeout_s
        offered.pps, offered.notes

How it works (labkit/dataplanes/xdp_loop.py has the details). In the sender's namespace
a veth pair A-B carries native XDP programs: B's takes the next index from a budget
counter and broadcasts the frame through a devmap to itself (back into the loop, where
A returns it with XDP_TX) and to the sending interface, which hands it to its veth peer
with ndo_xdp_xmit: the receiver's XDP program gets an XDP frame, not a socket buffer. A
send grants the loop `count` indices and seeds it with SEED frames over AF_PACKET; the
loop dies out by itself once the budget is spent. Where the loop dies early (frames lost
in its rings), it is seeded again. About 2 Mpps into a native-XDP drop receiver at 64
bytes on this kind of machine, where trafgen reaches 0.3-0.4 (`make bench`).

Flows. The index n of a frame picks its flow n % flows: with `flows > 1` the fields named
by the option `vary` (default the source port; as the "xdp" generator) walk base ..
base + flows - 1, every one exactly once per `flows` frames, over the whole run.

Rate. With `spec.rate_pps` the budget grows in steps of CHUNK_SECONDS of the schedule:
each step waits for its time, puts the loop's index back to the limit where the loop
overshot it (so the flows go on without a gap) and seeds the loop again. The loop sends
each step at full speed, so at a few percent of its speed the frames come in bursts of
one step.

The receiver. A veth transmits XDP frames only while its peer is in NAPI mode (a native
XDP program there, or GRO): the option `peer` works exactly as for the "xdp" generator
(labkit/traffic/xdpgen.py). What arrived how is in `Offered.notes`: the sending veth's
ndo_xdp_xmit count and errors (`ethtool -S`), and whether the receiver's native XDP
program saw XDP frames or the veth turned them into socket buffers.

Options: vary, peer, link_speed, line_fraction (as for "xdp"); seed (frames put into the
loop, default SEED); threaded (NAPI threads on the loop's veths, default off: measured
slower on 2 CPUs); copies (frames per round towards the receiver, default 1; more only
for one flow).
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from labkit import bpf, capabilities
from labkit.dataplanes.xdp_gen import can_transmit_xdp, xmit_counters
from labkit.dataplanes.xdp_loop import Loop
from labkit.errors import InputError, LabkitError
from labkit.packets import build
from labkit.traffic import Generator, Offered, TrafficSpec, register
from labkit.traffic.xdpgen import XdpGenerator

SEED = 32  # frames in the loop: more only lose frames in its 256-frame rings
MAX_FRAME = 3400  # a frame must fit one page with the veth's XDP head- and tailroom
CHUNK_SECONDS = 0.01  # paced: one budget step is this much of the schedule
POLL_S = 0.002  # how often a send looks at the loop's index
STALL_S = 0.02  # a loop whose index did not move for this long has died: seed it again
FALLBACKS = "use 'trafgen' (netsniff-ng) or 'testpmd' (DPDK txonly) instead"
OPTIONS = ("vary", "peer", "link_speed", "line_fraction", "seed", "threaded", "copies")


@register
class XdpLoopGenerator(XdpGenerator):
    """The loop generator. It shares the "xdp" generator's option checks, rate target and
    receiver preparation (`check`, `_prepare_peer`), not its live-frames program."""

    name = "xdp_loop"
    description = "a loop of native XDP programs multiplying seeded frames (devmap broadcast), bpf/xdp_loop.c"

    def __init__(self, iface, **options):
        self.loop = None
        self.peer_program = None
        self.last = {}
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)} for the xdp_loop generator: {', '.join(OPTIONS)}")
        Generator.__init__(self, iface, **options)  # availability; the live-frames program is not wanted
        self._check_options(iface, options, FALLBACKS)
        self.seed_frames = options.get("seed", SEED)
        if not isinstance(self.seed_frames, int) or not 1 <= self.seed_frames <= 256:
            raise InputError(f"seed {self.seed_frames!r}: frames put into the loop, a whole number 1..256")
        self.copies = options.get("copies", 1)  # checked by Loop
        self.loop = Loop(iface, threaded=bool(options.get("threaded", False)), copies=self.copies).__enter__()

    @classmethod
    def available(cls):
        for facility in ("xdp_native", "devmap_broadcast"):
            p = capabilities.probe(facility)
            if not p.ok:
                return False, f"{p.message()} ({FALLBACKS})"
        return True, ""

    # ---- checks before the kernel is touched
    def check(self, spec: TrafficSpec) -> float | None:
        """Validate SPEC for this generator; the rate to hold (None: as fast as possible)."""
        spec.validate()
        if spec.size > MAX_FRAME:
            raise InputError(
                f"size {spec.size}: a frame in the loop must fit one page with the veth's XDP "
                f"head- and tailroom: at most {MAX_FRAME} bytes"
            )
        if spec.count % self.copies:
            raise InputError(f"count {spec.count}: a multiple of copies={self.copies}")
        return super().check(spec)

    # ---- sending
    def send(self, spec: TrafficSpec) -> Offered:
        rate = self.check(spec)
        if self.loop is None:
            raise LabkitError("this xdp_loop generator is closed")
        frame = build(spec.frame(0))
        flow = {k: getattr(spec, k) for k in ("flows", "proto", "sport", "dport", "src_ip", "dst_ip")}
        self.loop.configure(vary=self.vary, version=6 if ":" in spec.src_ip else 4, **flow)
        with ExitStack() as peer_stack:
            notes = self._prepare_peer(peer_stack)
            if self.kind == "veth" and can_transmit_xdp(self.iface) is False:
                raise LabkitError(
                    f"{self.iface.name} cannot transmit XDP frames after preparing its peer "
                    f"(peer={self.peer_mode!r}): {FALLBACKS}"
                )
            before = xmit_counters(self.iface)
            try:
                sent, seconds, stopped, seeds = self._drive(frame, spec.count // self.copies, rate, spec.timeout_s)
            finally:
                self.loop.stop()  # on any exit, Ctrl-C included: not one frame more
            self.loop.settled()
            after = xmit_counters(self.iface)
            packets, xmit, errors = sent * self.copies, after[0] - before[0], after[1] - before[1]
            notes.append(self._delivery(packets, xmit, errors))
        if stopped:
            notes.append(f"stopped by the time limit ({spec.timeout_s:g} s) after {packets} of {spec.count} frames")
        if rate and packets / seconds < 0.95 * rate:
            notes.append(
                f"asked {rate:,.0f} pps, reached {packets / seconds:,.0f} pps: the generator is the limit here"
            )
        self.last = {"rate_target": rate, "xmit": xmit, "xmit_errors": errors, "seedings": seeds}
        return Offered(self.name, packets, packets * spec.size, seconds, notes=notes)

    def _drive(self, frame: bytes, count: int, rate: float | None, timeout_s: float):
        """Grant and seed the loop until it has sent COUNT rounds, at RATE (frames/s),
        within TIMEOUT_S: (rounds sent, seconds, stopped by the time limit, seedings)."""
        loop, copies = self.loop, self.copies
        step = count if rate is None else max(1, int(rate / copies * CHUNK_SECONDS))
        t0 = time.monotonic()
        granted = seeds = seen = 0
        moved = t0
        while True:
            now, n = time.monotonic(), loop.next_index()
            if n >= count:
                seconds = now - t0 if rate is None else max(now - t0, count * copies / rate)
                return count, seconds, False, seeds
            if now >= t0 + timeout_s:
                loop.stop()
                return loop.settled(), now - t0, True, seeds
            due = t0 + granted * copies / rate if rate else now
            if granted < count and now >= due:
                target = min(count, granted + step)
                seeds += self._top_up(n, granted, target, frame)
                granted, seen, moved = target, loop.next_index(), time.monotonic()
            elif n != seen:
                seen, moved = n, now
            elif n < granted and now - moved > STALL_S:  # died early: frames lost in its rings
                loop.seed(frame, min(self.seed_frames, granted - n))
                seeds, moved = seeds + 1, time.monotonic()
            wake = due if granted < count and rate else now + POLL_S
            time.sleep(max(0.0, min(POLL_S, wake - time.monotonic())))

    def _top_up(self, n: int, granted: int, target: int, frame: bytes) -> int:
        """Raise the loop's limit from GRANTED to TARGET, N being its index; a loop that
        has died out at its limit is put back to it and seeded again (1 returned)."""
        if n < granted:  # still sending the last step: it carries on
            self.loop.grant(target)
            return 0
        self.loop.settled()  # died out: every frame was dropped at the limit
        self.loop.grant(target)
        self.loop.seed(frame, min(self.seed_frames, target - granted))
        return 1

    def _delivery(self, packets: int, xmit: int, errors: int) -> str:
        """How the frames reached the receiver: XDP frames, or socket buffers built from them."""
        peer = self.iface.peer
        if peer is None:
            how = "to a receiver outside the topology (whether it runs native XDP was not checked)"
        elif bpf.xdp_state(peer).get("IFLA_XDP_ATTACHED") == "xdp":
            how = f"so the native XDP program of {peer.name} got XDP frames, not socket buffers"
        else:
            how = f"which {peer.name} turned into socket buffers (it has no native XDP program)"
        text = f"{xmit} of {packets} frames left {self.iface.name} through ndo_xdp_xmit (tx_queue_*_xdp_xmit), {how}"
        if errors:
            text += (
                f"; {errors} were refused by its XDP transmit (xdp_xmit_errors: the receiver's ring was full) "
                "and never reached the receiver"
            )
        elif self.kind == "veth" and xmit < packets:
            text += "; the rest were dropped at the sender"
        return text

    def close(self) -> None:
        for attr in ("loop", "peer_program"):
            owned = getattr(self, attr, None)
            setattr(self, attr, None)
            if owned is not None:
                owned.close()
