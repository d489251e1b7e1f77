"""A testbed whose receiver is a local VM: the namespace topology, with the VM in one
role's place (`labkit.testbed.vm`), behind the same interface as every testbed
(`labkit.testbed.bed`), so an experiment runs on it unchanged.

    bed = VmTestbed(topology.pair(), {"sender": ("snd", None), "receiver": ("rcv", None)})
    with bed:                                   # namespaces built, then the VM booted
        bed.end("receiver")                     # the guest's virtio-net interface
        with bed.hold("receiver", drop_receiver, "udp") as rx:   # runs in the guest
            ...
        bed.vm.cpu_seconds()                    # the vCPU threads' time, on this host

The VM's role keeps its namespace: for each of the role's ends (one per port, as
`Namespaces.ports` counts them) a tap of the VM is bridged there with that end, and the
guest's interface takes the end's address; where the role's host forwards IPv4, so does
the guest. Calls for the VM's role go into the
guest the way an inventory's hosts are called (mitogen over SSH); the other roles stay
in this process. `local` is False: CPU time read on this machine is not the guest's (the
VM's own is `vm.cpu_seconds()`).
"""

from __future__ import annotations

from labkit.testbed.bed import Namespaces, describe, factory_name
from labkit.testbed.inventory import RemoteInterface
from labkit.testbed.undo import Undoable
from labkit.testbed.vm import VmHost


class VmTestbed(Undoable):
    """The namespace topology SPEC with ROLES ({role: (host, towards)}), the VM_ROLE's end
    handed to a VM (VM_OPTIONS: `VmHost`'s keyword arguments)."""

    kind = "namespaces+vm"
    local = False  # CPU time read here is not the guest's

    def __init__(self, spec, roles: dict, vm_role: str = "receiver", **vm_options):
        if vm_role not in roles:
            raise KeyError(vm_role)
        self.namespaces = Namespaces(spec, roles)
        self.vm_role, self.vm_options = vm_role, vm_options
        self.vm: VmHost | None = None

    @property
    def prefix(self) -> str:
        return self.namespaces.prefix

    def _open(self, stack) -> None:
        stack.enter_context(self.namespaces)
        ends = [self.namespaces.end(self.vm_role, i) for i in range(self.namespaces.ports(self.vm_role))]
        where = self.namespaces.roles[self.vm_role]
        where = where[0] if isinstance(where, list) else where
        name = where[0] if isinstance(where, tuple) else where  # (host, towards), or the host alone
        forwarding = name in self.namespaces.spec.forwarding  # the VM routes where its host did
        links = [(end.host, end.name) for end in ends]
        self.vm = stack.enter_context(VmHost(links=links, forwarding=forwarding, **self.vm_options))

    def end(self, role: str, port: int = 0):
        if role != self.vm_role:
            return self.namespaces.end(role, port)
        host, ifname = self.vm.remote, self.vm.interfaces[port]
        d = host.call(describe, ifname)
        return RemoteInterface(host, ifname, d["ifindex"], d["mac"], d["address"], d["prefixlen"], real=True)

    def host(self, role: str):
        return self.vm.remote if role == self.vm_role else self.namespaces.host(role)

    def hold(self, role: str, factory, *args, port: int | None = 0):
        if role != self.vm_role:
            return self.namespaces.hold(role, factory, *args, port=port)
        ifnames = list(self.vm.interfaces) if port is None else self.vm.interfaces[port]
        return self.vm.remote.hold("labkit.testbed.bed:on_interface", factory_name(factory), ifnames, *args)

    def call(self, role: str, fn, *args):
        return self.vm.remote.call(fn, *args) if role == self.vm_role else self.namespaces.call(role, fn, *args)

    def var(self, role: str, name: str, default=None):
        return default

    def where(self, role: str) -> str:
        return f"the VM ({self.vm.accel})" if role == self.vm_role and self.vm else ""

    def ports(self, role: str) -> int:
        return len(self.vm.interfaces) if role == self.vm_role else self.namespaces.ports(role)

    def metadata(self) -> dict:
        out = self.namespaces.metadata()
        try:
            out["vm"] = {**self.vm.metadata(), "role": self.vm_role, "facts": self.vm.remote.facts(self.vm.interfaces)}
        except Exception as exc:  # metadata never crashes a run
            out["vm"] = f"unavailable: {exc}"
        return out
