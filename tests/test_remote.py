"""Remote hosts over SSH with mitogen, for real: each "host" is a namespace running Debian's
sshd (tests/remote_hosts.py), reached with keys made for the test and its host key checked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from remote_hosts import keypair

from labkit import cleanup
from labkit.testbed import runs
from labkit.testbed.hosts import CommandFailed
from labkit.testbed.remote import HostUnreachable, RemoteHost
from labkit.testbed.remote_agent import interface_exists, link_counters

pytest.importorskip("mitogen")


def netns_of_self() -> str:
    return os.readlink("/proc/self/ns/net")


def served_from() -> dict:
    """Where the far side got labkit and pyroute2 from (mitogen serves them: 'master:...')."""
    import sys

    import bcc
    import pyroute2

    import labkit

    return {"labkit": labkit.__file__, "pyroute2": pyroute2.__file__, "python": sys.executable, "bcc": bcc.__file__}


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_run_spawn_and_call_on_the_far_host(remote_hosts):
    h1 = remote_hosts.host("h1")
    with RemoteHost(**remote_hosts.spec("h1")) as host:
        # the far side is the namespace behind sshd, not this process's
        assert host.call(netns_of_self) == h1.run(["readlink", "/proc/self/ns/net"]).stdout.strip()
        assert host.call(netns_of_self) != netns_of_self()
        served = host.call(served_from)
        assert served["labkit"].startswith("master:") and served["pyroute2"].startswith("master:"), served
        assert served["python"] == "/usr/bin/python3"
        assert served["bcc"].startswith("/usr/lib/python3/dist-packages/"), "bcc is the host's own"
        ifname = remote_hosts.data_if[("h1", "h2")]
        assert ifname in host.run(["ip", "-o", "link"]).stdout
        assert host.call(interface_exists, ifname) and not host.call(interface_exists, "nosuch0")
        assert host.call(link_counters, ifname)["tx_packets"] >= 0
        with pytest.raises(CommandFailed, match="exited 3"):
            host.run(["sh", "-c", "echo oops; exit 3"])
        assert host.run(["cat"], input="hello").stdout == "hello"
        registry = runs.REGISTRY_DIR / f"{host.prefix}.json"
        assert registry.exists(), "the session's run is registered on the far host"
        with host.spawn(["sleep", "300"], name="sleeper") as proc:
            assert proc.running
            assert proc.pid in [int(p) for p in h1.run(["pgrep", "-x", "sleep"], check=False).stdout.split()]
        assert gone(proc.pid), "leaving the `with` stops and reaps the far process"
        other = host.spawn(["sh", "-c", "echo started; sleep 300"])
        assert not gone(other.pid, timeout=0.2)
    assert gone(other.pid), "closing the host stops what its processes still run"
    assert other.output().startswith("started")
    assert not registry.exists(), "closing the host closes its run there"


def test_facts_name_kernel_cpu_driver(remote_hosts):
    ifname = remote_hosts.data_if[("h2", "h1")]
    with RemoteHost(**remote_hosts.spec("h2")) as host:
        facts = host.facts([ifname])
    assert facts["kernel"] == os.uname().release
    assert facts["nics"][ifname]["driver"] == "veth"
    assert facts["cpus"] == os.cpu_count() and facts["versions"]["bcc"]


def test_host_key_is_checked(remote_hosts, tmp_path):
    stranger = keypair(tmp_path / "stranger")
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"{remote_hosts.addresses['h1']} {(tmp_path / 'stranger.pub').read_text()}")
    with pytest.raises(HostUnreachable, match=r"host h1 .*host key"):
        RemoteHost(**remote_hosts.spec("h1", known_hosts=str(wrong))).connect()
    with pytest.raises(HostUnreachable, match=r"host h1 .*(not accepted|authorized_keys)"):
        RemoteHost(**remote_hosts.spec("h1", identity_file=str(stranger))).connect()


def parents() -> list:
    """The names of this process's parent, grandparent and great-grandparent."""
    out, pid = [], os.getpid()
    for _ in range(3):
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        out.append(open(f"/proc/{pid}/comm").read().strip())
    return out


def test_sudo_on_the_far_side(remote_hosts):
    """sudo=True (a login that is not root) puts sudo between sshd and labkit's Python;
    where the host has no sudo, the error says so."""
    import shutil

    host = RemoteHost(**remote_hosts.spec("h1", sudo=True))
    if shutil.which("sudo"):  # the namespace hosts share this machine's programs
        with host:
            assert "sudo" in host.call(parents)
    else:
        with pytest.raises(HostUnreachable, match=r"host h1 .*sudo is not installed there"):
            host.connect()


