"""What an experiment runs on, whatever kind of testbed it is: one interface.

An experiment asks its testbed for the hosts by role and their data-plane ends, and holds
what it sets up on a host open for as long as it needs it; it never asks where the host is.

    with bed:                                               # built, or connected and checked
        snd, rcv = bed.end("sender"), bed.end("receiver")   # name, mac, address, host, stats()
        with bed.hold("receiver", drop_receiver, "udp") as receiver:
            receiver("use", "xdp_native")                   # a method of what drop_receiver yielded
            receiver("processed")

A held factory is a context manager function of a data-plane end and plain arguments; it
runs where the role's host is: in this process for namespaces (or this machine's real
interfaces), in the labkit session on that host for an inventory's hosts, where the end is
the host's own interface. Either way what it set up is undone when the `with` ends.

Two kinds today, each built by `testbeds.testbed_for`:
- `Namespaces`: a topology of namespaces and veths (or real interfaces), this machine;
- `inventory.Testbed`: an inventory's hosts, reached over SSH.
`local` says whether every host is this machine, so that CPU time read here is theirs.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Callable

from labkit.errors import InputError


class Handle:
    """What a held factory yielded, called the same way on any testbed: ``handle()``
    calls it, ``handle("method", *args)`` calls its method (a remote host's `Held` is
    called the same way)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, method: str | None = None, *args):
        return (getattr(self.value, method) if method else self.value)(*args)


def factory_name(factory: Callable) -> str:
    """'module:function' of FACTORY, as a remote session imports it; a factory must be a
    module-level function for any testbed to run it."""
    name = f"{factory.__module__}:{factory.__qualname__}"
    if "<" in factory.__qualname__ or "." in factory.__qualname__:
        raise InputError(f"{name} is not a module-level function: a testbed host imports it by name")
    return name


@contextmanager
def on_interface(factory: str, ifname, *args):
    """On a remote host: FACTORY entered on this host's interface IFNAME (or, for a list
    of names, on the list of those interfaces)."""
    module, function = factory.split(":", 1)
    ends = [local_interface(i) for i in ifname] if isinstance(ifname, list) else local_interface(ifname)
    with getattr(importlib.import_module(module), function)(ends, *args) as value:
        yield value


class Namespaces:
    """The built-in testbed: a topology of namespaces and veths (or this machine's real
    interfaces), with ROLES naming each role's end: {role: (host, towards)}."""

    kind = "namespaces"
    local = True

    def __init__(self, spec, roles: dict):
        from labkit.testbed import topology

        self.spec, self.roles = spec, dict(roles)
        self.topology = topology.Topology(spec)

    @property
    def prefix(self) -> str:
        return self.topology.run.prefix

    def __enter__(self) -> "Namespaces":
        self.topology.__enter__()
        return self

    def __exit__(self, *exc):
        return self.topology.__exit__(*exc)

    def end(self, role: str, port: int = 0):
        """ROLE's data-plane end (a topology.Interface); PORT: which of a two-port host's."""
        where = self.roles[role]
        where = where[port] if isinstance(where, list) else where
        return self.topology.iface(*where) if isinstance(where, tuple) else self.topology.iface(where)

    def host(self, role: str):
        return self.end(role).host

    def call(self, role: str, fn: Callable, *args):
        """FN(*ARGS) where ROLE's host is: in this process, inside its namespace."""
        with self.host(role).entered():
            return fn(*args)

    def var(self, role: str, name: str, default=None):
        """A setting of ROLE's host (an inventory's host variable); none here."""
        return default

    def where(self, role: str) -> str:
        """Where ROLE is, as a message names it: nowhere but here, so nothing."""
        return ""

    def ports(self, role: str) -> int:
        where = self.roles[role]
        return len(where) if isinstance(where, list) else 1

    @contextmanager
    def hold(self, role: str, factory: Callable, *args, port: int | None = 0):
        """FACTORY(end, *ARGS) entered for ROLE (PORT None: FACTORY([every end], *ARGS))."""
        factory_name(factory)  # the same rule on every testbed
        ends = [self.end(role, i) for i in range(self.ports(role))] if port is None else self.end(role, port)
        with factory(ends, *args) as value:
            yield Handle(value)

    def metadata(self) -> dict:
        return self.topology.metadata()


def describe(ifname: str) -> dict:
    iface = local_interface(ifname)
    return {"mac": iface.mac, "address": iface.address, "prefixlen": iface.prefixlen, "ifindex": iface.ifindex}


def local_interface(ifname: str):
    """IFNAME of this host as a topology.Interface (real: what labkit attaches to it is
    recorded in this host's run registry, for `labkit clean`)."""
    from labkit.testbed.hosts import ROOT_HOST
    from labkit.testbed.topology import Interface

    with ROOT_HOST.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise InputError(f"no interface {ifname!r} on this host: fix labkit_interface in the inventory")
        link = ipr.link("get", index=idx[0])[0]
        addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx[0], family=2)]
    ip, pfx = addrs[0] if addrs else (None, None)
    return Interface(ROOT_HOST, ifname, idx[0], link.get_attr("IFLA_ADDRESS"), ip, pfx, real=True)
