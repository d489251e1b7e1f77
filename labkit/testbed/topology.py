"""Test topologies: hosts (network namespaces) joined by links (veth pairs), or real interfaces.

Describe it as data, build it in a `with`:

    spec = TopologySpec(hosts=["snd", "rcv"],
                        links=[LinkSpec("snd", "rcv", "10.11.0.1/24", "10.11.0.2/24")])
    with Topology(spec) as topo:
        topo.host("rcv").run(["ip", "addr"])
        topo.iface("snd", "rcv").mac

Every name gets the run's short random prefix (``lkXXXX-``) so two runs never collide and
`labkit clean` can find leftovers. Leaving the `with` removes everything it made, on error,
Ctrl-C and SIGTERM too; a topology that fails half-way is torn down before the error is raised.
Real interfaces are used where named (`RealLink`): labkit never deletes them, it only removes
the addresses it added.
"""

from __future__ import annotations

import errno
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field

from labkit.addresses import check_interface, check_ip, check_mac
from labkit.errors import InputError
from labkit.testbed import runs, signals
from labkit.testbed.hosts import Host, kill_pids, pids_in_netns
from labkit.testbed.topology_spec import (  # noqa: F401 (read as topology.X)
    HOST_NAME_RE,
    LinkSpec,
    RealLink,
    TopologySpec,
    check_real_ifname,
    pair,
)
from labkit.testbed.undo import Undoable


@dataclass
class Interface:
    """One end of a link, as built: where it lives and what it is called."""

    host: Host
    name: str
    ifindex: int
    mac: str
    address: str | None  # IP without prefix
    prefixlen: int | None
    real: bool = False
    peer: "Interface | None" = field(default=None, repr=False)

    @property
    def netns(self) -> str | None:
        return self.host.netns

    def stats(self) -> dict:
        """The kernel's link counters (IFLA_STATS64) of this interface."""
        with self.host.ipr() as ipr:
            return dict(ipr.link("get", index=self.ifindex)[0].get_attr("IFLA_STATS64"))

    def _ethtool(self, flag: str) -> list[tuple[str, str]]:
        """The (name, value) lines `ethtool FLAG` prints for this interface ([] where none)."""
        out = self.host.run(["ethtool", flag, self.name], check=False, timeout=10).stdout
        pairs = (line.rpartition(":") for line in out.splitlines()[1:] if ":" in line)
        return [(k.strip(), v.strip()) for k, _, v in pairs]

    def ethtool_stats(self) -> dict:
        """`ethtool -S` counters (veth: per-queue XDP and drop counters), {} where none."""
        out = {}
        for k, v in self._ethtool("-S"):
            with suppress(ValueError):
                out[k] = int(v)
        return out

    @contextmanager
    def down(self):
        """Hold the interface administratively down (e.g. to measure a generator alone:
        a veth whose peer is down discards at once); brought back up on exit."""
        with self.host.ipr() as ipr:
            ipr.link("set", index=self.ifindex, state="down")
        try:
            yield self
        finally:
            with self.host.ipr() as ipr:
                ipr.link("set", index=self.ifindex, state="up")

    def offloads(self) -> dict:
        """`ethtool -k` features that are on/off (recorded in run metadata)."""
        return {k: v.split()[0] if v else "" for k, v in self._ethtool("-k")}


