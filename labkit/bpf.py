"""eBPF programs: load with bcc from `bpf/NAME.c`, attach (XDP native/generic, tc clsact),
read per-CPU counters; BPF_PROG_TEST_RUN (labkit.bpf_testrun) is re-exported here.

    with bpf.load("drop_filter", MAX_RULES=64) as prog:
        fn = prog.function("xdp_filter", "xdp")
        with bpf.attach_xdp(iface, fn, mode="generic"):
            ...
        print(bpf.percpu_sum(prog.map("counters")))

Every attachment is a context manager whose exit detaches, on any exit path. Programs are
loaded in labkit's own process and attached by file descriptor, through netlink (pyroute2)
inside the interface's namespace.
"""

from __future__ import annotations

import errno
import os
import platform
from pathlib import Path

from labkit import (
    BPF_DIR,
    verifier,  # fd 2 captured around compile and load: errors carry the log
)
from labkit.bpf_testrun import (  # noqa: F401 (re-exported: bpf.test_run is how lessons and experiments call it)
    BPF_F_TEST_XDP_LIVE_FRAMES,
    LIVE_FRAMES_REFUSALS,
    TC_ACTIONS,
    XDP_ACTIONS,
    TestRunResult,
    XdpMd,
    libbpf,
    live_frames_refused,
    program_cost_ns,
    test_run,
)
from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.testbed import runs, signals


def source_dir() -> Path:
    """Where programs compile from: the project's bpf/, or a remote session's copy of it
    (LABKIT_BPF_DIR, set by the session on that host)."""
    return Path(os.environ.get("LABKIT_BPF_DIR") or BPF_DIR)


def include_dir() -> Path:
    """The shared C headers (parsing, counters, checksums) and each program's enums: on
    every program's include path."""
    return source_dir() / "include"


XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


