"""Open vSwitch as a forwarder: a switch of the run's own, never the machine's.

    with ovs.OvsSwitch(topo.host("dut"), [d0.name, d1.name], port_type="afxdp") as sw:
        sw.forward(0, 1, set_dst=RECEIVER_MAC, set_src=d1.mac)   # one flow, port 0 -> port 1
        ...                                                       # traffic
        sw.port_stats()                                           # {port: {rx_packets, ...}}

Entering starts an `ovsdb-server` and an `ovs-vswitchd` of this switch alone, in the
host's namespace: their database, sockets, pid files and logs live in a folder of the
run (`/run/labkit/ovs/<run prefix>-ovsN`), and every command is pointed there
(`OVS_RUNDIR`, `OVS_DBDIR`, `OVS_LOGDIR`, `--db`), so a system OVS, if there is one, is
never touched. The bridge uses the userspace datapath (`datapath="netdev"`) by default: it
needs no kernel module. `datapath="system"` asks for the kernel datapath instead, where
the kernel has the openvswitch module (`kernel_datapath()` says whether it does; this
testbed's kernel does not, and asking for it there is refused before anything starts). Its ports are
`system` ports (the kernel hands frames to OVS over packet sockets) or, where OVS was
built with AF_XDP (Debian's is), `afxdp` ports (an XDP program redirects the queue into
an AF_XDP socket that a polling PMD thread reads), in `xdp_mode` 'native' or 'generic'.

Leaving (errors, Ctrl-C, SIGTERM included) deletes the bridge first (else OVS leaves
its tap device and `ovs-netdev` behind), then stops both daemons (SIGINT, SIGTERM,
SIGKILL) and removes the folder. The daemons carry the run in their environment and the
folder its prefix: `labkit clean` removes what a crashed run left (`remove_dir`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path

from labkit.errors import InputError, LabkitError, MissingDependency
from labkit.testbed import runs, signals
from labkit.testbed.hosts import CommandFailed

OVS_DIR = runs.REGISTRY_DIR / "ovs"
SCHEMA = Path(os.environ.get("LABKIT_OVS_SCHEMA", "/usr/share/openvswitch/vswitch.ovsschema"))
TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")
PORT_TYPES = ("system", "afxdp")
XDP_MODES = ("native", "generic")  # native-with-zerocopy needs a NIC with XSK zero-copy
DATAPATHS = ("netdev", "system")  # userspace; the kernel's openvswitch module
_counter = itertools.count()
_lock = threading.Lock()


def status() -> tuple[bool, str]:
    """(True, version) or (False, what to install), for `labkit doctor` and the experiment."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return False, (
            f"Open vSwitch is not installed ({', '.join(missing)} missing): install Debian's "
            "openvswitch-switch (`sudo make setup`, or `apt-get install openvswitch-switch`)"
        )
    if not SCHEMA.is_file():
        return False, f"Open vSwitch's schema {SCHEMA} is missing: reinstall openvswitch-common"
    return True, "Open vSwitch " + _version()


def _version() -> str:
    with suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[3] if len(out.split()) > 3 else "?"
    return "?"


def kernel_datapath() -> tuple[bool, str]:
    """(True, '') where the kernel has Open vSwitch's datapath (the openvswitch module loaded,
    or loadable), else (False, why)."""
    if Path("/sys/module/openvswitch").exists():
        return True, ""
    release = os.uname().release
    mods = Path("/lib/modules") / release
    found = list(mods.rglob("openvswitch.ko*")) if mods.is_dir() else []
    if found:
        return True, f"openvswitch module not loaded yet ({found[0].name}; `modprobe openvswitch`)"
    return False, f"kernel {release} has no openvswitch module (CONFIG_OPENVSWITCH)"


def require() -> None:
    ok, why = status()
    if not ok:
        raise MissingDependency(why)


def switch_dirs(prefix: str = "lk") -> list[Path]:
    """The switch folders of labkit runs whose name starts with PREFIX."""
    if not OVS_DIR.is_dir():
        return []
    return sorted(p for p in OVS_DIR.iterdir() if p.name.startswith(prefix) and runs.PREFIX_RE.match(p.name))


def remove_dir(folder: Path) -> None:
    """Stop the daemons whose pid files are in FOLDER (if they are still ours), remove it."""
    for pidfile in folder.glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(folder).encode() in cmd:  # only a daemon of this folder
            for sig in (15, 9):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
    shutil.rmtree(folder, ignore_errors=True)
    with suppress(OSError):  # another run's switch still lives there
        Path(folder).parent.rmdir()  # the runs' OVS folder goes with its last switch


