"""What the live labs' widgets share: status lines, tables of counters, the background
refresh (`Ticker`), and what every widget does when its lab stops (`lab_stopped`: stop
its refreshes, turn every control off with the reason, say why). ipywidgets is imported
only when a widget is built, so the labs themselves work (and are tested) without it.
"""

from __future__ import annotations

import html
import threading
import warnings
from contextlib import contextmanager

from labkit.errors import LabkitError


def widgets():
    try:
        import ipywidgets
    except ImportError:
        raise LabkitError("ipywidgets is not installed in this environment: `sudo make setup` installs it") from None
    return ipywidgets


def status_html(text: str, ok: bool = True) -> str:
    """One line of status: green for what happened, red for what was refused or failed."""
    color = "#070" if ok else "#b00"
    return f"<span class='lk-status-{'ok' if ok else 'error'}' style='color:{color}'>{html.escape(text)}</span>"


def table_html(rows: list[dict], empty: str) -> str:
    if not rows:
        return f"<i>{html.escape(empty)}</i>"
    cols = list(rows[0])
    head = "".join(f"<th style='text-align:right;padding:0 8px'>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='text-align:right;padding:0 8px'>{html.escape(str(r[c]))}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def disable_all(controls, reason: str) -> None:
    """Turn every control off; hovering one shows why."""
    for c in controls:
        c.disabled = True
        if hasattr(c, "tooltip"):
            c.tooltip = reason


@contextmanager
def holding(lab):
    """Hold LAB's lock (a `testbed.live.LiveLab`) and refuse with `LabStopped` once it is
    closed: what a widget's refresh does before it reads the lab's kernel state."""
    with lab.lock:
        lab.check_open()
        yield


def lab_stopped(
    reason: str, *, name: str, controls, show, tickers=(), gone: str = "namespaces, links and programs are removed"
) -> str:
    """What a widget does when its lab closes: stop its TICKERS (refreshes, the live plot),
    disable every control with the reason as its tooltip, and SHOW the reason (a function
    of the message, in red). Returns the message."""
    for t in tickers:
        t.stop()
    why = f"{name} {reason}: {gone}; run the cell again for a new lab"
    disable_all(controls, why)
    show(why)
    return why


class Ticker:
    """Call FN every INTERVAL seconds on a daemon thread named NAME until `stop()`, or until
    FN returns False. `stop()` wakes the thread and joins it for at most TIMEOUT seconds
    (unless called from it): a call of FN already under way is not interrupted, so a
    refresh stuck in the kernel (a netlink call that does not return) keeps the thread
    past `stop()`; it then ends after that call, without calling FN again, and `stop()`
    warns and returns False. Stopping twice is harmless."""

    def __init__(self, fn, interval: float, name: str):
        self.fn, self.interval = fn, interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.fn() is False:
                self._stop.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the ticker; True once its thread has ended (or is the caller), False (with a
        warning) where a call of FN still runs after TIMEOUT seconds."""
        self._stop.set()
        if self.thread is threading.current_thread():
            return True
        self.thread.join(timeout)
        if self.thread.is_alive():
            warnings.warn(
                f"thread {self.thread.name} is still in a refresh {timeout:g} s after stop(): it ends "
                "when that call returns and calls nothing more",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        return True


def describe(exc: BaseException) -> str:
    """An error as one line for the widget: labkit's own errors say what to do already;
    anything else gets its type, so it is not mistaken for a refused value."""
    if isinstance(exc, LabkitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
