"""The control plane of bpf/latency.c: one-way latency probes and their delays.

    with LatencyProbe(topo.iface("snd"), dst_mac=rcv.mac, dst_ip="10.11.0.2") as probe, \\
            probe.peer_ready(), bpf.attach_xdp(rcv, probe.sink(), "native"):
        probe.send(2000, rate_pps=1000)           # probes, paced, from the sender
        probe.samples()                           # every probe's delay (ns), in arrival order
        probe.readings()                          # those and the counts: probes, sent, other, clock_back, max_ns

The sender's program stamps each probe with the kernel's clock as it leaves (how it
leaves is below); the sink's program on the receiver reads the same clock as the probe
arrives and keeps the difference, every probe's (up to SAMPLES between two `reset`s), with
the exact maximum; `labkit.measure.hdr` makes an HDR histogram of them. Every host of the
testbed is a namespace of one kernel, so both ends share one clock and no synchronisation is
needed. Frames that are not probes (background load) are counted and dropped alike, so
the sink can end the path for load and probes at once.

`under_load(load, ...)` sends the probes while LOAD (a callable that sends background
traffic, e.g. a generator's `send` at a fixed rate) runs in another thread.

How a probe leaves (`probe.method`, chosen once per probe from
`capabilities.probe("live_frames")` and recorded as the run's "latency probes" choice;
`METHODS` says each in words):
- ``live_frames``: lat_probe run with BPF_PROG_RUN in live-frames mode, one frame per call,
  paced from userspace; the probe leaves as an XDP frame. A veth delivers XDP frames only
  to a peer in NAPI mode: `peer_ready()` attaches the bare XDP_PASS program to the sender's
  peer for the measurement where nothing native is there (and takes it off after), as the
  in-kernel generator does for its own sends.
- ``af_packet+tc``, where live frames are refused: an AF_PACKET socket in the sender's
  namespace sends the probe frame, and lat_stamp on the sender's tc egress (a clsact qdisc
  attached only while probes are sent) stamps it as it leaves, with the header lat_probe
  writes. The probe crosses the sender's qdisc and reaches the peer as a socket buffer, so
  `peer_ready()` changes nothing.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

from labkit import bpf, bpf_enums, capabilities, packets
from labkit.dataplanes import read_when_needed
from labkit.dataplanes.minimal import Minimal
from labkit.dataplanes.xdp_gen import can_transmit_xdp, thread_in_netns
from labkit.errors import InputError, LabkitError, MissingDependency

SOURCE, HEADER = "latency", "latency.h"


def _header() -> dict:
    """bpf/include/latency.h: the frame's layout (_F, its enum; PORT, MAGIC, PAYLOAD,
    TEMPLATE), SAMPLES (the delays the sink keeps between two resets) and COUNTS, the slots
    of `lat_counts` by name (probes, other, ...)."""
    f, k, c = (bpf_enums.enum_values(HEADER, e) for e in ("latency_frame", "latency_samples", "latency_counts"))
    return {
        "_F": f,
        **{n[4:]: f[n] for n in ("LAT_PORT", "LAT_MAGIC", "LAT_PAYLOAD", "LAT_TEMPLATE")},
        "SAMPLES": k["LAT_SAMPLES"],
        "COUNTS": {name[4:].lower(): v for name, v in c.items() if name != "LAT_COUNTS"},
    }


header, __getattr__ = read_when_needed(_header)
MAX_RATE = 100_000  # probes per second: above it the probes are load, not a probe
LIVE_FRAMES, AF_PACKET = "live_frames", "af_packet+tc"
#: how probes can be sent (`LatencyProbe.method`), in words for tables and interpretations
METHODS = {
    LIVE_FRAMES: "sent and stamped by an XDP program run with BPF_PROG_RUN in live-frames mode",
    AF_PACKET: "sent with AF_PACKET and stamped at the sender's tc egress",
}
PURPOSE = "latency probes"  # the name of the choice in a run's metadata


def choose_method() -> str:
    """How probes are sent in this process: live frames where the probe allows them, else
    AF_PACKET stamped at tc egress; recorded as the run's choice."""
    live = capabilities.probe("live_frames")
    if live.ok:
        capabilities.chose(PURPOSE, LIVE_FRAMES, "BPF_PROG_RUN live frames work here")
        return LIVE_FRAMES
    tc = capabilities.probe("tc_clsact")
    if not tc.ok:
        raise MissingDependency(
            f"latency probes cannot be sent here: live frames are refused ({live.reason}) and so "
            f"are tc programs, which stamp the fallback's probes ({tc.reason})"
        )
    capabilities.chose(PURPOSE, AF_PACKET, f"live frames refused: {live.reason}")
    return AF_PACKET


