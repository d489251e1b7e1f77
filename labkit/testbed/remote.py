"""Remote hosts: the same interface as a namespace `Host`, on another machine, over SSH.

A `RemoteHost` runs commands, spawns processes (always reaped) and calls labkit functions
on a machine reached with SSH keys. The engine is mitogen: it starts a Python interpreter
on the far side over one SSH connection and serves it labkit's modules (and pyroute2's)
from this machine as they are imported, so only Python 3 and the host's own tools (bcc,
DPDK, trafgen, installed by `deploy/site.yml`) need to be there. BPF programs are then
compiled by the far host's bcc against its own kernel: this module ships the C sources
of `bpf/` along.

    with RemoteHost("dut", "192.0.2.10", identity_file="~/.ssh/lab",
                    known_hosts="~/.ssh/known_hosts") as dut:
        dut.run(["uname", "-r"]).stdout
        dut.call(os.getpid)                       # any importable function, run there
        with dut.spawn(["sleep", "5"]) as proc:   # stopped and reaped on leaving
            ...

Host keys are checked against `known_hosts` (never accepted blindly); a login that is
not root goes through `sudo` on the far side; `bastion=` (another RemoteHost's
settings) reaches a host only a jump host can see.

What a session changes on the far host is recorded there, as a labkit run does here: the
session opens a run (prefix, registry file under the host's /run/labkit), so a session
that dies (network gone, this machine killed) is undone by `labkit clean --inventory`
(`labkit.cleanup.clean_hosts`), which runs the same clean-up on every host. What runs
on the far side is `labkit.testbed.remote_agent`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Sequence

from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.testbed import remote_agent as agent
from labkit.testbed.hosts import CommandFailed, Host

#: how long the call after an interrupted one waits for that one to end there (it may run for
#: its own timeout, and the host serves one call at a time): the undo after a Ctrl-C is bounded
BUSY_WAIT_S = 10.0


class HostUnreachable(LabkitError):
    """A remote host could not be reached, or the connection to it was lost."""


class RemoteError(LabkitError):
    """A function called on a remote host raised an exception that is not labkit's own."""


def _mitogen():
    try:
        import mitogen.core  # noqa: F401
        import mitogen.master
        import mitogen.ssh  # noqa: F401
        import mitogen.utils  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "remote hosts need mitogen: run `sudo make setup` (or .venv/bin/pip install -r requirements.txt)"
        ) from None
    return mitogen


