"""The control plane of bpf/xdp_gen.c: the in-kernel generator's program (loaded for one
sending interface, its template and flow configuration in maps, the `struct xdp_md`
context its live-frame runs need, parked in the kernel's XDP dispatcher) and the sink
that counts what arrives per flow. The traffic backend built on it, with threads,
pacing and the veth peer's needs, is labkit/traffic/xdpgen.py.

    with GenProgram(iface) as g:                  # compiles bpf/xdp_gen.c for IFACE
        g.configure(frame, flows=64, vary=vary_mask("sport"), version=4, proto="udp",
                    sport=1024, dport=9, src_ip="10.11.0.1", dst_ip="10.11.0.2")
        bpf.test_run(g.fn, frame, repeat=n, ctx=g.context(frame),
                     flags=bpf.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64)

    with GenSink() as s, bpf.attach_xdp(rcv, s.function(), "native"):
        ...
        s.total(), s.flows()

Flows. With `flows > 1` the program (`xdp_gen`) rewrites each frame from a per-CPU
sequence f = 0..flows-1, 0, ..: the fields named by `vary` (sport, dport, src_ip, dst_ip,
several at once moving together) become base + f, and the IPv4 header and L4 checksums
are updated incrementally. One program run, one frame, no extra system calls: the rate
stays high and every sending CPU cycles through exactly `flows` flows (all of them
appear once each CPU sends at least `flows` frames). With one flow the frame goes out
untouched after one map lookup.

Where frames can go. BPF_PROG_RUN resolves the context's ingress ifindex in the
caller's network namespace, so a sending thread enters the interface's namespace itself
(`thread_in_netns`); the kernel's xdp-features (`can_transmit_xdp`) say whether an
interface can transmit XDP frames now, and `xmit_counters` what it refused.

The vary bits, the L4 kinds and the template's size are the enums of
bpf/include/xdp_gen.h: `header()` reads them from it, never repeated here.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
import threading
from contextlib import contextmanager, suppress

from labkit import bpf, bpf_enums
from labkit.dataplanes import ControlPlane, read_when_needed
from labkit.errors import InputError, LabkitError
from labkit.testbed.topology import Interface

HEADER = "xdp_gen.h"


def _header() -> dict:
    """VARY, option `vary`'s bits, which fields move with the flow index (enum xdp_gen_vary:
    {"sport": 1, "dport": 2, "src_ip": 4, "dst_ip": 8}); L4, gen_config.l4 per (protocol, IP
    version): which checksum the rewrite updates (enum xdp_gen_l4); TEMPLATE_BYTES (HDR_COPY):
    the frame's first bytes, restored from the template on every run."""
    l4 = bpf_enums.enum_values(HEADER, "xdp_gen_l4")
    return {
        "VARY": {name[len("VARY_") :].lower(): v for name, v in bpf_enums.enum_values(HEADER, "xdp_gen_vary").items()},
        "L4": {
            ("udp", 4): l4["L4_UDP"],
            ("udp", 6): l4["L4_UDP"],
            ("tcp", 4): l4["L4_TCP"],
            ("tcp", 6): l4["L4_TCP"],
            ("icmp", 4): l4["L4_ICMP"],
            ("icmp", 6): l4["L4_ICMPV6"],
        },
        "TEMPLATE_BYTES": bpf_enums.enum_values(HEADER, "xdp_gen_template")["HDR_COPY"],
    }


header, __getattr__ = read_when_needed(_header)
MAX_FRAME = 3400  # a live frame lives in one 4 KiB page beside headroom and skb_shared_info
MAX_BATCH = 256  # TEST_XDP_MAX_BATCH in the kernel
NETDEV_XDP_ACT_NDO_XMIT = 4


def vary_mask(vary) -> int:
    """The gen_config.vary bits of VARY: a name or names among VARY's keys."""
    names, bits = (vary,) if isinstance(vary, str) else tuple(vary), header().VARY
    if not names or any(n not in bits for n in names):
        raise InputError(f"vary {vary!r}: name one or more of {sorted(bits)}")
    return sum(bits[n] for n in set(names))  # distinct bits: the sum is their union


def low32(addr: str) -> int:
    """An IPv4 address, or the last 32 bits of an IPv6 one, as a host-order number."""
    return int.from_bytes(ipaddress.ip_address(addr).packed[-4:], "big")


# ---------------------------------------------------------------- namespaces, per thread
_CLONE_NEWNET = 0x40000000
_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabkitError(f"setns into a network namespace failed: {os.strerror(err)}")


