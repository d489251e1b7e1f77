"""Inventories: which machines a run uses, in Ansible's YAML inventory format.

The same file drives `labkit provision` (Ansible) and the experiments. Hosts sit under
`all.hosts` with their connection settings; a role is a group of `all.children` holding
one host:

    all:
      vars:
        labkit_known_hosts: ~/.ssh/known_hosts     # host keys are always checked
      hosts:
        gen1:
          ansible_host: 192.0.2.1
          ansible_user: lab                        # not root: labkit goes through sudo
          ansible_ssh_private_key_file: ~/.ssh/lab
          labkit_interface: enp65s0f0              # the data-plane interface
        dut1:
          ansible_host: 192.0.2.2
          labkit_interfaces: [enp65s0f1, enp65s0f2] # two ports: in (from the sender), out (to the receiver)
          labkit_pci: "0000:41:00.1"               # for DPDK driver binding (deploy/site.yml)
          labkit_bastion: gen1                     # reached through gen1
        rx1:
          ansible_host: 192.0.2.3
          labkit_interface: enp65s0f0
      children:
        sender:   {hosts: {gen1: }}
        dut:      {hosts: {dut1: }}
        receiver: {hosts: {rx1: }}

Variables merge as Ansible merges them: `all.vars`, then each group's `vars`, then the
host's own. `parse` checks the file itself (YAML, shape, a key or role named twice, a
role with two hosts); `Inventory.require` checks it against what an experiment needs
(its roles, an interface on each, two on a role that forwards between two ports);
`Testbed` connects, and checks every host (reachable, its interfaces there, the tools the
experiment needs) before anything is changed on any.

A host that sits between two others (the DUT of 02 or 03) names two data-plane
interfaces, `labkit_interfaces: [IN, OUT]`: IN faces the sender, OUT the receiver. A host
with one names it as `labkit_interface` (or as a list of one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import InputError, MissingDependency
from labkit.testbed import remote, remote_agent, runs
from labkit.testbed.bed import describe, factory_name
from labkit.testbed.topology import Interface, safely
from labkit.testbed.undo import Undoable

ROLES = ("sender", "dut", "receiver")


@dataclass
class InventoryHost:
    name: str
    vars: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)

    @property
    def interfaces(self) -> list:
        """The host's data-plane interfaces: `labkit_interfaces` (in, out), else [labkit_interface]."""
        many, one = self.vars.get("labkit_interfaces"), self.vars.get("labkit_interface")
        if many is None:
            return [str(one)] if one else []
        if (
            not isinstance(many, list)
            or not 1 <= len(many) <= 2
            or not all(isinstance(i, str) and i for i in many)
            or len(set(many)) != len(many)
        ):
            raise InputError(
                f"host {self.name}: labkit_interfaces {many!r} must be a list of one or two distinct "
                "interface names, e.g. [enp1s0f0, enp1s0f1] (in from the sender, out to the receiver)"
            )
        if one and one != many[0]:
            raise InputError(
                f"host {self.name}: labkit_interface {one!r} is not the first of labkit_interfaces "
                f"{many}: keep only labkit_interfaces"
            )
        return list(many)

    def connection(self, inventory: "Inventory") -> dict:
        """The keyword arguments of remote.RemoteHost for this host."""
        v = self.vars
        port = v.get("ansible_port", 22)
        if not isinstance(port, int):
            raise InputError(f"host {self.name}: ansible_port {port!r} is not a whole number")
        bastion = None
        if v.get("labkit_bastion"):
            jump = inventory.host(v["labkit_bastion"], f"labkit_bastion of host {self.name}")
            bastion = {
                k: val
                for k, val in jump.connection(inventory).items()
                if k in ("hostname", "port", "user", "identity_file", "known_hosts", "python")
            }
        return {
            "name": self.name,
            "hostname": str(v.get("ansible_host") or self.name),
            "port": port,
            "user": str(v.get("ansible_user", "root")),
            "identity_file": v.get("ansible_ssh_private_key_file"),
            "known_hosts": v.get("labkit_known_hosts"),
            "sudo": v.get("ansible_become"),
            "python": str(v.get("ansible_python_interpreter") or "python3"),
            "bastion": bastion,
            "runtime_dir": v.get("labkit_runtime_dir"),
        }