class RemoteHost(Host):
    """A machine reached over SSH (user@hostname:port, key IDENTITY_FILE, host key checked
    in KNOWN_HOSTS), on which labkit runs as root. Use it as a context manager. Its
    processes are tracked as a `Host` tracks its own; `netns` is None (the host's own)."""

    def __init__(
        self,
        name: str,
        hostname: str,
        *,
        port: int = 22,
        user: str = "root",
        identity_file: str | None = None,
        known_hosts: str | None = None,
        sudo: bool | None = None,
        bastion: dict | None = None,
        python: str = "python3",
        runtime_dir: str | None = None,
        connect_timeout: float = 15.0,
    ):
        if not hostname:
            raise InputError(f"host {name!r} has no address: give it ansible_host (a name or an IP address)")
        if not (isinstance(port, int) and 0 < port < 65536):
            raise InputError(f"host {name!r}: port {port!r} is not a TCP port (1..65535)")
        for what, path in (("identity file", identity_file), ("known_hosts file", known_hosts)):
            if path and not Path(path).expanduser().is_file():
                raise InputError(f"host {name!r}: {what} {path} does not exist")
        super().__init__(name)
        self.hostname = hostname
        self.port = port
        self.user = user
        self.identity_file = str(Path(identity_file).expanduser()) if identity_file else None
        self.known_hosts = str(Path(known_hosts).expanduser()) if known_hosts else None
        self.sudo = (user != "root") if sudo is None else sudo
        self.bastion = bastion
        self.python = python
        self.runtime_dir = runtime_dir
        self.connect_timeout = connect_timeout
        self.prefix: str | None = None  # the session's run prefix on the far host
        self._broker = self._router = self._context = None
        #: a call this side stopped waiting for (Ctrl-C) still runs there, and the host runs
        #: one call at a time: the next call first waits at most BUSY_WAIT_S for it to end
        self._interrupted = self._stuck = False

    def __repr__(self):
        return f"host {self.name} ({self.user}@{self.hostname}:{self.port})"

    # ---- connection
    def _ssh(self, router, via=None, settings: dict | None = None):
        s = settings or {
            "hostname": self.hostname,
            "port": self.port,
            "user": self.user,
            "identity_file": self.identity_file,
            "known_hosts": self.known_hosts,
        }
        args = ["-o", "BatchMode=yes"]
        if s.get("known_hosts"):
            args += ["-o", f"UserKnownHostsFile={s['known_hosts']}", "-o", "GlobalKnownHostsFile=/dev/null"]
        return router.ssh(
            hostname=s["hostname"],
            port=int(s.get("port") or 22),
            username=s.get("user") or "root",
            identity_file=s.get("identity_file"),
            check_host_keys="enforce",
            ssh_args=args,
            python_path=s.get("python", self.python),
            connect_timeout=self.connect_timeout,
            via=via,
            remote_name=f"labkit:{self.name}",
        )

    def connect(self) -> "RemoteHost":
        """Open the SSH connection, start labkit's side there and open the session's run."""
        mitogen = _mitogen()
        if self._context is not None:
            return self
        self._broker = mitogen.master.Broker()
        self._router = mitogen.master.Router(self._broker)
        try:
            via = self._ssh(self._router, settings=self.bastion) if self.bastion else None
            ctx = self._ssh(self._router, via=via)
            if self.sudo:
                ctx = self._router.sudo(via=ctx, python_path=self.python, remote_name=f"labkit:{self.name}")
            self._context = ctx
            self.prefix = self.call(agent.session_open, self.runtime_dir, _bpf_sources())
        except BaseException as exc:
            self._shutdown()
            if isinstance(exc, LabkitError) or not isinstance(exc, Exception):
                raise
            raise self._unreachable(exc) from None
        return self

    def _unreachable(self, exc) -> HostUnreachable:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        low = text.lower()
        if "host key" in low or "hostkey" in low:
            fix = (
                f"its host key is not in {self.known_hosts or '~/.ssh/known_hosts'}: check the key's fingerprint "
                f"on the host, then add it (ssh-keyscan -p {self.port} {self.hostname} >> known_hosts)"
            )
        elif "sudo" in low and "no such file" in low:
            fix = "sudo is not installed there: install it (Debian package sudo), or log in as root"
        elif "sudo" in low:  # before the key's case: sudo's own complaint names a password too
            fix = (
                f"{self.user} cannot sudo without a password there: allow it in sudoers (a file "
                f"/etc/sudoers.d/labkit holding `{self.user} ALL=(ALL) NOPASSWD: ALL`, mode 0440), or log in as root"
            )
        elif "permission denied" in low or "password" in low or "authentication" in low:
            fix = (
                f"the key {self.identity_file or '(ssh default)'} is not accepted for {self.user}: add its .pub "
                "to the host's authorized_keys, or set ansible_ssh_private_key_file"
            )
        else:
            fix = "check that the host is up, sshd listens there, and ansible_host/ansible_port are right"
        return HostUnreachable(f"{self}: {text}; {fix}")

    def close(self) -> None:
        """Stop what this host's processes still run, close the session's run (its
        registry goes), disconnect. Harmless twice, and when the host is gone."""
        if self._context is None:
            return
        try:
            with suppress(Exception):  # unreachable: `labkit clean --inventory` undoes the session later
                self.stop_all()
                self.call(agent.session_close)
            if self._stuck:  # the undo went on without it: say what is left, and how to undo it
                print(f"labkit: {self._busy()}", file=sys.stderr)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        broker, self._broker, self._router, self._context = self._broker, None, None, None
        self._interrupted = self._stuck = False
        if broker is not None:
            broker.shutdown()
            broker.join()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- calling
    def call(self, fn, *args, **kwargs):
        """FN(*ARGS, **KWARGS) on the far host (FN must live in an importable module, not
        a notebook). Arguments and result travel as plain values (numbers, text, lists,
        dicts). labkit's own errors come back as themselves; others as RemoteError."""
        mitogen = _mitogen()
        if self._context is None:
            raise LabkitError(f"{self} is not connected: use it in a `with`, or call connect()")
        if self._stuck:  # given up on: every further call would queue behind the interrupted one
            raise self._busy()
        try:
            if self._interrupted:  # a trivial call answered means the interrupted one has ended there
                try:
                    self._context.call_async(os.getpid).get(timeout=BUSY_WAIT_S)
                except mitogen.core.TimeoutError:
                    self._stuck = True
                    raise self._busy() from None
                self._interrupted = False
            receiver = self._context.call_async(fn, *args, **kwargs)
            try:
                msg = receiver.get()
            except BaseException as exc:
                if not isinstance(exc, (mitogen.core.Error, EOFError, OSError)):
                    self._interrupted = True  # Ctrl-C (or another signal's exception) while it ran there
                raise
            return msg.unpickle()
        except mitogen.core.CallError as exc:
            raise _remote_error(self, str(exc)) from None
        except (mitogen.core.ChannelError, mitogen.core.StreamError, EOFError, OSError) as exc:
            raise HostUnreachable(
                f"{self}: the connection was lost ({exc}); what the run changed there is "
                "undone by `labkit clean --inventory INVENTORY` once it is back"
            ) from None

    def _busy(self) -> "HostUnreachable":
        return HostUnreachable(
            f"{self}: still busy after {BUSY_WAIT_S:.0f} s with a call that was interrupted here; what the "
            "run changed there is undone by `labkit clean --inventory INVENTORY` (a VM's dies with it)"
        )

    # ---- the Host interface
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ARGV to completion on the far host (bounded by TIMEOUT), output captured."""
        argv = self.command(argv)
        rc, out, err = self.call(agent.run, argv, timeout, input, env)
        if check and rc != 0:
            raise CommandFailed(self, argv, rc, out + err)
        return subprocess.CompletedProcess(argv, rc, out, err)

    def spawn(
        self, argv: Sequence[str], *, name: str | None = None, env: dict | None = None, cwd: str | None = None
    ) -> "RemoteProcess":
        """Start ARGV in the background on the far host; use the result in a `with`."""
        argv = self.command(argv)
        pid = self.call(agent.spawn, argv, name, env, cwd)
        proc = RemoteProcess(self, argv, pid, name or os.path.basename(argv[0]))
        with self._lock:
            self._procs.append(proc)
        return proc

    def hold(self, factory: str, *args, **kwargs) -> "Held":
        """A context manager `module:function(*args, **kwargs)` entered on the far host
        and held open until the local `with` ends (an XDP attachment, a generator)."""
        return Held(self, factory, args, kwargs)

    def facts(self, interfaces=()) -> dict:
        """What run metadata records about the host: kernel, CPU, the drivers of
        INTERFACES, versions of Python, bcc, DPDK and the tools."""
        return self.call(agent.facts, list(interfaces))

    def ipr(self):
        raise LabkitError(
            f"{self}: netlink is not forwarded; call a labkit function there instead "
            "(host.call(fn)), which opens pyroute2 on the host itself"
        )

    def entered(self):
        raise LabkitError(f"{self}: Python code cannot enter another machine; use host.call(fn)")


class RemoteProcess:
    """A process on a remote host; leaving its `with` stops and reaps it there."""

    def __init__(self, host: RemoteHost, argv, pid: int, name: str):
        self.host, self.argv, self.pid, self.name = host, argv, pid, name
        self.returncode: int | None = None
        self._final: str | None = None

    def __repr__(self):
        return f"<RemoteProcess {self.name} pid={self.pid} on {self.host}>"

    @property
    def running(self) -> bool:
        return self.returncode is None and self.host.call(agent.proc, self.pid, "running")

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = self.host.call(agent.proc, self.pid, "wait", timeout)
        return self.returncode

    def output(self) -> str:
        return self._final if self._final is not None else self.host.call(agent.proc, self.pid, "output")

    def send_signal(self, sig: int) -> None:
        self.host.call(agent.proc, self.pid, "send_signal", int(sig))

    def stop(self, grace: float = 2.0) -> int:
        self.returncode = self.host.call(agent.proc, self.pid, "stop", grace)
        return self.returncode

    def cpu_seconds(self) -> float:
        return self.host.call(agent.proc, self.pid, "cpu_seconds")

    def close(self) -> None:
        if self._final is None:
            self._final, self.returncode = self.host.call(agent.proc_close, self.pid)
        self.host._forget(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Held:
    """A context manager held open on a remote host (`RemoteHost.hold`). Calling it calls
    the entered value there: `held()` if it is a function, `held("method", *args)`."""

    def __init__(self, host: RemoteHost, factory: str, args, kwargs):
        if ":" not in factory:
            raise InputError(f"factory {factory!r}: write 'module:function'")
        self.host, self.factory, self.args, self.kwargs = host, factory, args, kwargs
        self.key: int | None = None

    def __enter__(self) -> "Held":
        self.key = self.host.call(agent.hold, self.factory, list(self.args), dict(self.kwargs))
        return self

    def __call__(self, method: str | None = None, *args):
        return self.host.call(agent.held_call, self.key, method, list(args))

    def __exit__(self, *exc):
        key, self.key = self.key, None
        if key is not None:
            try:
                self.host.call(agent.release, key)
            except HostUnreachable:
                if exc[0] is None:
                    raise
        return False


def _remote_error(host, text: str) -> LabkitError:
    from labkit import errors

    first, _, rest = text.partition("\n")
    kind, _, message = first.partition(": ")
    cls = getattr(errors, kind.rsplit(".", 1)[-1], None) if kind.startswith("labkit.") else None
    if isinstance(cls, type) and issubclass(cls, LabkitError):
        with suppress(TypeError):
            return cls(f"on {host}: {message}")
    return RemoteError(f"on {host}: {first}\n{rest.strip()[-2000:]}")


def _bpf_sources() -> dict:
    """{relative path: text} of bpf/, for the far host's bcc."""
    from labkit import BPF_DIR

    return {
        str(p.relative_to(BPF_DIR)): p.read_text()
        for p in sorted(BPF_DIR.rglob("*"))
        if p.is_file() and p.suffix in (".c", ".h")
    }
