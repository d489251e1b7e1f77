"""The in-kernel traffic generator (backend "xdp"): BPF_PROG_RUN in live-frames mode.

    with traffic.generator("xdp", topo.iface("snd")) as gen:      # compiles bpf/xdp_gen.c
        spec = TrafficSpec.between(topo.iface("snd"), topo.iface("rcv"), size=64,
                                   count=5_000_000, flows=100, cpus=2)
        offered = gen.send(spec)         # blocks; frames go out of snd into its peer
        offered.pps, offered.per_cpu, offered.notes

How it works. labkit.packets builds one valid frame from the spec; the kernel runs the
XDP program of bpf/xdp_gen.c on it `count` times (`bpf_prog_test_run_opts` with
BPF_F_TEST_XDP_LIVE_FRAMES, repeat=chunk, batch_size=64) and the program's XDP_TX sends
every copy out of the interface given as the context's `ingress_ifindex`. No socket, no
skb, no copy from userspace per frame: about 5 Mpps from one core on this machine, 5-8x
trafgen.

Flows. With `flows > 1` the program rewrites each frame from a per-CPU sequence of
`flows` flows, moving the fields named by the option `vary` (default the source port, as
TrafficSpec describes; also "dport", "src_ip", "dst_ip", several at once moving together):
see labkit/dataplanes/xdp_gen.py.

The program's own control plane (loading it, its template and flow maps, the xdp_md
context, parking it on the sending host's loopback so that it stays in the kernel's XDP
dispatcher, without which every BPF_PROG_RUN call costs ~24 ms of RCU grace periods) is
labkit/dataplanes/xdp_gen.py; this module is the traffic backend on top of it.

CPUs. `spec.cpus` threads, thread i pinned to the i-th CPU this process may use; each
enters the sending interface's network namespace itself (setns(2) on the thread, since
ifindex is per namespace and BPF_PROG_RUN resolves it in the caller's namespace; pyroute2's
pushns/popns keeps one process-wide stack and saves /proc/self, not the thread's own
namespace, so it is not used here). ctypes releases the GIL during the system call, so
the threads send in parallel. Each thread sends count/cpus frames at rate/cpus.

Rate. With `spec.rate_pps` (or the options `link_speed` + `line_fraction`) each thread
sends chunks of about 10 ms and sleeps until its schedule (frames sent / rate) catches
up: the rate holds within a few percent over a run where the machine can reach it;
without a rate it sends as fast as it can. A named `link_speed` ("10G", "25G", 1e9..)
bounds the rate: asking for more than the line rate of that speed at the frame size
is an InputError (`labkit.traffic.linerate`).

The peer requirement. A veth transmits XDP frames only when its peer runs in NAPI mode,
i.e. has a native XDP program (or GRO on). Before each send the generator checks the
peer; `peer="auto"` (default) leaves a native program in place, attaches
bpf/xdp_minimal.c's `xdp_pass_bare` in native mode where there is none (generic XDP on
the peer cannot coexist with a native program, so there it turns GRO on instead), and
undoes that after the send. Either costs the receiver something: it is recorded as a
caveat in `Offered.notes`. `peer="xdp_pass"`, `"gro"` or `"none"` force a choice. On a
real NIC the driver transmits itself: the kernel's xdp-features (netlink family
`netdev`, kernel 6.3+) must list NDO_XMIT, else InputError naming the fallbacks.

What was offered. `Offered.packets` is what the program sent; frames the interface
could not transmit (its `*xdp_xmit_errors*` counters, or a veth whose peer dropped them)
are reported in notes, never hidden. `Offered.per_cpu` has one dict per thread
(cpu, packets, seconds, pps, cpu_seconds). CPU seconds are the sending threads' own,
which include the softirq work the kernel runs on their CPU (on a veth: the receiver's
NAPI poll, when it runs on the same CPU).

Where live frames are refused (every kernel before 5.18, containers, security policies;
`capabilities.probe("live_frames")` tries it once), `available()` says so with the reason
and names the other backends, which `traffic.generator("auto", ...)` then falls back to.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import ExitStack

from labkit import bpf, capabilities
from labkit.dataplanes.xdp_gen import (
    MAX_BATCH,
    MAX_FRAME,
    GenProgram,
    can_transmit_xdp,
    link_kind,
    thread_in_netns,
    vary_mask,
    xmit_counters,
)
from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.packets import build
from labkit.testbed import signals
from labkit.traffic import Generator, Offered, TrafficSpec, register
from labkit.traffic.linerate import line_rate_pps, parse_speed, target_rate  # noqa: F401 (the options' rates)
from labkit.traffic.xdpgen_schedule import CHUNK_SECONDS, CpuSchedule

FALLBACKS = (
    "use another backend: 'xdp_loop' (an XDP loop, no live frames), 'trafgen' (netsniff-ng), "
    "'testpmd' (DPDK txonly) or 'pktgen' (kernel module); 'auto' picks the first that works here"
)
PEER_MODES = ("auto", "xdp_pass", "gro", "none")
SHARED_RING_BURST = 128  # paced frames per call when several CPUs send
#: Threads per sending CPU, sharing that CPU's schedule (one suffices while the program
#: stays in the XDP dispatcher; see dataplanes.xdp_gen.DispatcherPin).
THREADS_PER_CPU = 1


# ---------------------------------------------------------------- kernel support
def live_frames() -> tuple[bool, str]:
    """Whether this process may run BPF_PROG_RUN in live-frames mode, as tried for real
    (labkit.capabilities: refused on kernels before 5.18, in containers, under security
    policies, or through LABKIT_REFUSE), with the reason and the fallbacks when not."""
    p = capabilities.probe("live_frames")
    return (True, "") if p.ok else (False, f"{p.message()} ({FALLBACKS})")


# ---------------------------------------------------------------- the peer requirement
class GroOn:
    """GRO switched on for an interface, back off on exit (harmless twice)."""

    def __init__(self, iface):
        self.iface, self.changed = iface, False

    def __enter__(self):
        feats = self.iface.offloads()
        if feats.get("generic-receive-offload") != "on":
            with signals.deferred_signals():
                self.iface.host.run(["ethtool", "-K", self.iface.name, "gro", "on"], timeout=10)
                self.changed = True
        return self

    def __exit__(self, *exc):
        if self.changed:
            self.iface.host.run(["ethtool", "-K", self.iface.name, "gro", "off"], check=False, timeout=10)
            self.changed = False


# ---------------------------------------------------------------- the backend
@register
class XdpGenerator(Generator):
    """Options (keywords of `traffic.generator("xdp", iface, ...)`):
    vary: str or tuple of 'sport', 'dport', 'src_ip', 'dst_ip' (default 'sport');
    peer: 'auto' | 'xdp_pass' | 'gro' | 'none' (see the module docstring);
    link_speed: the link's speed ('10G', 25e9, ...) bounding the rate;
    line_fraction: the rate as a fraction of link_speed's line rate at the frame size;
    batch_size: frames per kernel batch (1..256, default 64); pin: pin threads to CPUs (True)."""

    name = "xdp"
    description = "in-kernel BPF_PROG_RUN live frames (XDP_TX), bpf/xdp_gen.c"

    def __init__(self, iface, **options):
        self.gen = None
        self.peer_program = None
        self.last = {}
        super().__init__(iface, **options)
        self._check_options(iface, options, FALLBACKS)
        self.batch_size = options.get("batch_size", 64)
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= MAX_BATCH:
            raise InputError(f"batch_size {self.batch_size!r}: a whole number 1..{MAX_BATCH}")
        self.pin = bool(options.get("pin", True))
        unknown = set(options) - {"vary", "peer", "link_speed", "line_fraction", "batch_size", "pin"}
        if unknown:
            raise InputError(
                f"unknown option(s) {sorted(unknown)} for the xdp generator: "
                "vary, peer, link_speed, line_fraction, batch_size, pin"
            )
        self.gen = GenProgram(iface.ifindex, self.host)  # loaded and parked in the XDP dispatcher
        self.fn, self.pin_note = self.gen.fn, self.gen.pin_note

    def _check_options(self, iface, options: dict, fallbacks: str) -> None:
        """The options every XDP generator takes (vary, peer, link_speed, line_fraction), and
        IFACE's kind: a device that is not a veth must be able to transmit XDP frames."""
        self.vary = vary_mask(options.get("vary", "sport"))
        self.peer_mode = options.get("peer", "auto")
        if self.peer_mode not in PEER_MODES:
            raise InputError(f"peer {self.peer_mode!r}: choose one of {PEER_MODES}")
        self.link_speed, self.line_fraction = options.get("link_speed"), options.get("line_fraction")
        if self.link_speed is not None:
            parse_speed(self.link_speed)
        self.kind = link_kind(iface)
        if self.kind != "veth" and can_transmit_xdp(iface) is False:
            raise InputError(
                f"{iface.name} on {iface.host} cannot transmit XDP frames (its driver lacks "
                f"ndo_xdp_xmit; kind {self.kind or 'device'}): {fallbacks}"
            )

    @classmethod
    def available(cls):
        ok, why = live_frames()
        if not ok:
            return False, why
        if os.geteuid() != 0:
            return False, "needs root (CAP_BPF, CAP_NET_ADMIN): run with sudo"
        try:
            bpf.check_bcc()
            bpf.libbpf()
        except MissingDependency as exc:
            return False, f"{exc} ({FALLBACKS})"
        return True, ""

    # ---- checks before the kernel is touched
    def check(self, spec: TrafficSpec) -> float | None:
        """Validate SPEC for this generator; the rate to hold (None: as fast as possible)."""
        spec.validate()
        if spec.size > MAX_FRAME:
            raise InputError(
                f"size {spec.size}: a live frame must fit one page with the kernel's head- and "
                f"tailroom: at most {MAX_FRAME} bytes"
            )
        ncpu = len(os.sched_getaffinity(0))
        if spec.cpus > ncpu:
            raise InputError(f"cpus {spec.cpus}: this process may use {ncpu} CPU(s); ask for at most {ncpu}")
        if spec.count < spec.cpus:
            raise InputError(f"count {spec.count} is below cpus {spec.cpus}: every sending CPU needs a frame")
        version = 6 if ":" in spec.src_ip else 4
        if spec.flows > 1:
            if spec.proto == "icmp" and self.vary & vary_mask("dport"):
                raise InputError("ICMP has no destination port: vary 'sport' (the echo identifier) or addresses")
            for field, base in (("sport", spec.sport), ("dport", spec.dport)):
                if self.vary & vary_mask(field) and base + spec.flows - 1 > 65535:
                    raise InputError(f"{spec.flows} flows from {field} {base} run past port 65535")
            for field, addr in (("src_ip", spec.src_ip), ("dst_ip", spec.dst_ip)):
                if self.vary & vary_mask(field):
                    low = int.from_bytes(
                        socket.inet_pton(socket.AF_INET6 if version == 6 else socket.AF_INET, addr)[-4:], "big"
                    )
                    if low + spec.flows - 1 > 0xFFFFFFFF:
                        raise InputError(f"{spec.flows} flows from {field} {addr} run past the address range")
        return target_rate(spec, self.link_speed, self.line_fraction)

    # ---- sending
    def send(self, spec: TrafficSpec) -> Offered:
        rate = self.check(spec)
        if self.gen is None:
            raise LabkitError("this xdp generator is closed")
        frame = build(spec.frame(0))
        version = 6 if ":" in spec.src_ip else 4
        fn = self.fn
        self._configure(spec, version, frame)
        notes = [self.pin_note] if self.pin_note else []
        with ExitStack() as peer_stack:
            notes += self._prepare_peer(peer_stack)
            if self.kind == "veth" and can_transmit_xdp(self.iface) is False:
                raise LabkitError(
                    f"{self.iface.name} still cannot transmit XDP frames after preparing its peer "
                    f"(peer={self.peer_mode!r}): {FALLBACKS}"
                )
            before = xmit_counters(self.iface)
            per_cpu, elapsed, stopped = self._run_threads(fn, frame, spec, rate)
            after = xmit_counters(self.iface)
        packets = sum(p["packets"] for p in per_cpu)
        xmit, errors = after[0] - before[0], after[1] - before[1]
        if errors:
            notes.append(
                f"{errors} of {packets} frames were refused by {self.iface.name}'s XDP transmit "
                "(ring full or peer not ready): they never left the sender"
            )
        elif self.kind == "veth" and xmit < packets:
            notes.append(
                f"{self.iface.name} transmitted {xmit} of the {packets} frames the program sent: "
                "the rest were dropped at the sender (does the peer run in NAPI mode?)"
            )
        if stopped:
            notes.append(f"stopped by the time limit ({spec.timeout_s:g} s) after {packets} of {spec.count} frames")
        if rate and elapsed > 0 and packets / elapsed < 0.95 * rate:
            notes.append(
                f"asked {rate:,.0f} pps, reached {packets / elapsed:,.0f} pps: the generator is the limit here"
            )
        self.last = {"rate_target": rate, "xmit": xmit, "xmit_errors": errors, "per_cpu": per_cpu}
        return Offered(
            self.name,
            packets,
            packets * spec.size,
            elapsed,
            cpu_seconds=sum(p["cpu_seconds"] for p in per_cpu),
            per_cpu=per_cpu,
            notes=notes,
        )

    def _configure(self, spec: TrafficSpec, version: int, frame: bytes) -> None:
        self.gen.configure(
            frame,
            flows=spec.flows,
            vary=self.vary,
            version=version,
            proto=spec.proto,
            sport=spec.sport,
            dport=spec.dport,
            src_ip=spec.src_ip,
            dst_ip=spec.dst_ip,
        )

    def _prepare_peer(self, stack: ExitStack) -> list[str]:
        """Make the veth peer able to receive XDP frames for one send; the caveat to record."""
        if self.kind != "veth":
            return []
        peer = self.iface.peer
        if peer is None:
            return ["the veth peer is not part of the topology: its XDP/NAPI state was not checked"]
        state = bpf.xdp_state(peer)
        attached = state.get("IFLA_XDP_ATTACHED")
        mode = self.peer_mode
        if mode == "none":
            ok = can_transmit_xdp(self.iface)
            return (
                []
                if ok
                else [
                    f"peer='none' and {peer.name} has no native XDP program nor GRO: "
                    "the veth drops every frame at the sender"
                ]
            )
        native = attached == "xdp" or bool(state.get("IFLA_XDP_DRV_PROG_ID"))
        if mode == "auto":
            if native:
                return []
            mode = "gro" if attached else "xdp_pass"
        if mode == "xdp_pass":
            if native:
                return []
            if attached:
                raise InputError(
                    f"{peer.name} has a generic XDP program: a native XDP_PASS program cannot be "
                    "added beside it; use peer='gro' or 'auto'"
                )
            if self.peer_program is None:
                self.peer_program = bpf.load("xdp_minimal")
            stack.enter_context(bpf.attach_xdp(peer, self.peer_program.function("xdp_pass_bare", "xdp"), "native"))
            return [
                f"caveat: labkit attached a native XDP_PASS program (xdp_pass_bare) to the receiving veth "
                f"{peer.name} for the send, because a veth delivers XDP frames only to a peer in NAPI mode; "
                "the receiver pays for it (a program run and an skb built from the frame per packet)"
            ]
        # gro
        stack.enter_context(GroOn(peer))
        return [
            f"caveat: labkit turned GRO on on the receiving veth {peer.name} for the send (NAPI mode, "
            "needed to deliver XDP frames"
            + (" beside its generic XDP program" if attached else "")
            + "); the receiver pays for GRO processing"
        ]

    def _run_threads(self, fn, frame: bytes, spec: TrafficSpec, rate: float | None):
        """Send SPEC's frames from spec.cpus CPUs; (per-CPU dicts, seconds, stopped early)."""
        cpus = sorted(os.sched_getaffinity(0))
        n = spec.cpus
        deadline = time.monotonic() + spec.timeout_s
        stop = threading.Event()
        errors: list[BaseException] = []
        senders = [
            CpuSchedule(
                i,
                cpus[i % len(cpus)] if self.pin else None,
                spec.count // n + (1 if i < spec.count % n else 0),
                rate / n if rate else None,
                self.batch_size,
            )
            for i in range(n)
        ]
        for s in senders:
            s.phase = s.index * CHUNK_SECONDS / n
            if n > 1 and rate is not None:
                # several CPUs feed one receive ring (256 frames on a veth): keep bursts below it
                s.chunk = min(s.chunk, SHARED_RING_BURST)
        ready = threading.Barrier(n * THREADS_PER_CPU + 1)

        def worker(sched: "CpuSchedule"):
            try:
                if sched.cpu is not None:
                    os.sched_setaffinity(0, {sched.cpu})
                with thread_in_netns(self.host.netns):
                    ctx = self.gen.context(frame)
                    ready.wait(30)
                    sched.run(fn, frame, ctx, deadline, stop)
            except threading.BrokenBarrierError:
                pass
            except BaseException as exc:
                errors.append(exc)
                stop.set()
                ready.abort()

        threads = [
            threading.Thread(target=worker, args=(s,), name=f"labkit-xdpgen-{s.index}-{k}", daemon=True)
            for s in senders
            for k in range(THREADS_PER_CPU)
        ]
        for t in threads:
            t.start()
        try:
            try:
                ready.wait(30)
            except threading.BrokenBarrierError:
                pass
            t0 = time.monotonic()
            for s in senders:
                s.start(t0)
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.05)
        except BaseException:
            stop.set()  # Ctrl-C / SIGTERM: the threads end after their current chunk
            for t in threads:
                t.join(10)
            raise
        if errors:
            raise errors[0]
        per_cpu = [s.result() for s in senders]
        first = min(s.first_send for s in senders if s.first_send is not None) if any(s.sent for s in senders) else t0
        last = max((s.last_end for s in senders if s.last_end is not None), default=first)
        if rate is None:  # the wall span of the sends
            seconds = last - first
        else:  # the span of the schedule the sends kept: up to the end of the last chunk's slot
            seconds = max(s.schedule_end() for s in senders) - first
        return per_cpu, max(seconds, 1e-9), any(s.stopped for s in senders)

    def close(self) -> None:
        for attr in ("gen", "peer_program"):
            owned = getattr(self, attr, None)
            setattr(self, attr, None)
            if owned is not None:
                owned.close()