class LatencyProbe:
    """bpf/latency.c loaded for SENDER (a topology interface: probes leave through it),
    addressed to DST_MAC/DST_IP. METHOD (one of METHODS) forces how probes are sent; by
    default the capability probe decides at the first use. Context manager: exit unloads it."""

    def __init__(
        self, sender, *, dst_mac: str, dst_ip: str, src_ip: str | None = None, size: int = 64, method: str | None = None
    ):
        h = header()
        if not isinstance(size, int) or not h.TEMPLATE <= size <= 1514:
            raise InputError(f"probe size {size!r}: {h.TEMPLATE}..1514 bytes (the probe's headers take {h.TEMPLATE})")
        if method is not None and method not in METHODS:
            raise InputError(
                f"probe method {method!r}: choose one of {', '.join(METHODS)} (or None: the probe decides)"
            )
        if method == LIVE_FRAMES:
            capabilities.require("live_frames")
        if method is not None:
            capabilities.chose(PURPOSE, method, "asked for by the caller")
        self.sender, self.size, self._method = sender, size, method
        spec = packets.FrameSpec(
            sender.mac,
            dst_mac,
            src_ip or sender.address or "10.11.0.1",
            dst_ip,
            proto="udp",
            sport=h.PORT,
            dport=h.PORT,
            size=size,
        )
        spec.validate()
        self.frame = probe_frame(spec)
        self.program = bpf.load(SOURCE, PROBE_IFINDEX=sender.ifindex)
        self._minimal = None
        try:
            self.fn = self.program.function("lat_probe", "xdp")
            tpl = self.program.map("lat_template")
            tpl[ctypes.c_int(0)] = tpl.Leaf((ctypes.c_uint8 * h.TEMPLATE)(*self.frame[: h.TEMPLATE]))
        except BaseException:
            self.close()
            raise

    @classmethod
    def on_loopback(cls) -> "LatencyProbe":
        """Loaded for this namespace's loopback, a test run's default ingress: BPF_PROG_TEST_RUN
        of the probe program then takes its sending path (costs, checks on crafted frames)."""
        return cls(
            SimpleNamespace(
                name="lo",
                ifindex=socket.if_nametoindex("lo"),
                mac="02:00:00:00:00:0a",
                address="10.11.0.1",
                peer=None,
                host=SimpleNamespace(netns=None),
            ),
            dst_mac="02:00:00:00:00:0b",
            dst_ip="10.11.0.2",
        )

    @property
    def method(self) -> str:
        """How this probe's frames are sent and stamped (a key of METHODS), decided once."""
        if self._method is None:
            self._method = choose_method()
        return self._method

    def sink(self):
        """The sink program, to attach to the receiving interface."""
        return self.program.function("lat_sink", "xdp")

    @contextmanager
    def peer_ready(self):
        """The sender's veth peer able to receive the probes while inside (see the module
        docstring); nothing is changed where it already can, or where probes are not XDP frames."""
        peer = getattr(self.sender, "peer", None)
        if self.method != LIVE_FRAMES or peer is None or can_transmit_xdp(self.sender) is not False:
            yield
            return
        if bpf.xdp_state(peer).get("IFLA_XDP_ATTACHED"):
            raise LabkitError(
                f"{peer.name} has a generic XDP program, so the sender's XDP frames cannot reach it: "
                "attach the data path's program in native mode for latency probes"
            )
        if self._minimal is None:
            self._minimal = Minimal()
        with bpf.attach_xdp(peer, self._minimal.pass_(), "native"):
            yield

    def send(self, count: int, rate_pps: float = 1000.0, timeout_s: float = 60.0, stop=None) -> int:
        """COUNT probes at RATE_PPS, one per system call, the way `method` says; returns
        how many were sent."""
        if not isinstance(count, int) or not 1 <= count <= header().SAMPLES:
            raise InputError(f"probe count {count!r}: 1 .. {header().SAMPLES} (the delays the sink keeps per reset)")
        if not 0 < rate_pps <= MAX_RATE:
            raise InputError(f"probe rate {rate_pps!r}: 0 < rate <= {MAX_RATE} per second (probes, not load)")
        sending = {LIVE_FRAMES: self._live_frames, AF_PACKET: self._af_packet}[self.method]
        tried = sent = 0
        with sending() as send_one:
            t0 = time.monotonic()
            deadline = t0 + timeout_s
            while tried < count and time.monotonic() < deadline and not (stop and stop.is_set()):
                delay = t0 + tried / rate_pps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent += send_one()
                tried += 1
        return sent

    @contextmanager
    def _live_frames(self):
        """One probe per call: lat_probe run with BPF_PROG_RUN in live-frames mode."""
        ctx = bpf.XdpMd(data=0, data_end=len(self.frame), ingress_ifindex=self.sender.ifindex)

        def send_one() -> bool:
            bpf.test_run(self.fn, self.frame, repeat=1, ctx=ctx, flags=bpf.BPF_F_TEST_XDP_LIVE_FRAMES)
            return True

        with thread_in_netns(self.sender.host.netns):
            yield send_one

    @contextmanager
    def _af_packet(self):
        """One probe per call: the frame sent with AF_PACKET out of the sender, stamped by
        lat_stamp on its tc egress (attached while inside)."""
        stamp = self.program.function("lat_stamp", "tc")
        with (
            bpf.attach_tc(self.sender, stamp, "egress"),
            thread_in_netns(self.sender.host.netns),
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock,
        ):
            sock.bind((self.sender.name, 0))

            def send_one() -> bool:
                try:
                    return sock.send(self.frame) == len(self.frame)
                except OSError as exc:
                    if exc.errno in (errno.ENOBUFS, errno.EAGAIN):  # the sender's queue is full: lost
                        return False
                    raise LabkitError(
                        f"sending a latency probe with AF_PACKET on {self.sender.name} failed: {exc}"
                    ) from exc

            yield send_one

    # ---- reading
    def counts(self) -> dict:
        """{probes, other, clock_back, sent, max_ns} summed over CPUs (max_ns: the largest)."""
        table = self.program.map("lat_counts")
        out = {}
        for name, slot in header().COUNTS.items():
            vals = [int(v) for v in table[ctypes.c_int(slot)]]
            out[name] = max(vals) if name == "max_ns" else sum(vals)
        return out

    def samples(self) -> list[int]:
        """The delay (ns) of every probe the sink took since the last `reset`, in arrival order."""
        kept = int(self.program.map("lat_kept")[ctypes.c_int(0)].value)
        if kept > header().SAMPLES:
            raise LabkitError(
                f"{kept} probes reached the sink since the last reset, which keeps {header().SAMPLES} "
                "delays: reset between points"
            )
        # a slot the sink has claimed (lat_kept) but not yet written while this reads is still
        # 0: left out, since no probe crosses in 0 ns (stamp and arrival are separate runs)
        return [ns for ns in self.program.map("lat_samples")[ctypes.c_int(0)].ns[:kept] if ns > 0]

    def readings(self) -> dict:
        """The probes since the last `reset`: their delays ('samples', ns) and the counts
        (probes, sent, other, clock_back, max_ns: the exact maximum)."""
        return {"samples": self.samples(), **self.counts()}

    def reset(self) -> None:
        for name in ("lat_kept", "lat_samples", "lat_counts", "lat_seq"):
            self.program.map(name).clear()

    def under_load(self, load, count: int, rate_pps: float = 1000.0, warmup_s: float = 0.2) -> dict:
        """Probe while LOAD() runs in another thread (started WARMUP_S before the probes);
        the `readings` of those probes, and what LOAD returned as 'load'. LOAD should last
        longer than the probes (count / rate_pps seconds)."""
        box, stop = {}, threading.Event()

        def work():
            try:
                box["load"] = load()
            except BaseException as exc:
                box["error"] = exc

        self.reset()
        t = threading.Thread(target=work, name="labkit-latency-load", daemon=True)
        t.start()
        try:
            time.sleep(warmup_s)
            self.send(count, rate_pps, stop=stop)
        finally:
            t.join(120)
        if "error" in box:
            raise box["error"]
        out = self.readings()
        out["load"] = box.get("load")
        return out

    def close(self) -> None:
        for attr in ("_minimal", "program"):
            owned = getattr(self, attr, None)
            setattr(self, attr, None)
            if owned is not None:
                owned.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def probe_frame(spec: packets.FrameSpec) -> bytes:
    """A probe: SPEC's frame with LAT_MAGIC opening its UDP payload and no UDP checksum
    (the sender rewrites the stamp on every send; forwarders do not check it)."""
    frame, h = bytearray(packets.build(spec)), header()
    frame[h.PAYLOAD - 2 : h.PAYLOAD] = b"\0\0"  # UDP checksum: none
    frame[h.PAYLOAD : h.PAYLOAD + 4] = struct.pack("=I", h.MAGIC)
    return bytes(frame)


@contextmanager
def sink_neighbour(host, ip: str, mac: str, dev: str, timeout: float = 10):
    """A permanent neighbour entry on HOST for the sink IP (MAC) out of DEV while in the
    `with`: the sink answers no ARP (its program ends every frame's path)."""
    host.run(["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"], timeout=timeout)
    try:
        yield
    finally:
        host.run(["ip", "neigh", "del", ip, "dev", dev], check=False, timeout=timeout)