class OvsSwitch:
    """A bridge of PORTS (interface names on HOST) with its own ovsdb-server and
    ovs-vswitchd; a context manager (see the module docstring)."""

    def __init__(
        self,
        host,
        ports: list,
        *,
        port_type: str = "system",
        xdp_mode: str = "native",
        datapath: str = "netdev",
        pmd_cpus: str | None = None,
        bridge: str | None = None,
        ready_timeout: float = 30.0,
    ):
        self.host = host
        self.ports = [getattr(p, "name", p) for p in ports]
        self.port_type, self.xdp_mode, self.pmd_cpus, self.datapath = port_type, xdp_mode, pmd_cpus, datapath
        self.ready_timeout = ready_timeout
        run = runs.current_run()
        self.prefix = run.prefix if run is not None else "lk" + os.urandom(2).hex()
        with _lock:
            self.n = next(_counter)
        self.bridge = bridge or f"{self.prefix}-ovs{self.n}"
        self.dir = OVS_DIR / f"{self.prefix}-ovs{self.n}"
        self.procs = []
        self.bridge_made = False
        self.validate()

    # ---- checks, before anything runs
    def validate(self) -> None:
        if self.datapath not in DATAPATHS:
            raise InputError(f"OVS datapath {self.datapath!r}: choose 'netdev' (userspace) or 'system' (kernel module)")
        if self.datapath == "system":
            ok, why = kernel_datapath()
            if not ok:
                raise InputError(f"OVS's kernel datapath is not available: {why}; use datapath='netdev'")
            if self.port_type == "afxdp":
                raise InputError("afxdp ports belong to the userspace datapath: use datapath='netdev'")
        if self.port_type not in PORT_TYPES:
            raise InputError(f"OVS port type {self.port_type!r}: choose one of {PORT_TYPES}")
        if self.xdp_mode not in XDP_MODES:
            raise InputError(
                f"OVS afxdp xdp-mode {self.xdp_mode!r}: choose one of {XDP_MODES} (veths have no zero-copy)"
            )
        if len(self.bridge) > 15:
            raise InputError(f"bridge name {self.bridge!r} is {len(self.bridge)} characters; Linux allows 15")
        if len(self.ports) < 2 or len(set(self.ports)) != len(self.ports):
            raise InputError(f"an OVS forwarder needs two or more distinct ports, got {self.ports}")
        if self.pmd_cpus is not None:
            try:
                mask = int(str(self.pmd_cpus), 16)
            except ValueError:
                raise InputError(f"pmd_cpus {self.pmd_cpus!r}: a hex CPU mask, e.g. '0x2'") from None
            if mask <= 0 or mask >> (os.cpu_count() or 1):
                raise InputError(
                    f"pmd_cpus {self.pmd_cpus!r} names no CPU of this machine (CPUs 0..{(os.cpu_count() or 1) - 1})"
                )
        with self.host.ipr() as ipr:
            names = {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
        missing = [p for p in self.ports if p not in names]
        if missing:
            raise InputError(
                f"interface(s) {missing} do not exist on {self.host}; interfaces there: {', '.join(sorted(names))}"
            )

    # ---- running
    @property
    def env(self) -> dict:
        d = str(self.dir)
        return {
            **os.environ,
            "OVS_RUNDIR": d,
            "OVS_DBDIR": d,
            "OVS_LOGDIR": d,
            "OVS_PKGDATADIR": str(SCHEMA.parent),
            "OVS_SYSCONFDIR": d,
        }

    def vsctl(self, *args, timeout: float = 20) -> str:
        cp = self.host.run(
            ["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=15", *args],
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if cp.returncode != 0:
            raise LabkitError(
                f"ovs-vsctl {' '.join(args)} failed: {(cp.stdout + cp.stderr).strip()}" + self._log_tail()
            )
        return cp.stdout

    def ofctl(self, *args) -> str:
        cp = self.host.run(["ovs-ofctl", *args], timeout=20, env=self.env, check=False)
        if cp.returncode != 0:
            raise LabkitError(f"ovs-ofctl {' '.join(args)} failed: {(cp.stdout + cp.stderr).strip()}")
        return cp.stdout

    def start(self) -> "OvsSwitch":
        require()
        try:
            with signals.deferred_signals():
                self.dir.mkdir(parents=True, exist_ok=False)
            d = self.dir
            self.host.run(["ovsdb-tool", "create", f"{d}/conf.db", str(SCHEMA)], env=self.env, timeout=30)
            self._daemon("ovsdb-server", [f"{d}/conf.db", f"--remote=punix:{d}/db.sock"], d / "db.sock")
            self.vsctl("--no-wait", "init")
            if self.pmd_cpus:
                self.vsctl("--no-wait", "set", "Open_vSwitch", ".", f"other_config:pmd-cpu-mask={self.pmd_cpus}")
            self._daemon("ovs-vswitchd", [f"unix:{d}/db.sock"], d / "ovs-vswitchd.ctl")
            self.bridge_made = True
            self.vsctl("add-br", self.bridge, "--", "set", "bridge", self.bridge, f"datapath_type={self.datapath}")
            for i, name in enumerate(self.ports):
                extra = []
                if self.port_type == "afxdp":
                    extra = ["--", "set", "interface", name, "type=afxdp", f"options:xdp-mode={self.xdp_mode}"]
                self.vsctl(
                    "add-port", self.bridge, name, *extra, "--", "set", "interface", name, f"ofport_request={i + 1}"
                )
            self._check_ports()
            self.ofctl("del-flows", self.bridge)
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon(self, name: str, args: list, ready: Path) -> None:
        """Start daemon NAME with ARGS, its control socket, pid file and log in the switch's
        folder, and wait until READY exists."""
        d = self.dir
        argv = [name, *args, f"--unixctl={d}/{name}.ctl", f"--pidfile={d}/{name}.pid", f"--log-file={d}/{name}.log"]
        proc = self.host.spawn(argv, name=name, env=self.env)
        self.procs.append(proc)
        deadline = time.monotonic() + self.ready_timeout
        while not ready.exists():
            if not proc.running:
                raise LabkitError(f"{name} exited ({proc.returncode}) before it was ready:\n{proc.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise LabkitError(f"{name} was not ready within {self.ready_timeout:.0f} s" + self._log_tail())
            time.sleep(0.05)

    def _check_ports(self) -> None:
        """Every port has an OpenFlow number: OVS opened it (an afxdp port it cannot open
        gets ofport -1 and an error in the database)."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            bad = {}
            for name in self.ports:
                ofport = self.vsctl("get", "interface", name, "ofport").strip()
                if ofport in ("-1", "[]"):
                    bad[name] = self.vsctl("get", "interface", name, "error").strip()
            if not bad:
                return
            if time.monotonic() > deadline:
                raise LabkitError(f"OVS could not open port(s) {bad} as {self.port_type} ports" + self._log_tail())
            time.sleep(0.1)

    def forward(self, from_port: int, to_port: int, *, set_dst: str | None = None, set_src: str | None = None) -> None:
        """One flow: everything from port FROM_PORT (0-based, in the order given) goes out of
        TO_PORT, with the Ethernet addresses rewritten where asked."""
        for p in (from_port, to_port):
            if not 0 <= p < len(self.ports):
                raise InputError(f"port {p}: this switch has ports 0..{len(self.ports) - 1}")
        actions = ([f"mod_dl_dst:{set_dst}"] if set_dst else []) + ([f"mod_dl_src:{set_src}"] if set_src else [])
        self.ofctl(
            "add-flow", self.bridge, f"in_port={from_port + 1},actions={','.join(actions + [f'output:{to_port + 1}'])}"
        )

    def flows(self) -> str:
        return self.ofctl("dump-flows", self.bridge)

    def port_stats(self) -> dict:
        """{interface: {rx_packets, rx_dropped, tx_packets, tx_dropped, ...}} as OVS counts
        them now (`ovs-ofctl dump-ports`; the database's copy is refreshed only every 5 s)."""
        names = {str(i + 1): n for i, n in enumerate(self.ports)}
        out, port = {}, None
        for line in self.ofctl("dump-ports", self.bridge).splitlines():
            m = re.match(r"\s*port\s+(\S+?):\s*(rx|tx)\s+(.*)", line) or re.match(r"\s*(tx)\s+(.*)", line)
            if m is None:
                continue
            if len(m.groups()) == 3:
                port, direction, rest = m.groups()
            else:
                direction, rest = "tx", m.group(2)
            if port not in names:
                continue
            d = out.setdefault(names[port], {})
            for k, v in re.findall(r"(\w+)=(\d+)", rest):
                d[f"{direction}_{'packets' if k == 'pkts' else 'dropped' if k == 'drop' else k}"] = int(v)
        return out

    def cpu_seconds(self) -> float:
        """CPU time of both daemons so far (all threads: ovs-vswitchd's PMD threads included)."""
        return sum(p.cpu_seconds() for p in self.procs) if self.procs else float("nan")

    def rss_mb(self) -> float:
        """Resident memory of both daemons now, in MB."""
        total = 0
        for p in self.procs:
            with suppress(OSError):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "ovs-vswitchd.log").read_text().splitlines()
        except OSError:
            return ""
        errs = [l for l in lines if "|ERR|" in l or "|WARN|" in l][-8:]
        return ("\nfrom ovs-vswitchd's log:\n" + "\n".join(errs)) if errs else ""

    def stop(self) -> None:
        """Delete the bridge (its tap device and ovs-netdev go with it), stop both daemons,
        remove the folder. Harmless twice."""
        with signals.deferred_signals():
            if self.bridge_made and len(self.procs) > 1 and self.procs[1].running:
                # on failure: the daemons are stopped below; a namespace takes the rest with it
                with suppress(LabkitError, CommandFailed):
                    self.vsctl("--if-exists", "del-br", self.bridge, timeout=30)
            self.bridge_made = False
            for proc in reversed(self.procs):
                proc.close()
            self.procs = []
            remove_dir(self.dir)

    def __enter__(self) -> "OvsSwitch":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