class Topology(Undoable):
    """A built topology. Use it as a context manager; leaving it (or `close()`, twice
    harmless) undoes everything."""

    def __init__(self, spec: TopologySpec):
        self.spec = spec
        self.hosts: dict[str, Host] = {}
        self.links: list[tuple[Interface, Interface]] = []
        self.run: runs.Run | None = None

    # ---- access
    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise InputError(f"no host {name!r} in this topology; hosts: {sorted(self.hosts)}") from None

    def iface(self, host: str, towards: str | None = None) -> Interface:
        """The interface of HOST (on the link towards host TOWARDS, when it has several)."""
        for a, b in self.links:
            for me, other in ((a, b), (b, a)):
                if me.host.name == host and (towards is None or other.host.name == towards):
                    return me
        raise InputError(f"host {host!r} has no interface" + (f" towards {towards!r}" if towards else ""))

    # ---- build / teardown
    def __enter__(self) -> "Topology":
        runs.require_root("building a topology")
        return super().__enter__()

    def _open(self, stack: ExitStack) -> None:
        stack.enter_context(signals.terminate_as_exception())
        self.run = stack.enter_context(runs.run_scope())
        self.spec.validate(len(self.run.prefix))
        self._build(stack)

    def _build(self, stack: ExitStack) -> None:
        from pyroute2 import netns

        real_hosts = {end for l in self.spec.links if isinstance(l, RealLink) for end in (l.a, l.b)}
        for h in self.spec.hosts:
            if h in real_hosts:
                self.hosts[h] = Host(h, None)
                continue
            name = self.run.name(h)
            with signals.deferred_signals():
                netns.create(name)
                stack.callback(_remove_netns, name)
            host = Host(h, name)
            stack.callback(host.stop_all)  # processes go before their namespace
            self.hosts[h] = host
            with host.ipr() as ipr:
                lo = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo[0], state="up")
            if not self.spec.ipv6:  # before any link exists, so every interface inherits it
                host.run(
                    ["sh", "-c", "for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done"],
                    check=False,
                    timeout=10,
                )
        for i, link in enumerate(self.spec.links):
            if isinstance(link, RealLink):
                self.links.append(self._real_link(stack, link))
            else:
                self.links.append(self._veth(stack, i, link))
        for h in self.spec.forwarding:
            if self.hosts[h].netns is None:
                raise InputError(f"host {h!r} is the root namespace: labkit does not turn on forwarding there")
            self.hosts[h].run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], timeout=10)
        for host, dst, via in self.spec.routes:
            stack.enter_context(route(self.hosts[host], dst, via))

    def _veth(self, stack: ExitStack, i: int, link: LinkSpec) -> tuple[Interface, Interface]:
        ha, hb = self.hosts[link.a], self.hosts[link.b]
        sa, sb = self.spec._end_names(i, link)
        na, nb = self.run.name(sa), self.run.name(sb)
        with ha.ipr() as ipr:
            # The veth is born with its peer already in the other namespace; the namespace
            # removal takes it away, so no separate undo is needed for namespaced ends.
            q = {"num_rx_queues": link.queues, "num_tx_queues": link.queues}
            peer = {"ifname": nb, **q}
            if hb.netns:
                peer["net_ns_fd"] = hb.netns
            ipr.link("add", ifname=na, kind="veth", peer=peer, **q)
        if not ha.netns or not hb.netns:
            stack.callback(_delete_link, ha, na)
        ends = []
        for host, name, addr, mac in ((ha, na, link.a_addr, link.a_mac), (hb, nb, link.b_addr, link.b_mac)):
            with host.ipr() as ipr:
                idx = ipr.link_lookup(ifname=name)[0]
                kw = {"mtu": int(link.mtu)}
                if mac:
                    kw["address"] = check_mac(mac)
                ipr.link("set", index=idx, **kw)
                ip = pfx = None
                if addr:
                    iface = check_interface(addr)
                    ip, pfx = str(iface.ip), iface.network.prefixlen
                    ipr.addr("add", index=idx, address=ip, prefixlen=pfx)
                ipr.link("set", index=idx, state="up")
                got = ipr.link("get", index=idx)[0]
                ends.append(Interface(host, name, idx, got.get_attr("IFLA_ADDRESS"), ip, pfx))
            for feature, value in self.spec.offloads.items():
                host.run(["ethtool", "-K", name, feature, value], timeout=10)
        a, b = ends
        a.peer, b.peer = b, a
        return a, b

    def _real_link(self, stack: ExitStack, link: RealLink) -> tuple[Interface, Interface]:
        ends = []
        for hostname, ifname, addr in ((link.a, link.a_if, link.a_addr), (link.b, link.b_if, link.b_addr)):
            host = self.hosts[hostname]
            if ifname is None:  # the sending side is another machine: only the receiver is here
                ends.append(None)
                continue
            check_real_ifname(ifname)
            with host.ipr() as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ip = pfx = None
                if addr:
                    iface = check_interface(addr)
                    ip, pfx = str(iface.ip), iface.network.prefixlen
                    have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
                    if (ip, pfx) not in have:
                        rec = {"kind": "address", "ifname": ifname, "address": ip, "prefixlen": pfx}
                        with signals.deferred_signals():
                            ipr.addr("add", index=idx, address=ip, prefixlen=pfx)
                            self.run.note_foreign(rec)
                            stack.callback(_del_addr, host, idx, ip, pfx, self.run, rec)
                ipr.link("set", index=idx, state="up")
                got = ipr.link("get", index=idx)[0]
                ends.append(Interface(host, ifname, idx, got.get_attr("IFLA_ADDRESS"), ip, pfx, real=True))
        a, b = ends
        if a is not None:
            a.peer, b.peer = b, a
        return a, b

    def metadata(self) -> dict:
        """What a result file records about the topology: names, MACs, offloads."""
        out = {
            "prefix": self.run.prefix if self.run else None,
            "offloads_set": dict(self.spec.offloads),
            "ipv6": self.spec.ipv6,
            "links": [],
        }
        for a, b in self.links:
            out["links"].append(
                [
                    None
                    if e is None
                    else {
                        "host": e.host.name,
                        "ifname": e.name,
                        "mac": e.mac,
                        "address": e.address,
                        "real": e.real,
                        "offloads": safely(e.offloads),
                    }
                    for e in (a, b)
                ]
            )
        return out


