"""Shared fixtures. The suite runs as root against real kernel objects (namespaces, veths,
XDP and tc programs, iptables, trafgen, DPDK). Tests that need root skip without it.

The suite never touches a person's own reports/ and data/: before labkit is imported,
LABKIT_DATA_DIR and LABKIT_REPORTS_DIR point at a temporary folder of this session, so
every table, executed notebook and index page a test makes goes there, from this process,
from `labkit` commands the tests start and from notebook kernels (they inherit the
environment). At the end the session checks that reports/ and data/ are byte for byte as
they were, and names what changed if not."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: a person's own folders, which the suite must leave as it found them
OWN_FOLDERS = ("reports", "data")


def tree_digest(folder: Path) -> dict:
    """{path relative to FOLDER: sha256 of its bytes} for every file below FOLDER (a
    directory as '<dir>', a symlink as its target)."""
    out = {}
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "<dir>"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def tree_changes(before: dict, after: dict) -> list[str]:
    return (
        [f"{p} (added)" for p in sorted(after.keys() - before.keys())]
        + [f"{p} (removed)" for p in sorted(before.keys() - after.keys())]
        + [f"{p} (changed)" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    )


# Before labkit is imported anywhere: labkit reads these once, at import.
_OWN_BEFORE = {name: tree_digest(ROOT / name) for name in OWN_FOLDERS}
SESSION_DIR = Path(tempfile.mkdtemp(prefix="labkit-tests-"))
os.environ["LABKIT_DATA_DIR"] = str(SESSION_DIR / "data")
os.environ["LABKIT_REPORTS_DIR"] = str(SESSION_DIR / "reports")

from labkit import cleanup  # noqa: E402  (after the environment above)
from labkit.testbed import topology  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


@pytest.fixture
def live_frames():
    """Skips the test, naming the probe's reason, where BPF_PROG_RUN live frames are refused
    (kernels before 5.18, containers, security policies, LABKIT_REFUSE=live_frames): the
    fallback paths are tested apart, under `refuse`. Elsewhere the test runs."""
    from labkit import capabilities

    p = capabilities.probe("live_frames")
    if not p.ok:
        pytest.skip(f"live frames refused here: {p.reason}")
    return p


@pytest.fixture
def loop_here():
    """Skips the test, naming the probe's reason, where a loop of XDP programs (the xdp_loop
    generator) cannot run: native XDP or a devmap broadcast refused."""
    from labkit import capabilities

    for facility in ("xdp_native", "devmap_broadcast"):
        p = capabilities.probe(facility)
        if not p.ok:
            pytest.skip(f"{facility} refused here: {p.reason}")


@pytest.fixture
def refuse(monkeypatch):
    """refuse("live_frames", ...): labkit (this process, and the labkit commands and notebook
    kernels a test starts, which inherit the environment) treats those facilities as refused,
    exactly as if their probes had failed; undone after the test."""
    from labkit import capabilities

    def set_refused(*names):
        monkeypatch.setenv("LABKIT_REFUSE", ",".join(names))
        capabilities.forget()

    yield set_refused
    capabilities.forget()  # monkeypatch then restores the environment


@pytest.fixture
def pair():
    """A built sender/receiver veth pair (10.11.0.1 -> 10.11.0.2), torn down afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with topology.Topology(topology.pair()) as topo:
        yield topo


@pytest.fixture
def cabled():
    """Two 'real' interfaces joined back to back in the root namespace (a veth pair made by
    the test, standing in for two cabled NICs): their names; deleted afterwards."""
    import secrets
    import subprocess

    a, b = f"rif{secrets.token_hex(2)}a", f"rif{secrets.token_hex(2)}b"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


@pytest.fixture(scope="module")
def nat():
    """The NAT of the NAT testbed (its inside and outside networks, SNAT address, ports
    20000-29999), loaded once per test module and unloaded after it."""
    from labkit.dataplanes.nat import Nat
    from labkit.experiments.nat import testbed as nat_testbed

    with Nat(nat_testbed.INSIDE_NET, nat_testbed.OUTSIDE_NET, nat_testbed.NAT_OUTSIDE, (20000, 29999)) as n:
        yield n


def own_leftovers(prefix: str) -> list[str]:
    """Kernel objects still carrying PREFIX (a finished run's): namespaces and root links."""
    return [n for n in cleanup.labkit_namespaces() + cleanup.labkit_root_links() if n.startswith(prefix)]


