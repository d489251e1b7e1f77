""" "Remote hosts" on this machine, for the tests of labkit.testbed.remote, inventories,
provisioning and clusters.

Each host is a network namespace with Debian's sshd inside, reached from the root
namespace over a management veth (10.250.X.4i+2, the root side .4i+1), with a host key,
a login key and a known_hosts file made for this test only. The hosts are also joined
by data-plane veths: h1 <-> h2 (10.11.0.1/24 <-> 10.11.0.2/24) and, with three hosts,
h2 <-> h3. Everything is a labkit topology, so leaving the `with` removes the
namespaces (their sshd is stopped first, the management veths go with them).

    with NamespaceHosts(tmp_path, 2) as hosts:
        hosts.inventory({"sender": "h1", "receiver": "h2"})   # an Ansible YAML inventory
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import yaml

from labkit.testbed import topology
from labkit.testbed.undo import Undoable

SSHD = "/usr/sbin/sshd"
#: the far side's Python: Debian's, as on a provisioned host (bcc from python3-bpfcc; labkit
#: and pyroute2 are served by mitogen from this machine)
PYTHON = "/usr/bin/python3"


def keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


class NamespaceHosts(Undoable):
    """N namespaces, each running sshd; use as a context manager."""

    def __init__(self, folder: Path, count: int = 2):
        self.folder = Path(folder)
        self.count = count
        self.names = [f"h{i + 1}" for i in range(count)]
        self.addresses: dict[str, str] = {}
        self.data_if: dict[tuple[str, str], str] = {}  # (host, towards) -> interface name
        self.topo = None
        self.mgmt_links: list[str] = []

    def _open(self, stack) -> None:
        links = [
            topology.LinkSpec(a, b, "10.11.0.1/24", "10.11.0.2/24")
            if i == 0
            else topology.LinkSpec(a, b, f"10.11.{i}.1/24", f"10.11.{i}.2/24")
            for i, (a, b) in enumerate(zip(self.names, self.names[1:]))
        ]
        # the topology's close stops each namespace's sshd, then removes the namespaces
        self.topo = stack.enter_context(topology.Topology(topology.TopologySpec(hosts=list(self.names), links=links)))
        stack.callback(self._delete_mgmt_links)  # first: the pair goes at once (a namespace is removed lazily)
        self._start()

    def _delete_mgmt_links(self) -> None:
        for name in self.mgmt_links:
            subprocess.run(["ip", "link", "del", name], capture_output=True)

    def _start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        self.identity = keypair(self.folder / "id_login")
        (self.folder / "authorized_keys").write_text((self.folder / "id_login.pub").read_text())
        third = int(self.topo.run.prefix[2:4], 16)
        known = []
        for a, b in self.topo.links:
            self.data_if[(a.host.name, b.host.name)] = a.name
            self.data_if[(b.host.name, a.host.name)] = b.name
        #: each host's data-plane addresses: its sshd listens there too, for hosts behind a bastion
        self.data_addresses = {
            n: [e.address for link in self.topo.links for e in link if e.host.name == n] for n in self.names
        }
        for i, name in enumerate(self.names):
            host = self.topo.host(name)
            root_if, ns_if = self.topo.run.name(f"m{i}"), "mgmt0"
            addr_root, addr_ns = f"10.250.{third}.{4 * i + 1}", f"10.250.{third}.{4 * i + 2}"
            subprocess.run(
                ["ip", "link", "add", root_if, "type", "veth", "peer", "name", ns_if, "netns", host.netns], check=True
            )
            self.mgmt_links.append(root_if)
            subprocess.run(["ip", "addr", "add", f"{addr_root}/30", "dev", root_if], check=True)
            subprocess.run(["ip", "link", "set", root_if, "up"], check=True)
            host.run(["ip", "addr", "add", f"{addr_ns}/30", "dev", ns_if])
            host.run(["ip", "link", "set", ns_if, "up"])
            key = keypair(self.folder / f"host_key_{name}")
            config = self.folder / f"sshd_{name}.conf"
            config.write_text(
                "\n".join(
                    [
                        "Port 22",
                        f"ListenAddress {addr_ns}",
                        *(f"ListenAddress {a}" for a in self.data_addresses[name]),
                        f"HostKey {key}",
                        f"AuthorizedKeysFile {self.folder / 'authorized_keys'} .ssh/authorized_keys",  # the latter: a test's own users
                        f"PidFile {self.folder / name}.pid",
                        "UsePAM no",
                        "StrictModes no",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "Subsystem sftp internal-sftp",
                        "LogLevel ERROR",
                        "",
                    ]
                )
            )
            host.spawn([SSHD, "-D", "-e", "-f", str(config)], name=f"sshd-{name}")
            self.addresses[name] = addr_ns
            pub = (self.folder / f"host_key_{name}.pub").read_text().strip()
            known += [f"{a} {pub}" for a in [addr_ns, *self.data_addresses[name]]]
        self.known_hosts = self.folder / "known_hosts"
        self.known_hosts.write_text("\n".join(known) + "\n")
        for name in self.names:
            wait_for_port(self.addresses[name], 22)

    def host(self, name: str):
        """The namespace Host of NAME (to look at it from outside, as a test does)."""
        return self.topo.host(name)

    def spec(self, name: str, **extra) -> dict:
        """The connection settings of NAME, as labkit.testbed.remote.RemoteHost takes them."""
        return {
            "name": name,
            "hostname": self.addresses[name],
            "user": "root",
            "python": PYTHON,
            "identity_file": str(self.identity),
            "known_hosts": str(self.known_hosts),
            **extra,
        }

    def inventory(self, roles: dict, path: Path | None = None, hostvars: dict | None = None) -> Path:
        """An Ansible YAML inventory: every host under `all`, each role a group holding its
        host, each host's data-plane interface towards its peer as `labkit_interface`."""
        hostvars = hostvars or {}
        hosts = {}
        for name in self.names:
            peer = next((b for (a, b) in self.data_if if a == name and b in roles.values()), None)
            hosts[name] = {
                "ansible_host": self.addresses[name],
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.identity),
                "labkit_known_hosts": str(self.known_hosts),
                "ansible_python_interpreter": PYTHON,
                **({"labkit_interface": self.data_if[(name, peer)]} if peer else {}),
                **hostvars.get(name, {}),
            }
        doc = {"all": {"hosts": hosts, "children": {role: {"hosts": {h: None}} for role, h in roles.items()}}}
        path = path or self.folder / "inventory.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


def wait_for_port(address: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
