"""Signals, handled in one place: SIGTERM and SIGHUP as an exception that unwinds every
context manager, signals held while a few kernel calls must happen together, and
Ctrl-C/SIGTERM forwarded to a child process group (a notebook's kernel).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager, suppress
from types import SimpleNamespace

from labkit.errors import Terminated

_sig_users = 0
_sig_previous = None
_owner_pid = os.getpid()


def _raise_terminated(signum, frame):
    if os.getpid() != _owner_pid:
        # A forked helper (pyroute2 forks to open sockets in a namespace) inherited this
        # handler: it must die as it would have, never run the parent's clean-up.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(f"signal {signum} received: undoing kernel state")


@contextmanager
def terminate_as_exception():
    """While inside, SIGTERM (and SIGHUP) raise `Terminated` in the main thread, so context
    managers unwind exactly as they do for Ctrl-C. A no-op outside the main thread."""
    global _sig_users, _sig_previous, _owner_pid
    main = threading.current_thread() is threading.main_thread()
    if main:
        if _sig_users == 0:
            _owner_pid = os.getpid()
            _sig_previous = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
        _sig_users += 1
    try:
        yield
    finally:
        if main:
            _sig_users -= 1
            if _sig_users == 0:
                for s, previous in _sig_previous.items():
                    signal.signal(s, previous or signal.SIG_DFL)


@contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM while a few kernel calls must happen together (e.g. create an
    object and record it for undo); they are delivered on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _kernel_children() -> list[int]:
    """The Jupyter kernels this process started (papermill's)."""
    me, kids = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{d}/cmdline").read()
        except OSError:
            continue
        if int(stat[1]) == me and "ipykernel" in cmd:
            kids.append(int(d))
    return kids


@contextmanager
def interrupts_reach_the_kernel():
    """Ctrl-C or SIGTERM during a batch interrupts the running notebook's kernel (which
    runs in a session of its own and would not see it): the experiment there unwinds and
    undoes its kernel state, the cell fails, and the batch stops after that notebook.
    What it yields says in `signal` which signal came (None: none)."""
    stop = SimpleNamespace(signal=None)

    def forward(signum, frame):
        stop.signal = signum
        for pid in _kernel_children():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
