"""Hosts: where an experiment's commands and processes run.

A `Host` today is a network namespace on this machine, or the root namespace (for real
interfaces); a remote machine later gets the same interface. Experiments never build
`ip netns exec` command lines themselves: they call `host.run(...)` and `host.spawn(...)`.
Every spawned process is bounded (a timeout) and always reaped: stopped with SIGINT, then
SIGTERM, then SIGKILL, whichever way the surrounding code exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from typing import Sequence

from labkit.errors import LabkitError, MissingDependency
from labkit.testbed.runs import NETNS_DIR, RUN_ENV, _pid_alive, current_run


@contextmanager
def netlink(netns: str | None = None):
    """A pyroute2 IPRoute (in namespace NETNS, or this process's), usable anywhere.

    pyroute2's synchronous API drives an asyncio loop of its own, which asyncio refuses
    while another loop is marked running in the thread, as in a Jupyter kernel executing a
    cell. The cell's code is synchronous and that loop cannot run meanwhile, so the mark
    is lifted for the duration and put back after."""
    import asyncio.events

    from pyroute2 import IPRoute

    running = asyncio.events._get_running_loop()
    if running is not None:
        asyncio.events._set_running_loop(None)
    try:
        with IPRoute(netns=netns) if netns else IPRoute() as ipr:
            yield ipr
    finally:
        if running is not None:
            asyncio.events._set_running_loop(running)


class CommandFailed(LabkitError):
    def __init__(self, host: "Host", argv, returncode: int, output: str):
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"on {host}: `{' '.join(map(str, argv))}` exited {returncode}:\n{tail}")


def which(tool: str, package: str | None = None) -> str:
    """The path of TOOL, or a MissingDependency naming the Debian package to install."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )
    if not path:
        hint = f" (Debian package {package})" if package else ""
        raise MissingDependency(f"`{tool}` is not installed{hint}: run `sudo make setup`.")
    return path


class Process:
    """A process running on a host. A context manager: leaving it stops and reaps it."""

    def __init__(self, host: "Host", argv: Sequence[str], popen: subprocess.Popen, logfile, name: str):
        self.host = host
        self.argv = list(argv)
        self.popen = popen
        self.pid = popen.pid
        self.name = name
        self._log = logfile
        self.started = time.monotonic()
        self.returncode: int | None = None
        self.rusage = None
        self._final: str | None = None  # the output, kept when the log file is removed

    def __repr__(self):
        return f"<Process {self.name} pid={self.pid} on {self.host}>"

    def _reap(self, block: bool) -> bool:
        """Collect the exit status and resource usage; True once the process has ended."""
        if self.popen.returncode is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            self.popen.returncode = self.popen.returncode if self.popen.returncode is not None else -1
            return True
        if pid == 0:
            return False
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.returncode = self.popen.returncode
        self.rusage = usage
        return True

    @property
    def running(self) -> bool:
        return not self._reap(False)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; on timeout the process is stopped and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while not self._reap(False):
            if deadline is not None and time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not finish within {timeout:.0f} s and was stopped")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far (also after close())."""
        if self._final is not None:
            return self._final
        self._log.flush()
        with open(self._log.name, "r", errors="replace") as f:
            return f.read()

    def send_signal(self, sig: int) -> None:
        if self.running:
            with suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, grace: float = 2.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL, each after `grace` seconds; always reaped.
        Harmless when the process has already ended."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if not self.running:
                break
            self.send_signal(sig)
            deadline = time.monotonic() + (grace if sig != signal.SIGKILL else 10)
            while time.monotonic() < deadline and not self._reap(False):
                time.sleep(0.01)
        self._reap(True)
        self.host._forget(self)
        return self.returncode

    def close(self) -> None:
        self.stop()
        if self._final is None:
            try:
                self._final = self.output()
            except OSError:
                self._final = ""
        with suppress(OSError):
            self._log.close()
            os.unlink(self._log.name)

    def cpu_seconds(self) -> float:
        """User+system CPU time of the process so far (after exit: its final total)."""
        if self.rusage is not None:
            return self.rusage.ru_utime + self.rusage.ru_stime
        try:
            fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Host:
    """A place to run commands: a network namespace (`netns`) or the root namespace (None)."""

    def __init__(self, name: str, netns: str | None = None):
        self.name = name
        self.netns = netns
        self._procs: list[Process] = []
        self._lock = threading.Lock()

    def __repr__(self):
        return f"host {self.name}" + (f" (netns {self.netns})" if self.netns else " (root namespace)")

    # ---- netlink
    def ipr(self):
        """A pyroute2 IPRoute bound to this host's namespace; use it in a `with`."""
        return netlink(self.netns)

    # ---- commands
    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ARGV on this host."""
        argv = [str(a) for a in argv]
        if self.netns:
            return [which("ip", "iproute2"), "netns", "exec", self.netns, *argv]
        return argv

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ARGV to completion on this host (bounded by `timeout`), output captured as text."""
        cmd = self.command(argv)
        try:
            cp = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env, errors="replace"
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(self, argv, -1, f"timed out after {timeout} s\n{exc.stdout or ''}") from None
        if check and cp.returncode != 0:
            raise CommandFailed(self, argv, cp.returncode, (cp.stdout or "") + (cp.stderr or ""))
        return cp

    def read(self, path: str) -> str:
        """Read a file as seen from this host (e.g. /proc/net/snmp of its namespace)."""
        return self.run(["cat", path], timeout=10).stdout

    def spawn(
        self, argv: Sequence[str], *, name: str | None = None, env: dict | None = None, cwd: str | None = None
    ) -> Process:
        """Start ARGV on this host in the background. Output goes to a temporary file
        (read it with `Process.output()`). Use the result in a `with`, or call `stop()`."""
        cmd = self.command(argv)
        log = tempfile.NamedTemporaryFile("w+b", prefix="labkit-", suffix=".log", delete=False)
        run = current_run()
        if run is not None:  # so the run's clean-up finds it wherever it runs
            env = {**(os.environ if env is None else env), RUN_ENV: run.prefix}
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        proc = Process(self, argv, popen, log, name or os.path.basename(str(argv[0])))
        with self._lock:
            self._procs.append(proc)
        return proc

    def _forget(self, proc: Process) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    @property
    def processes(self) -> list[Process]:
        with self._lock:
            return list(self._procs)

    def stop_all(self) -> None:
        """Stop and reap every process this host started that is still tracked."""
        for proc in self.processes:
            proc.close()

    @contextmanager
    def entered(self):
        """Run Python code of this thread inside the host's namespace (e.g. to open a socket
        there); the thread returns to its own namespace on exit."""
        if not self.netns:
            yield
            return
        from pyroute2.netns import popns, pushns

        pushns(self.netns)
        try:
            yield
        finally:
            popns()


ROOT_HOST = Host("root", None)


def pids_in_netns(ns: str) -> list[int]:
    """Processes whose network namespace is /run/netns/NS."""
    try:
        target = os.stat(NETNS_DIR / ns).st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                pids.append(int(entry))
    return [p for p in pids if p != os.getpid()]


def kill_pids(pids: list[int], grace: float = 1.0) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)