@pytest.fixture
def login_user(remote_hosts):
    """A throwaway user of this machine (the namespace hosts share its users): a home in a
    temporary folder with the test's login key in .ssh/authorized_keys, no password (key
    logins only); `allow_sudo()` writes its sudoers drop-in. The user, its home and the
    drop-in go on every exit path."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    if not shutil.which("sudo") or not shutil.which("useradd"):
        pytest.skip("needs sudo and useradd (`sudo make setup` installs sudo)")
    name = f"lktest{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"labkit-home-{name}-"))  # sshd reads its keys as the user
    sudoers = Path(f"/etc/sudoers.d/labkit-test-{name}")

    class User:
        def allow_sudo(self):
            text = f"{name} ALL=(ALL) NOPASSWD: ALL\n"
            sudoers.write_text(text)
            sudoers.chmod(0o440)
            subprocess.run(["visudo", "-cqf", str(sudoers)], check=True)

    user = User()
    user.name, user.home, user.sudoers = name, home, sudoers
    try:
        # -p '*': no password, but not a locked account (sshd refuses those even with a key)
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", name], check=True)
        (home / ".ssh").mkdir()
        (home / ".ssh" / "authorized_keys").write_text((remote_hosts.folder / "id_login.pub").read_text())
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            shutil.chown(path, name)
        yield user
    finally:
        sudoers.unlink(missing_ok=True)
        # what its sessions still run (this test's own): killed, then waited for (bounded), since
        # userdel refuses a user whose processes are still exiting ("currently used by process")
        deadline, pids = time.monotonic() + 30, ["?"]
        while pids and time.monotonic() < deadline:
            pids = subprocess.run(["pgrep", "-u", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(0.1)
        gone = subprocess.run(["userdel", name], capture_output=True, text=True)
        if gone.returncode not in (0, 6):  # 6: no such user (useradd itself failed)
            gone = subprocess.run(["userdel", "-f", name], capture_output=True, text=True)
        shutil.rmtree(home, ignore_errors=True)
    assert not pids, f"processes of user {name} outlived SIGKILL for 30 s: {pids}"
    assert gone.returncode in (0, 6), f"userdel {name} failed ({gone.returncode}): {gone.stderr.strip()}"
    assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"user {name} is still there"
    assert not home.exists(), f"the home {home} of user {name} is still there"
    assert not sudoers.exists(), f"the sudoers drop-in {sudoers} is still there"


def xdp_attached(host, ifname: str) -> bool:
    return "xdp" in host.run(["ip", "-d", "link", "show", ifname]).stdout.split("\n", 1)[0]


def test_login_that_is_not_root_runs_labkit_as_root_through_sudo(remote_hosts, login_user):
    """A real login that is not root (ansible_user: USER, passwordless sudo in sudoers):
    labkit's far side runs as root through sudo, and an XDP program attaches there; without
    the sudoers entry the connection fails with the fix named."""
    spec = remote_hosts.spec("h1", user=login_user.name)
    refused = (
        rf"host h1 \({login_user.name}@.*password is required.*{login_user.name} cannot sudo without a password there: "
    )
    with pytest.raises(HostUnreachable, match=refused + "allow it in sudoers"):
        RemoteHost(**spec).connect()
    login_user.allow_sudo()
    h1, ifname = remote_hosts.host("h1"), remote_hosts.data_if[("h1", "h2")]
    with RemoteHost(**spec) as host:
        assert host.sudo, "a login that is not root goes through sudo by default"
        assert host.call(os.getuid) == 0 and host.call(os.geteuid) == 0
        assert host.call(os.getenv, "SUDO_USER") == login_user.name, "sudo was entered as the login user"
        assert "sudo" in host.call(parents)
        assert host.run(["id", "-u"]).stdout.strip() == "0", "commands run as root too"
        with host.hold(
            "labkit.testbed.bed:on_interface", "labkit.experiments.xdp_drop_receiver:drop_receiver", ifname, "udp"
        ) as receiver:
            receiver("use", "xdp_generic")
            assert xdp_attached(h1, ifname), "the XDP program attached on the far host"
        assert not xdp_attached(h1, ifname)
        registry = runs.REGISTRY_DIR / f"{host.prefix}.json"
        assert registry.exists()
    assert not registry.exists()


def test_unreachable_host_names_itself(remote_hosts):
    spec = remote_hosts.spec("h1", hostname="10.250.255.254", connect_timeout=3)  # nobody there
    with pytest.raises(HostUnreachable, match=r"host h1 .*sshd"):
        RemoteHost(**spec).connect()


def test_bastion_reaches_a_host_behind_it(remote_hosts):
    """h2's sshd also listens on its data-plane address, which only h1 can reach."""
    behind = remote_hosts.spec("h2", hostname=remote_hosts.data_addresses["h2"][0], bastion=remote_hosts.spec("h1"))
    with RemoteHost(**behind) as host:
        assert host.call(netns_of_self) == remote_hosts.host("h2").run(["readlink", "/proc/self/ns/net"]).stdout.strip()


def test_lost_host_is_an_error_the_others_close_and_clean_undoes_it(remote_hosts, tmp_path):
    """h2's connection dies mid-run: the next call says which host; h1 closes normally;
    `clean_hosts` (labkit clean --inventory) then undoes what h2's session left there."""
    inventory = remote_hosts.inventory({"sender": "h1", "receiver": "h2"})
    h1, h2 = RemoteHost(**remote_hosts.spec("h1")).connect(), RemoteHost(**remote_hosts.spec("h2")).connect()
    try:
        p1, p2 = h1.spawn(["sleep", "300"]), h2.spawn(["sleep", "300"])
        reg1, reg2 = (runs.REGISTRY_DIR / f"{h.prefix}.json" for h in (h1, h2))
        os.kill(h2.call(os.getpid), signal.SIGKILL)  # the far interpreter dies, as when the network goes
        with pytest.raises(HostUnreachable, match=r"host h2 .*labkit clean --inventory"):
            h2.run(["true"])
    finally:
        h1.close()
        h2.close()
    assert gone(p1.pid) and not reg1.exists(), "the reachable host was closed as usual"
    cleanup.clean_hosts(inventory, log=lambda msg: None)
    assert gone(p2.pid), "clean --inventory stopped what the lost session had started"
    assert not reg2.exists(), "and removed its registry"
    assert not reg2.with_name(f"{h2.prefix}-bpf").exists(), "and the BPF sources the session had brought"
