"""Many students on one machine: each one's slot, names, pinned maps and measurement turns.

A class machine gives every student a slot, ``s01`` .. ``s99``, in the environment of their
JupyterLab (``LABKIT_STUDENT=s07``; see labs/README.md). Everything a lesson creates carries
it, so students never collide and each can clean up only their own:

- testbed hosts are named ``s07snd``, ``s07rcv``, ...: with the run prefix the kernel names
  become ``lkab12-s07snd0`` (14 characters, within Linux's 15);
- pinned maps go under ``/sys/fs/bpf/labkit/s07/``;
- `labkit clean` run with ``LABKIT_STUDENT=s07`` removes only runs whose objects carry
  ``s07`` (`labkit.cleanup.clean(student=...)`);
- rate measurements take the machine-wide `measurement_turn()` lock, so two students'
  measurements never share the CPUs; functional checks (BPF_PROG_TEST_RUN) do not wait.

This is cooperative isolation: every student is root (loading XDP needs it) and could
reach the others' namespaces. For real isolation, give each student a VM.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from labkit.errors import InputError
from labkit.testbed import runs

ENV = "LABKIT_STUDENT"
SLOT_RE = re.compile(r"^s\d{2}$")
#: used when no slot is set (one person on their own machine)
DEFAULT_SLOT = "s00"
BPFFS = Path(os.environ.get("LABKIT_BPFFS", "/sys/fs/bpf"))
#: the machine-wide measurement lock: in the system's lock folder, not among the run registries
LOCK_PATH = Path(os.environ.get("LABKIT_MEASURE_LOCK", "/run/lock/labkit-measure.lock"))


def check_slot(slot: str) -> str:
    if not isinstance(slot, str) or not SLOT_RE.match(slot):
        raise InputError(
            f"student slot {slot!r}: write 's' and two digits, e.g. 's07' (set {ENV}=s07 in the student's environment)"
        )
    return slot


def slot() -> str:
    """This student's slot, from $LABKIT_STUDENT (``s00`` when unset)."""
    return check_slot(os.environ.get(ENV) or DEFAULT_SLOT)


def host_name(role: str, student: str | None = None) -> str:
    """The testbed host name for ROLE ('snd', 'rcv', 'fwd', ...) of this student: ``s07snd``."""
    name = f"{student or slot()}{role}"
    limit = runs.IFNAMSIZ - 6 - 1 - 1  # run prefix, '-', and the interface index digit
    if len(name) > limit or not re.match(r"^[a-z][a-z0-9]*$", name):
        raise InputError(f"host role {role!r} makes {name!r}: use at most {limit - 3} lower-case letters or digits")
    return name


def bpffs_dir(student: str | None = None, create: bool = True) -> Path:
    """This student's folder for pinned maps and programs: /sys/fs/bpf/labkit/s07."""
    path = BPFFS / "labkit" / (student or slot())
    if create:
        runs.require_root("pinning eBPF maps")
        if not _is_bpffs(BPFFS):
            raise InputError(
                f"{BPFFS} is not a mounted bpffs: run `sudo make setup` (or `mount -t bpf bpf /sys/fs/bpf`)"
            )
        path.mkdir(parents=True, exist_ok=True)
    return path


def _is_bpffs(path: Path) -> bool:
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False


def pin_map(table, name: str, student: str | None = None) -> Path:
    """Pin a map (a bcc table) as NAME in this student's bpffs folder; its path. The pin
    outlives the program: another process opens it by path. `clear_pins` removes it."""
    import ctypes

    from labkit import bpf

    if not name or "/" in name or name.startswith("."):
        raise InputError(f"pin name {name!r}: a plain file name, e.g. 'counters'")
    path = bpffs_dir(student) / name
    lib = bpf.libbpf()
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    if lib.bpf_obj_pin(table.map_fd, str(path).encode()) != 0:
        err = ctypes.get_errno()
        raise InputError(
            f"pinning {name} at {path} failed: {os.strerror(err)}"
            + (" (a pin of that name exists: clear_pins() first)" if err == errno.EEXIST else "")
        )
    return path


def clear_pins(student: str | None = None) -> list[str]:
    """Remove this student's pinned objects (and nobody else's); their names."""
    path = bpffs_dir(student, create=False)
    gone = []
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):
            (p.rmdir if p.is_dir() else p.unlink)()
            gone.append(p.name)
    return gone


class MeasurementTurn:
    """The machine-wide measurement lock, held while in a `with`. `waited_s` says how long
    this student waited for another's measurement to end."""

    def __init__(self, timeout_s: float = 600.0, log=print):
        self.timeout_s, self.log = timeout_s, log
        self.waited_s = 0.0
        self._fd = None

    def __enter__(self):
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.log:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another student"
                    self.log(f"waiting for the measurement turn ({holder} is measuring) ...")
                    told = True
                if time.monotonic() - start > self.timeout_s:
                    os.close(fd)
                    raise InputError(
                        f"the measurement lock {LOCK_PATH} was busy for {self.timeout_s:.0f} s: "
                        "ask the instructor, or retry later"
                    )
                time.sleep(0.2)
        self.waited_s = time.monotonic() - start
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{slot()} (pid {os.getpid()})".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return False


def measurement_turn(timeout_s: float = 600.0, log=print) -> MeasurementTurn:
    """`with measurement_turn(): ...` measures with the CPUs to this student alone."""
    return MeasurementTurn(timeout_s, log)


@contextmanager
def as_student(student: str):
    """This process acts as STUDENT inside the `with` (tests run two students in one process)."""
    check_slot(student)
    old = os.environ.get(ENV)
    os.environ[ENV] = student
    try:
        yield student
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
