"""The watcher of one run: undo the run if its process dies without closing it.

A run (`testbed.runs.Run`) starts one when it first writes its registry file:

    python -m labkit.watchdog OWNER_PID PREFIX PIPE_FD PIDFD

with a pidfd the owner opened on itself (so it can mean no other process, not a forked
helper, nor a later one that reuses the pid). This process forks the watcher into a
session of its own and exits, so the watcher is nobody's child: Ctrl-C or SIGTERM to the owner's process group,
Jupyter killing a kernel's group, or the owner's own death do not reach it. The watcher
then sleeps in `poll()` on two things:

- the owner's pidfd, readable when the owner has died, however it died (SIGKILL, a
  notebook kernel that exits on the spot when papermill goes, a kernel restart). If the
  run's registry file is still there, the run was not closed: the watcher undoes that run,
  and only that run, as `labkit clean` would (`cleanup.clean_run`), and exits;
- the read end of a pipe whose write end only the owner holds open for writing: the owner
  writes to it when it closes the run normally, and the watcher exits at once.

It also exits when the registry file disappears (the run was cleaned by hand). What it
undid is logged to `LOG` (/var/log/labkit/watchdog.log, or LABKIT_WATCHDOG_LOG), kept apart
from the run registries so that /run/labkit holds only runs; the watcher never outlives the
machine's boot.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from contextlib import suppress
from pathlib import Path

from labkit.testbed.runs import PREFIX_RE, REGISTRY_DIR

#: how often the watcher looks whether the registry file is still there (seconds)
RECHECK = 1.0
#: what the watchers undid, one line each (not under /run/labkit, which holds only run registries)
LOG = Path(os.environ.get("LABKIT_WATCHDOG_LOG", "/var/log/labkit/watchdog.log"))


def _registry(prefix: str) -> dict | None:
    try:
        return json.loads((REGISTRY_DIR / f"{prefix}.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _log(line: str) -> None:
    with suppress(OSError):
        LOG.parent.mkdir(parents=True, exist_ok=True)
        with open(LOG, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")


def undo(pid: int, prefix: str) -> None:
    """The owner PID is gone: undo its run PREFIX if the run was not closed."""
    state = _registry(prefix)
    if state is None:
        return  # closed normally, or cleaned by hand
    if state and int(state.get("pid", -1)) != pid:
        return  # not the run this watcher was started for
    from labkit import cleanup

    undone = []
    try:
        removed = cleanup.clean_run(prefix, log=lambda msg: undone.append(msg))
    except Exception as exc:  # noqa: BLE001 - the log is the only place to say it
        _log(f"{prefix}: owner pid {pid} died without closing its run; undoing failed: {exc!r}")
        raise
    what = ", ".join(f"{len(v)} {k}" for k, v in removed.items() if v) or "nothing left"
    _log(f"{prefix}: owner pid {pid} died without closing its run; undone: {what}")
    for line in undone:
        if not line.startswith("removed "):
            _log(f"{prefix}: {line}")


def watch(pid: int, prefix: str, pidfd: int, pipe: int) -> None:
    """Wait until the owner closes the run (exit) or dies (undo, then exit)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(pipe, select.POLLIN)
    while True:
        for fd, _events in poller.poll(RECHECK * 1000):
            if fd == pidfd:
                undo(pid, prefix)
                return
            if os.read(pipe, 64):
                return  # the owner closed the run
            poller.unregister(pipe)  # no writer left: the pidfd tells the rest
        if _registry(prefix) is None:
            return


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not PREFIX_RE.match(argv[1]) or not all(a.isdigit() for a in argv[:1] + argv[2:]):
        print("usage: python -m labkit.watchdog OWNER_PID PREFIX PIPE_FD PIDFD (a run starts it)", file=sys.stderr)
        return 2
    pid, prefix, pipe, pidfd = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    child = os.fork()
    if child:
        print(child, flush=True)  # the owner records the watcher's pid in its registry
        return 0
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # the owner spawned us with its signals held (`deferred_signals`): SIGTERM stops a watcher
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        watch(pid, prefix, pidfd, pipe)
    except Exception:  # noqa: BLE001 - logged in undo(); nothing to print to
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