@contextmanager
def route(host: Host, dst: str, via: str):
    """A static route on HOST (through pyroute2), removed on exit; DST is 'a.b.c.d/len' or
    'default'."""
    kw = {"gateway": check_ip(via)}
    if dst != "default":
        net = check_interface(dst).network
        kw.update(dst=str(net.network_address), dst_len=net.prefixlen)
    with host.ipr() as ipr:
        ipr.route("add", **kw)
    try:
        yield
    finally:
        with host.ipr() as ipr:
            try:
                ipr.route("del", **kw)
            except Exception as exc:  # the link, and with it the route, may be gone
                if getattr(exc, "code", None) not in (errno.ESRCH, errno.ENODEV):
                    raise


@contextmanager
def address(host: Host, ifname: str, addr: str):
    """An extra address ('a.b.c.d/len') on IFNAME of HOST, removed on exit."""
    iface = check_interface(addr)
    with host.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise InputError(f"no interface {ifname!r} on {host}")
        ipr.addr("add", index=idx[0], address=str(iface.ip), prefixlen=iface.network.prefixlen)
    try:
        yield
    finally:
        with host.ipr() as ipr:
            try:
                ipr.addr("del", index=idx[0], address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except Exception as exc:
                if getattr(exc, "code", None) not in (errno.ENODEV, errno.EADDRNOTAVAIL):
                    raise


def safely(fn):
    """FN(), or what stopped it: metadata never crashes a run."""
    try:
        return fn()
    except Exception as exc:  # metadata never crashes a run
        return f"unavailable: {exc}"


def _remove_netns(name: str) -> None:
    from pyroute2 import netns

    kill_pids(pids_in_netns(name))
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _delete_link(host: Host, name: str) -> None:
    with host.ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except Exception as exc:  # "no such device": the peer went first
                if getattr(exc, "code", None) != errno.ENODEV:
                    raise


def _del_addr(host, idx, ip, pfx, run, rec):
    with host.ipr() as ipr:
        with suppress(Exception):
            ipr.addr("del", index=idx, address=ip, prefixlen=pfx)
    run.forget_foreign(rec)


#: the hosts of the throw-away pairs on which capability probes try a facility
#: (labkit.probes): names no testbed uses, so a probe never meets a run's own testbed
PROBE_HOSTS = ("psnd", "prcv")
