"""A testbed kept up across notebook cells: what every interactive lab shares.

A lab in a notebook is not a `with` block: it is built in one cell and used from others
(buttons, later cells) until it is stopped. `LiveLab` gives each kind of lab the same
life:

- one is live per kernel and kind: making a new one (running the cell again, or Run All)
  closes the old one first, and `replaced` names the run it closed;
- `close(reason)` undoes everything once (harmless twice), also at interpreter exit, and
  tells every listener (`on_close`), so widgets disable their controls and say why;
- after `close()`, `check_open()` raises `LabStopped` before anything touches the kernel,
  so a stale control can never re-create what was removed.

A subclass builds its testbed in `__init__` between `self._replace_live()` and
`self._went_live(prefix)`, and undoes it in `_teardown()`. A kernel killed outright is
covered by the run's watcher (`labkit.watchdog`).
"""

from __future__ import annotations

import atexit
import threading
from contextlib import suppress

from labkit.errors import LabkitError


class LabStopped(LabkitError):
    """The lab was stopped or replaced: its testbed is gone."""


_live: dict = {}  # kind -> the live lab of that kind
_live_lock = threading.Lock()


class LiveLab:
    #: what the lab is called in messages ("the NAT lab is stopped ...")
    NAME = "lab"

    def _replace_live(self) -> None:
        """Start life: not yet open, and the live lab of this kind (if any) closed."""
        self.closed = True  # until built: close() and the exit handler have nothing to do
        self.stop_reason = ""
        self.lock = threading.RLock()  # held by whoever reads or writes the lab's kernel state
        self._listeners: list = []
        self._at_exit = None
        self.replaced = None  # the run prefix of the lab this one closed, if any
        with _live_lock:
            old = _live.pop(type(self).live_kind(), None)
        if old is not None and not old.closed:
            self.replaced = old.prefix
            old.close("replaced: the lab's cell was run again, and a new lab took its place")

    def _went_live(self, prefix: str) -> None:
        """The testbed is built: register as this kernel's live lab of its kind."""
        self.prefix = prefix
        self.closed = False
        with _live_lock:
            _live[type(self).live_kind()] = self
        self._at_exit = lambda: self.close("closed as the kernel shut down")
        atexit.register(self._at_exit)

    @classmethod
    def live_kind(cls) -> type:
        """Labs of one kind replace each other: the class just below LiveLab."""
        for klass in cls.__mro__:
            if LiveLab in klass.__bases__:
                return klass
        return cls

    @classmethod
    def live(cls):
        """The lab of this kind live in this kernel, if any."""
        return _live.get(cls.live_kind())

    def check_open(self) -> None:
        if self.closed:
            raise LabStopped(f"the {self.NAME} is stopped ({self.stop_reason}); run its cell again for a new one")

    def on_close(self, fn) -> None:
        """Call fn(reason) when the lab closes (widgets disable their controls)."""
        self._listeners.append(fn)

    def _teardown(self) -> None:
        """Undo the testbed (the subclass's own)."""
        raise NotImplementedError

    def close(self, reason: str = "stopped") -> None:
        """Remove the testbed; harmless twice. REASON is what the widgets show."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.stop_reason = reason
            try:
                self._teardown()
            finally:
                if self._at_exit is not None:
                    atexit.unregister(self._at_exit)
                with _live_lock:
                    if _live.get(type(self).live_kind()) is self:
                        del _live[type(self).live_kind()]
        for fn in self._listeners:
            with suppress(Exception):  # a widget that can no longer be updated must not stop the close
                fn(reason)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
