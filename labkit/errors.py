"""The exceptions labkit raises. Every message says what was wrong and what to do."""


class LabkitError(Exception):
    """Base class for every error labkit raises on purpose."""


class InputError(LabkitError, ValueError):
    """A parameter is malformed or out of range. Raised before the kernel is touched."""


class MissingDependency(LabkitError, RuntimeError):
    """A tool, package or kernel feature an experiment needs is not on this machine."""


class Refused(MissingDependency):
    """The kernel refused something labkit asked of it. `errno` is the kernel's answer; the
    message says what was refused, the likely reasons, and what to choose instead. A
    MissingDependency: what catches a missing facility to skip a part catches this too."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class NotRoot(LabkitError, PermissionError):
    """The operation needs root (CAP_NET_ADMIN / CAP_BPF / CAP_SYS_ADMIN)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt so that `except Exception` does not swallow it
    and every context manager on the way out undoes its kernel state."""