@contextmanager
def thread_in_netns(netns: str | None):
    """Move the calling thread (only it) into network namespace NETNS (/run/netns/NETNS)
    and back on exit. None: stay where it is."""
    if not netns:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def in_netns(netns: str | None, fn, *args):
    """FN(*ARGS) run in a helper thread inside NETNS (for netlink sockets bound there)."""
    box = {}

    def work():
        try:
            with thread_in_netns(netns):
                box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=work, name="labkit-netns", daemon=True)
    t.start()
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---------------------------------------------------------------- xdp-features (netlink "netdev")
def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _attrs(buf: bytes) -> dict:
    out, i = {}, 0
    while i + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, i)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[i + 4 : i + n]
        i += (n + 3) & ~3
    return out


def _genl(sock, family: int, cmd: int, attrs: bytes, seq: int) -> dict:
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), family, 1, seq, 0) + body)  # NLM_F_REQUEST
    data = sock.recv(65536)
    n, kind = struct.unpack_from("=IH", data, 0)
    if kind == 2:  # NLMSG_ERROR
        err = -struct.unpack_from("=i", data, 16)[0]
        raise OSError(err, os.strerror(err))
    return _attrs(data[20:n])


def _query_xdp_features(ifindex: int) -> int | None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16) as sock:  # NETLINK_GENERIC
        sock.settimeout(5)
        sock.bind((0, 0))
        try:  # CTRL_CMD_GETFAMILY "netdev" on GENL_ID_CTRL
            fam = _genl(sock, 0x10, 3, _nla(2, b"netdev\0"), 1)
        except OSError:
            return None  # before kernel 6.3: no netdev family
        family = struct.unpack("=H", fam[1][:2])[0]
        dev = _genl(sock, family, 1, _nla(1, struct.pack("=I", ifindex)), 2)  # NETDEV_CMD_DEV_GET
        return int.from_bytes(dev[3], "little") if 3 in dev else None  # NETDEV_A_DEV_XDP_FEATURES


def xdp_features(iface) -> int | None:
    """The kernel's xdp-features bit set of IFACE (NETDEV_XDP_ACT_*), None where the
    kernel cannot say (before 6.3). NDO_XMIT (4): it can transmit XDP frames now (a veth:
    only while its peer has a native XDP program or GRO on)."""
    with suppress(OSError):
        return in_netns(iface.host.netns, _query_xdp_features, iface.ifindex)
    return None


def can_transmit_xdp(iface) -> bool | None:
    feats = xdp_features(iface)
    return None if feats is None else bool(feats & NETDEV_XDP_ACT_NDO_XMIT)


def link_kind(iface) -> str | None:
    """The link kind ('veth', 'bridge', ...), None for a plain device (a NIC, loopback)."""
    with iface.host.ipr() as ipr:
        info = ipr.link("get", index=iface.ifindex)[0].get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def xmit_counters(iface) -> tuple[int, int]:
    """(frames transmitted by ndo_xdp_xmit, frames it refused) from `ethtool -S`, summed
    over queues; (0, 0) where the driver exports neither."""
    try:
        stats = iface.ethtool_stats()
    except Exception:
        return 0, 0
    sent = sum(v for k, v in stats.items() if re.search(r"xdp_xmit$", k))
    errs = sum(v for k, v in stats.items() if re.search(r"xdp_xmit_err", k))
    return sent, errs


# ---------------------------------------------------------------- the program
class DispatcherPin:
    """Keep the generator's program in the kernel's XDP dispatcher while the generator lives.

    BPF_PROG_RUN with repeat > 1 installs the program in the XDP dispatcher and removes it
    again, each with an RCU grace period: about 24 ms per call here, serialized across the
    machine, which would leave pacing at 40 calls a second. A program attached to any
    interface stays in the dispatcher, so this attaches it in generic mode to the loopback
    of the sending host (where it passes every packet: it transmits only frames whose
    ingress is the sending interface, i.e. its own live frames). Calls then cost well under
    a millisecond. Exit detaches it. Where the loopback already has an XDP program the pin
    is skipped and the cost returned as a note."""

    def __init__(self, host, fn):
        self.host, self.fn = host, fn
        self.attachment = None

    def __enter__(self) -> str:
        with self.host.ipr() as ipr:
            idx = ipr.link_lookup(ifname="lo")
        if not idx:
            return "no loopback on the sending host: every send call pays ~24 ms of XDP dispatcher updates"
        lo = Interface(self.host, "lo", idx[0], "00:00:00:00:00:00", None, None, real=self.host.netns is None)
        if bpf.xdp_state(lo).get("IFLA_XDP_ATTACHED"):
            return (
                "the sending host's loopback already has an XDP program, so the generator could not keep "
                "its program in the XDP dispatcher: every send call pays ~24 ms (pacing is coarser)"
            )
        self.attachment = bpf.attach_xdp(lo, self.fn, "generic").attach()
        return ""

    def __exit__(self, *exc):
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None