@dataclass
class Inventory:
    path: Path
    hosts: dict  # name -> InventoryHost
    roles: dict  # role -> host name

    def host(self, name: str, where: str = "") -> InventoryHost:
        if name not in self.hosts:
            raise InputError(
                f"{self.path}: {where or 'the inventory'} names host {name!r}, which is not under "
                f"all.hosts; hosts: {', '.join(self.hosts) or 'none'}"
            )
        return self.hosts[name]

    def role(self, role: str) -> InventoryHost:
        if role not in self.roles:
            raise InputError(
                f"{self.path}: no host has the role {role!r}: add `{role}: {{hosts: {{HOST: }}}}` "
                f"under all.children (roles now: {', '.join(self.roles) or 'none'})"
            )
        return self.hosts[self.roles[role]]

    def require(self, roles, two_interfaces=()) -> None:
        """Every one of ROLES has a host, and that host a labkit_interface (the hosts of the
        roles in TWO_INTERFACES two of them, `labkit_interfaces: [IN, OUT]`)."""
        for role in roles:
            h = self.role(role)
            try:
                have = h.interfaces
            except InputError as exc:
                raise InputError(f"{self.path}: {exc}") from None
            if not have:
                fix = (
                    "labkit_interfaces: [IN, OUT] (from the sender, to the receiver)"
                    if role in two_interfaces
                    else "labkit_interface"
                )
                raise InputError(
                    f"{self.path}: host {h.name} (role {role}) names no data-plane interface: "
                    f"set {fix} under all.hosts.{h.name}"
                )
            if role in two_interfaces and len(have) != 2:
                raise InputError(
                    f"{self.path}: host {h.name} (role {role}) names one data-plane interface "
                    f"({have[0]}) but forwards between two: set labkit_interfaces: [IN, OUT] under "
                    f"all.hosts.{h.name} (IN from the sender, OUT to the receiver)"
                )
        used = [self.roles[r] for r in roles]
        twice = sorted({h for h in used if used.count(h) > 1})
        if twice:
            raise InputError(
                f"{self.path}: host {twice[0]} has two roles of {list(roles)}; this experiment needs "
                "one host per role (traffic between two machines)"
            )


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML with a key given twice in one mapping refused (plain YAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return Loader


def parse(path) -> Inventory:
    """Read and check the inventory file PATH (nothing is contacted)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"inventory {path} does not exist: write one in Ansible's YAML format (docs/remote-hosts.md)")
    try:
        doc = yaml.load(path.read_text(), Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(f"inventory {path} is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("all"), dict):
        raise InputError(
            f"inventory {path}: the top level must be a mapping `all:` with `hosts:` and `children:` "
            "(Ansible's YAML inventory format; see docs/remote-hosts.md)"
        )
    hosts: dict[str, InventoryHost] = {}
    roles: dict[str, str] = {}

    def mapping(value, where):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InputError(f"inventory {path}: {where} must be a mapping, not {type(value).__name__}")
        return value

    def walk(group: str, body, inherited: dict, chain: tuple):
        body = mapping(body, f"group {group}")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise InputError(
                f"inventory {path}: group {group} has {sorted(unknown)}; a group holds only hosts, vars and children"
            )
        gvars = {**inherited, **mapping(body.get("vars"), f"vars of group {group}")}
        members = mapping(body.get("hosts"), f"hosts of group {group}")
        if group in ROLES:
            if len(members) != 1:
                raise InputError(
                    f"inventory {path}: role {group} has {len(members)} hosts "
                    f"({', '.join(members) or 'none'}); give each role exactly one host"
                )
            if group in roles:
                raise InputError(
                    f"inventory {path}: role {group} is named twice (hosts {roles[group]} and "
                    f"{next(iter(members))}); give each role once, under all.children"
                )
            roles[group] = str(next(iter(members)))
        for name, hvars in members.items():
            h = hosts.setdefault(str(name), InventoryHost(str(name)))
            h.vars = {**gvars, **h.vars, **mapping(hvars, f"host {name}")}
            h.groups += [g for g in chain + (group,) if g not in h.groups]
        for child, cbody in mapping(body.get("children"), f"children of group {group}").items():
            if child in chain:
                raise InputError(f"inventory {path}: group {child} contains itself")
            walk(str(child), cbody, gvars, chain + (group,))

    walk("all", doc["all"], {}, ())
    return Inventory(path, hosts, roles)


class Testbed(Undoable):
    """The hosts of an inventory that a run uses, connected and checked: a testbed as
    `labkit.testbed.bed` describes it. Use it in a `with`: every host is reached and
    checked (interface there, TOOLS there) before the `with` body runs; leaving it closes
    every host's session (what a session changed there is undone, on every host that can
    still be reached)."""

    kind = "hosts"
    local = False  # CPU time read on this machine is no host's

    def __init__(self, inventory, roles, tools: dict | None = None, two_interfaces=()):
        self.inventory = inventory if isinstance(inventory, Inventory) else parse(inventory)
        self.roles = list(roles)
        self.tools = tools or {}
        self.inventory.require(self.roles, two_interfaces=two_interfaces)
        self.hosts: dict = {}  # role -> RemoteHost
        self.prefix = runs.Run(watchdog=False).prefix  # names this run's results, as a topology's prefix does

    def _open(self, stack) -> None:
        for role in self.roles:
            h = self.inventory.role(role)
            self.hosts[role] = stack.enter_context(remote.RemoteHost(**h.connection(self.inventory)))
        for role in self.roles:
            self._check(role)

    def _check(self, role: str) -> None:
        h, host = self.inventory.role(role), self.hosts[role]
        for ifname in h.interfaces:
            if not host.call(remote_agent.interface_exists, ifname):
                have = host.run(["ls", "/sys/class/net"], check=False).stdout.split()
                key = "labkit_interfaces" if "labkit_interfaces" in h.vars else "labkit_interface"
                raise InputError(
                    f"{self.inventory.path}: interface {ifname!r} does not exist on host {h.name} "
                    f"(role {role}); interfaces there: {', '.join(have)}: fix {key}"
                )
        missing = host.call(remote_agent.tools_missing, list(self.tools.get(role, ())))
        if missing:
            raise MissingDependency(
                f"host {h.name} (role {role}) lacks {', '.join(missing)}: run "
                f"`labkit provision {self.inventory.path}` (deploy/site.yml installs them)"
            )

    def host(self, role: str):
        return self.hosts[role]

    def end(self, role: str, port: int = 0) -> "RemoteInterface":
        """ROLE's data-plane end (PORT: which of a two-port host's), as that host sees it."""
        host, ifname = self.hosts[role], self.interfaces(role)[port]
        d = host.call(describe, ifname)
        return RemoteInterface(host, ifname, d["ifindex"], d["mac"], d["address"], d["prefixlen"], real=True)

    def hold(self, role: str, factory, *args, port: int | None = 0):
        """FACTORY entered on ROLE's host, on its interface (PORT None: the list of them),
        until the `with` ends (bed.hold)."""
        ifnames = list(self.interfaces(role)) if port is None else self.interfaces(role)[port]
        return self.hosts[role].hold("labkit.testbed.bed:on_interface", factory_name(factory), ifnames, *args)

    def call(self, role: str, fn, *args):
        """FN(*ARGS) on ROLE's host."""
        return self.hosts[role].call(fn, *args)

    def var(self, role: str, name: str, default=None):
        """ROLE's host variable NAME in the inventory."""
        return self.inventory.role(role).vars.get(name, default)

    def where(self, role: str) -> str:
        """'host NAME': where ROLE is, as a message about what happened there names it."""
        return f"host {self.inventory.role(role).name}"

    def interfaces(self, role: str) -> list:
        """ROLE's data-plane interfaces: [IN, OUT] on a host with two."""
        return self.inventory.role(role).interfaces

    def metadata(self) -> dict:
        """Every host's kernel, CPU, NIC driver and versions, for the run's metadata."""
        out = {"inventory": str(self.inventory.path), "hosts": {}}
        for role, host in self.hosts.items():
            ifs = self.interfaces(role)
            facts = safely(lambda: host.facts(ifs))
            out["hosts"][host.name] = {
                "role": role,
                "address": host.hostname,
                "interface": ifs[0] if len(ifs) == 1 else ifs,
                "session": host.prefix,
                "facts": facts,
            }
        return out


class RemoteInterface(Interface):
    """An interface of a remote host: its counters are read there."""

    def stats(self) -> dict:
        return self.host.call(remote_agent.link_counters, self.name)