TOOLS = {
    "trafgen",
    "dpdk-testpmd",
    "l2fwd",
    "iperf3",
    "tcpdump",
    "pktgen",
    "dpdk-pktgen",
    "ovsdb-server",
    "ovs-vswitchd",
    "qemu-system-x86",  # a local VM's QEMU (the name as /proc/PID/comm cuts it)
    "virtme-run",
}


def _tool_processes() -> set:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                comm = open(f"/proc/{d}/comm").read().strip()
            except OSError:
                continue
            if comm in TOOLS:
                out.add((int(d), comm))
    return out


def _root_xdp_links() -> set:
    from labkit.testbed.hosts import netlink

    with netlink() as ipr:
        return {
            l.get_attr("IFLA_IFNAME")
            for l in ipr.get_links()
            if (dict((l.get_attr("IFLA_XDP") or {}).get("attrs", [])).get("IFLA_XDP_ATTACHED"))
        }


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no labkit namespace, link, iptables rule or registry of a
    finished run remains (runs of other live processes are theirs), no traffic or
    forwarding process the suite started is still running, and no interface of the root
    namespace gained an XDP program."""
    if os.geteuid() != 0:
        yield
        return
    procs, xdp = _tool_processes(), _root_xdp_links()
    yield
    left = cleanup.leftovers()
    bad = {k: v for k, v in left.items() if v}
    assert not bad, f"the suite left kernel state behind: {bad}"
    import time

    deadline = time.monotonic() + 5  # processes being reaped right now get a moment
    while _tool_processes() - procs and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _tool_processes() - procs, f"processes left running: {_tool_processes() - procs}"
    assert not _root_xdp_links() - xdp, f"XDP programs left attached: {_root_xdp_links() - xdp}"


@pytest.fixture(scope="session", autouse=True)
def labkit_folders():
    """Every test's data and reports folders: this session's temporary ones (see the module
    docstring); afterwards, reports/ and data/ of the checkout are as they were."""
    import labkit
    from labkit import results

    data, reports = SESSION_DIR / "data", SESSION_DIR / "reports"
    assert labkit.DATA_DIR == data and results.DATA_DIR == data and labkit.REPORTS_DIR == reports, (
        "labkit was imported before tests/conftest.py pointed it at temporary folders: "
        f"DATA_DIR {labkit.DATA_DIR}, REPORTS_DIR {labkit.REPORTS_DIR}"
    )
    data.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    yield {"data": data, "reports": reports}
    changed = [f"{name}/{c}" for name in OWN_FOLDERS for c in tree_changes(_OWN_BEFORE[name], tree_digest(ROOT / name))]
    shutil.rmtree(SESSION_DIR, ignore_errors=True)
    assert not changed, (
        "the test suite changed the checkout's own reports/ or data/ (or something else on "
        "this machine wrote there while it ran): "
        + ", ".join(changed[:20])
        + (f" and {len(changed) - 20} more" if len(changed) > 20 else "")
    )


@pytest.fixture
def data_dir(labkit_folders) -> Path:
    """This session's data folder (labkit.DATA_DIR while the suite runs)."""
    return labkit_folders["data"]


@pytest.fixture
def reports_dir(labkit_folders) -> Path:
    """This session's reports folder (labkit.REPORTS_DIR while the suite runs)."""
    return labkit_folders["reports"]


@pytest.fixture
def fwd_topo():
    """The L2 forwarding testbed: sender -> dut (two ports) -> receiver, torn down afterwards."""
    from labkit.experiments import l2fwd

    with topology.Topology(l2fwd.spec()) as topo:
        yield topo


@pytest.fixture
def remote_hosts(tmp_path):
    """Three "remote hosts": sshd in each of three namespaces, reached over management veths
    with keys made for this test (tests/remote_hosts.py); all torn down afterwards."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("needs root and Debian's openssh-server (`sudo make setup`)")
    from remote_hosts import NamespaceHosts

    with NamespaceHosts(tmp_path, 3) as hosts:
        yield hosts


@pytest.fixture
def capture():
    """capture(iface): tcpdump on IFACE keeping the frames that arrive there
    (labkit.measure.capture), stopped afterwards."""
    from labkit.measure.capture import Capture

    opened = []

    def open_on(iface):
        opened.append(Capture(iface.host, iface.name, inbound=True, snaplen=2048))  # whole frames of a burst
        return opened[-1]

    yield open_on
    for cap in opened:
        cap.close()
