"""BPF_PROG_TEST_RUN through libbpf: run a loaded program on a frame without a NIC, or send its
frames for real in live-frames mode, and measure a program's own cost. `labkit.bpf` re-exports
these names (lessons call `bpf.test_run`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

from labkit import capabilities
from labkit.errors import InputError, LabkitError, MissingDependency, Refused

BPF_F_TEST_XDP_LIVE_FRAMES = 2
XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
TC_ACTIONS = {
    -1: "TC_ACT_UNSPEC",
    0: "TC_ACT_OK",
    1: "TC_ACT_RECLASSIFY",
    2: "TC_ACT_SHOT",
    3: "TC_ACT_PIPE",
    4: "TC_ACT_STOLEN",
    5: "TC_ACT_QUEUED",
    6: "TC_ACT_REPEAT",
    7: "TC_ACT_REDIRECT",
}


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context of an XDP program (for test runs and live frames)."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


_libbpf = None


def libbpf():
    global _libbpf
    if _libbpf is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            lib.bpf_prog_test_run_opts
        except (OSError, AttributeError):
            try:
                lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
            except OSError:
                raise MissingDependency(
                    "libbpf.so.1 not found (Debian package libbpf1): run `sudo make setup`"
                ) from None
        lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
        lib.bpf_prog_test_run_opts.restype = ctypes.c_int
        _libbpf = lib
    return _libbpf


@dataclass
class TestRunResult:
    retval: int
    duration_ns: int  # the kernel's average per repetition
    data_out: bytes
    repeat: int

    @property
    def action(self) -> str:
        return XDP_ACTIONS.get(self.retval, str(self.retval))


def test_run(
    fn_or_fd,
    data: bytes,
    *,
    repeat: int = 1,
    ctx: ctypes.Structure | None = None,
    flags: int = 0,
    batch_size: int = 0,
    data_out_size: int | None = None,
) -> TestRunResult:
    """Run a loaded program on DATA with BPF_PROG_TEST_RUN (no NIC involved).

    With flags=BPF_F_TEST_XDP_LIVE_FRAMES an XDP program's frames really go out
    (XDP_TX/XDP_REDIRECT), which the in-kernel generator builds on."""
    fd = fn_or_fd if isinstance(fn_or_fd, int) else fn_or_fd.fd
    if repeat < 1:
        raise InputError(f"repeat {repeat}: must be at least 1")
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = 0 if flags & BPF_F_TEST_XDP_LIVE_FRAMES else (data_out_size or len(data) + 256)
    buf_out = ctypes.create_string_buffer(out_size) if out_size else None
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    opts.data_in = ctypes.cast(buf_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    if buf_out is not None:
        opts.data_out = ctypes.cast(buf_out, ctypes.c_void_p)
        opts.data_size_out = out_size
    if isinstance(ctx, XdpMd) and ctx.data_end == 0:
        ctx.data_end = len(data)  # the kernel refuses an xdp_md whose data_end is not the frame's end
    if ctx is not None:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    opts.repeat = repeat
    opts.flags = flags
    opts.batch_size = batch_size
    rc = libbpf().bpf_prog_test_run_opts(fd, ctypes.byref(opts))
    if rc != 0:
        err = ctypes.get_errno() or -rc
        if flags & BPF_F_TEST_XDP_LIVE_FRAMES and err in LIVE_FRAMES_REFUSALS:
            exc = live_frames_refused(err)  # a refusal (not a malformed call) is kept: later choices avoid it
            raise capabilities.refused("live_frames", exc) if err != errno.EINVAL else exc
        raise LabkitError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)} (errno {err})")
    out = buf_out.raw[: opts.data_size_out] if buf_out is not None else b""
    return TestRunResult(opts.retval, opts.duration, out, repeat)


#: errnos with which a kernel refuses BPF_PROG_RUN in live-frames mode: the likely reasons, most likely first
_CONTAINER, _POLICY, _OLD = "a container", "a security policy such as lockdown or an LSM", "a kernel before 5.18"
LIVE_FRAMES_REFUSALS = {
    errno.EPERM: (_CONTAINER, _POLICY, "missing capabilities (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)", _OLD),
    errno.EINVAL: (
        f"{_OLD} (no live-frames mode)",
        "a call that does not fit live frames (an XDP program, no other flag, batch_size at most 256)",
        _CONTAINER,
        _POLICY,
    ),
    errno.EOPNOTSUPP: (f"{_OLD}, or one built without it", _CONTAINER, _POLICY),
}


def live_frames_refused(err: int) -> Refused:
    """The error for BPF_PROG_RUN in live-frames mode refused with ERR: what, why, what instead."""
    return Refused(
        f"BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) was refused: {os.strerror(err)} "
        f"({errno.errorcode.get(err, err)})\n  likely reasons: "
        + "; ".join(LIVE_FRAMES_REFUSALS.get(err, LIVE_FRAMES_REFUSALS[errno.EPERM]))
        + "\n  instead: choose another generator: generator='trafgen', 'xdp_loop' or 'testpmd', or 'auto', "
        "which picks one that works here (`labkit doctor` shows what this machine refuses)",
        err,
    )


def program_cost_ns(fn, packet: bytes, repeat: int = 1_000_000, trials: int = 5) -> list[float]:
    """The program's own cost per packet in ns (BPF_PROG_TEST_RUN average), one value per trial."""
    return [float(test_run(fn, packet, repeat=repeat).duration_ns) for _ in range(trials)]