class GenProgram(ControlPlane):
    """bpf/xdp_gen.c's generator loaded for the interface with ifindex IFINDEX (it sends
    only frames whose context names that ingress). With HOST given, the program is parked
    on HOST's loopback (DispatcherPin) until close; `pin_note` says why it could not be.
    Context manager: exit unparks and unloads."""

    def __init__(self, ifindex: int, host=None):
        self.ifindex = ifindex
        self.pin = None
        self.pin_note = ""
        self.program = bpf.load("xdp_gen", GEN_IFINDEX=ifindex)
        try:
            self.fn = self.program.function("xdp_gen", "xdp")
            if host is not None:
                pin = DispatcherPin(host, self.fn)
                self.pin_note = pin.__enter__()
                self.pin = pin
        except BaseException:
            self.close()
            raise

    def configure(
        self,
        frame: bytes,
        *,
        flows: int = 1,
        vary: int | None = None,
        version: int = 4,
        proto: str = "udp",
        sport: int = 0,
        dport: int = 0,
        src_ip: str = "0.0.0.0",
        dst_ip: str = "0.0.0.0",
    ) -> None:
        """The template (FRAME's headers) and the flow configuration for the next runs:
        FLOWS flows moving the fields of VARY (bits, see vary_mask) from the base values
        SPORT, DPORT, SRC_IP, DST_IP (VARY None: the source port). The per-CPU flow sequences
        restart at flow 0."""
        h = header()
        if (proto, version) not in h.L4:
            raise InputError(f"protocol {proto!r} over IPv{version}: the generator sends {sorted(h.L4)}")
        vary = h.VARY["sport"] if vary is None else vary
        table = self.program.map("gen_config")
        table[ctypes.c_int(0)] = table.Leaf(
            flows, vary, int(version == 6), h.L4[(proto, version)], sport, dport, low32(src_ip), low32(dst_ip)
        )
        tpl = self.program.map("gen_template")
        head = frame[: h.TEMPLATE_BYTES].ljust(h.TEMPLATE_BYTES, b"\0")
        tpl[ctypes.c_int(0)] = tpl.Leaf((ctypes.c_uint8 * h.TEMPLATE_BYTES)(*head))
        self.program.map("gen_seq").clear()

    def context(self, frame: bytes) -> bpf.XdpMd:
        """The `struct xdp_md` of a live-frames run of FRAME out of the interface."""
        return bpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=self.ifindex)

    def close(self) -> None:
        pin, self.pin = self.pin, None
        try:
            if pin is not None:
                pin.__exit__(None, None, None)
        finally:
            prog, self.program = getattr(self, "program", None), None
            if prog is not None:
                prog.close()


class GenSink(ControlPlane):
    """bpf/xdp_gen.c's sink: counts frames and bytes per CPU and frames per flow, then
    returns VERDICT (1 XDP_DROP, 2 XDP_PASS). Attach `function()` to the receiver."""

    def __init__(self, verdict: int = 1):
        self.program = bpf.load("xdp_gen", SINK_VERDICT=verdict)

    def function(self):
        return self.program.function("xdp_gen_sink", "xdp")

    def total(self) -> dict:
        """{'packets': n, 'bytes': b} the sink has seen, summed over CPUs."""
        return bpf.percpu_sum(self.program.map("sink_counters")).get(0, {"packets": 0, "bytes": 0})

    def flows(self) -> dict:
        """{(src, dst, sport, dport, proto): frames}: addresses as text, ports host order."""
        out = {}
        for k, v in self.program.map("sink_flows").items():
            v6 = any(k.src[4:]) or any(k.dst[4:])
            size = 16 if v6 else 4
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            key = (
                socket.inet_ntop(fam, bytes(k.src[:size])),
                socket.inet_ntop(fam, bytes(k.dst[:size])),
                socket.ntohs(k.sport),
                socket.ntohs(k.dport),
                k.proto,
            )
            out[key] = int(v.value)
        return out
