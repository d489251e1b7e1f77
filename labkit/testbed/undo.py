"""What a testbed object holds, undone as one: `Undoable` builds it on an ExitStack in
`_open(stack)`; one that fails half-way is undone before the error is raised, and
leaving the `with` (or `close()`, twice harmless) undoes all of it, last first.

    class Lab(Undoable):
        def _open(self, stack):
            self.topo = stack.enter_context(topology.Topology(spec))
"""

from __future__ import annotations

from contextlib import ExitStack


class Undoable:
    _stack: ExitStack | None = None

    def _open(self, stack: ExitStack) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._stack = ExitStack()
        try:
            self._open(self._stack)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