# ---------------------------------------------------------------- prerequisites
def check_bcc():
    """Import Debian's bcc, or say exactly what is missing and how to get it."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "bcc is not importable: install Debian's python3-bpfcc (never PyPI's 'bcc', an unrelated "
            "package) and link it into the environment: `sudo make setup` does both."
        ) from None
    headers = Path(os.environ.get("LABKIT_KERNEL_HEADERS", f"/lib/modules/{platform.release()}/build"))
    if not (headers / "include").is_dir() and not (headers / "Makefile").exists():
        raise MissingDependency(
            f"kernel headers not found at {headers}: bcc compiles programs against them. "
            "`sudo make setup` installs them (linux-headers-$(uname -r), or Debian's generic headers "
            "linked there when the running kernel has no headers package)."
        )
    return bcc


# ---------------------------------------------------------------- programs
class Program:
    """A bcc module compiled from bpf/SOURCE.c. Context manager: exit unloads it."""

    KINDS = {"xdp": "XDP", "tc": "SCHED_CLS", "socket": "SOCKET_FILTER"}

    def __init__(self, source: str, defines: dict | None = None, cflags: list[str] | None = None):
        path = Path(source)
        if not path.suffix:
            path = source_dir() / f"{source}.c"
        if not path.is_file():
            have = sorted(p.stem for p in source_dir().glob("*.c"))
            raise InputError(f"no eBPF source {path}: programs in {source_dir()}: {', '.join(have)}")
        self.source = path
        self.defines = dict(defines or {})
        flags = [f"-I{include_dir()}", f"-I{path.parent}"] + list(cflags or [])
        for name, value in self.defines.items():
            if not str(name).isidentifier():
                raise InputError(f"define {name!r} is not a C identifier")
            flags.append(f"-D{name}={int(value) if isinstance(value, bool) else value}")
        runs.require_root("loading eBPF programs")
        bcc = check_bcc()
        self._bcc = bcc
        try:
            self.bpf = verifier.compile(bcc.BPF, path.name, src_file=str(path), cflags=flags)
        except Exception as exc:
            raise LabkitError(f"bcc could not compile or load {path.name}: {exc}") from exc
        self._fns = {}

    def function(self, name: str, kind: str = "xdp"):
        """The loaded program NAME of KIND ('xdp', 'tc' or 'socket'); has `.fd`."""
        if kind not in self.KINDS:
            raise InputError(f"program kind {kind!r}: choose one of {sorted(self.KINDS)}")
        key = (name, kind)
        if key not in self._fns:
            try:
                self._fns[key] = verifier.load_func(
                    self.bpf, name, getattr(self._bcc.BPF, self.KINDS[kind]), self.source.name
                )
            except Exception as exc:
                raise LabkitError(f"the verifier or loader refused {name} in {self.source.name}: {exc}") from exc
        return self._fns[key]

    def map(self, name: str):
        return self.bpf[name]

    def close(self) -> None:
        bpf, self.bpf = getattr(self, "bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(source: str, **defines) -> Program:
    """Compile and load bpf/SOURCE.c with -DNAME=value for each keyword."""
    return Program(source, defines)


def percpu_sum(table) -> dict:
    """{key: value summed over CPUs} of a per-CPU array/hash; struct values are summed
    field by field into dicts."""
    out = {}
    for k, per_cpu in table.items():
        key = k.value if hasattr(k, "value") else k
        vals = list(per_cpu)
        if vals and hasattr(vals[0], "_fields_"):
            out[key] = {f: sum(getattr(v, f) for v in vals) for f, _ in vals[0]._fields_}
        else:
            out[key] = sum(int(v) for v in vals)
    return out


# ---------------------------------------------------------------- attachments
def _xdp_attached(ipr, ifindex) -> dict:
    attrs = ipr.link("get", index=ifindex)[0].get_attr("IFLA_XDP") or {}
    return dict(attrs.get("attrs", []))


def _set_xdp(ipr, ifindex: int, fd: int, flags: int) -> None:
    ipr.link("set", index=ifindex, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})


class _Attachment:
    """A context manager whose entry is `attach()` and whose exit is `detach()`."""

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()


class XdpAttachment(_Attachment):
    """An XDP program on an interface. Exit (or `detach()`) removes it; harmless twice."""

    def __init__(self, iface, fn, mode: str = "native"):
        if mode not in XDP_MODES:
            raise InputError(f"XDP mode {mode!r}: choose 'native' (driver) or 'generic' (skb)")
        self.iface, self.fn, self.mode = iface, fn, mode
        self.flags = XDP_MODES[mode]
        self._record = None
        self.attached = False

    def attach(self) -> "XdpAttachment":
        host = self.iface.host
        with signals.deferred_signals():
            with host.ipr() as ipr:
                current = _xdp_attached(ipr, self.iface.ifindex)
                if current.get("IFLA_XDP_ATTACHED"):
                    raise LabkitError(
                        f"{self.iface.name} on {host} already has an XDP program "
                        f"({current.get('IFLA_XDP_ATTACHED')}, id {current.get('IFLA_XDP_PROG_ID')}): "
                        "detach it first, or run `labkit clean` if a crashed run left it"
                    )
                try:
                    _set_xdp(ipr, self.iface.ifindex, self.fn.fd, self.flags)
                except Exception as exc:
                    hint = (
                        " — the driver may not support native XDP; try mode='generic'" if self.mode == "native" else ""
                    )
                    raise LabkitError(
                        f"attaching XDP ({self.mode}) to {self.iface.name} on {host} failed: {exc}{hint}"
                    ) from exc
                self.attached = True
            if self.iface.real:
                self._record = {"kind": "xdp", "ifname": self.iface.name, "flags": self.flags}
                _run_note(self._record)
        return self

    def detach(self) -> None:
        if not self.attached:
            return
        with self.iface.host.ipr() as ipr:
            try:
                _set_xdp(ipr, self.iface.ifindex, -1, self.flags)  # fd -1: detach
            except Exception as exc:
                if getattr(exc, "code", None) != errno.ENODEV:  # the link is already gone
                    raise
        self.attached = False
        if self._record:
            _run_forget(self._record)


class TcAttachment(_Attachment):
    """A tc clsact qdisc with one direct-action BPF filter on ingress or egress.
    Exit removes the qdisc (and with it the filter); harmless twice."""

    PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}

    def __init__(self, iface, fn, direction: str = "ingress"):
        if direction not in self.PARENTS:
            raise InputError(f"tc direction {direction!r}: choose 'ingress' or 'egress'")
        self.iface, self.fn, self.direction = iface, fn, direction
        self._record = None
        self._own_qdisc = False

    def attach(self) -> "TcAttachment":
        host = self.iface.host
        with signals.deferred_signals():
            with host.ipr() as ipr:
                kinds = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(self.iface.ifindex)]
                if "clsact" not in kinds:
                    ipr.tc("add", "clsact", self.iface.ifindex)
                    self._own_qdisc = True
                    if self.iface.real:
                        self._record = {"kind": "clsact", "ifname": self.iface.name}
                        _run_note(self._record)
                try:
                    ipr.tc(
                        "add-filter",
                        "bpf",
                        self.iface.ifindex,
                        ":1",
                        fd=self.fn.fd,
                        name=self.fn.name,
                        parent=self.PARENTS[self.direction],
                        classid=1,
                        direct_action=True,
                    )
                except Exception as exc:
                    self.detach()
                    raise LabkitError(
                        f"attaching tc {self.direction} filter to {self.iface.name} failed: {exc}"
                    ) from exc
        return self

    def detach(self) -> None:
        if not self._own_qdisc:
            return
        with self.iface.host.ipr() as ipr:
            try:
                ipr.tc("del", "clsact", self.iface.ifindex)
            except Exception as exc:
                if getattr(exc, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):  # no qdisc, no link
                    raise
        self._own_qdisc = False
        if self._record:
            _run_forget(self._record)


def attach_xdp(iface, fn, mode: str = "native") -> XdpAttachment:
    """Attach FN to IFACE in 'native' or 'generic' mode; use the result in a `with`."""
    return XdpAttachment(iface, fn, mode)


def attach_tc(iface, fn, direction: str = "ingress") -> TcAttachment:
    return TcAttachment(iface, fn, direction)


def _run_note(record):
    run = runs.current_run()
    if run is not None:
        run.note_foreign(record)


def _run_forget(record):
    run = runs.current_run()
    if run is not None:
        run.forget_foreign(record)


def xdp_state(iface) -> dict:
    """What XDP the kernel reports on IFACE: {'IFLA_XDP_ATTACHED': 'xdp'|'xdpgeneric'|None, ...}."""
    with iface.host.ipr() as ipr:
        return _xdp_attached(ipr, iface.ifindex)
