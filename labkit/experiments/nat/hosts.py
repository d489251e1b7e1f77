"""The NAT experiment across machines: the client on the inventory's sender, the NAT on
its DUT, the server on its receiver.

The DUT names two data-plane interfaces, `labkit_interfaces: [IN, OUT]` (IN faces the
client, OUT the server); the client and the server one each. Every address comes from
the hosts' interfaces as configured there: the inside network is IN's, the outside
network OUT's, and OUT's address is the SNAT address. The client must share IN's
network and the server OUT's; the DUT must forward IPv4. All of it is checked before
anything is changed on any host.

What labkit changes, each held open on its host for as long as the local `with` lasts
(`RemoteHost.hold`), so it is undone on any exit and recorded in that host's session for
`labkit clean --inventory`:
- on the client, a route to the server's address through IN (unless it routes so already);
- on the DUT, each variant on IN and OUT (`testbed.on_nat_host`, as the one-machine lab);
- on the server, two iptables rules in the raw table counting UDP to the flood's port,
  each read by its own comment: from the expected source (the SNAT address; the
  client's own for `routing` and `xdp_routing`, which also get the server's route back
  through OUT) counted and dropped, and from any source counted. Translated packets are
  those of the first (`processed_pkts`); the second's count less the first's is what
  came from any other source (`server_other_source`: untranslated or wrongly rewritten);
- for the XDP variants, where the client's or the server's port is a veth, an XDP_PASS
  program there (a frame redirected into a veth is delivered only when its peer has one)
  and full checksums (tx checksum offload off) while they run.

Per NAT variant the checks are a ping and a UDP exchange (the server echoes; every
datagram must arrive from the SNAT address and come back); the trials are small-packet
UDP from the client's generator (trafgen where `auto`), counted at the server. CPU is
not measured across hosts (blank, with a caveat); TCP, new flows, the sweep and the
programs' own time run on one machine only.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import asdict

from labkit.errors import InputError

ROLES = ("sender", "dut", "receiver")  # client, NAT, server
ROUTING = ("routing", "xdp_routing")  # no translation: the server routes the client back
FLOOD_PORT = 9
ECHO_PORT, ECHO_SPORT, ECHO_COUNT = 7777, 40000, 5


def run(p, data_dir=None):
    """The checks and the UDP trials of P (nat.Params, with inventory) across its hosts."""
    import pandas as pd

    from labkit import measure, results, traffic
    from labkit.experiments import Result, across_hosts, saved_metadata, trial_loop
    from labkit.experiments import nat as experiment
    from labkit.testbed import remote_agent, runs

    generator = "trafgen" if p.generator == "auto" else p.generator  # xdpgen needs its veth peer here
    xdp = any(v.startswith("xdp") for v in p.variants)
    tools = {"sender": across_hosts.GENERATOR_TOOLS.get(generator, []) + ["ping"] + (["python:bcc"] if xdp else []),
             "dut": ["python:bcc", "iptables"], "receiver": ["iptables"] + (["python:bcc"] if xdp else [])}
    with across_hosts.Testbed(p.inventory, ROLES, tools, two_interfaces=("dut",)) as bed:
        lab = HostsLab(bed)
        rs = results.ResultSet(experiment.EXPERIMENT, asdict(p), runs.Run().prefix, data_dir)
        checks: list[dict] = []
        spec = traffic.TrafficSpec(lab.client.mac, lab.inside["mac"], lab.client.address, lab.server.address,
                                   size=p.udp_size, count=p.udp_count, flows=p.udp_flows, sport=1024,
                                   dport=FLOOD_PORT, timeout_s=p.timeout_s).validate()
        dut, (in_if, out_if) = lab.dut, lab.dut_ifs
        with lab.client_route(), across_hosts.RemoteGenerator(lab.client, generator) as gen:
            def measure_one(variant, size, trial):
                with lab.variant(variant, p) as counter:
                    lab.warm_up()
                    if p.checks and variant in experiment.NAT_VARIANTS and not any(c["variant"] == variant
                                                                                   for c in checks):
                        checks.extend(lab.checks(variant))
                    before = counter("counts")
                    m = measure.run_trial(
                        lambda: gen.send(spec), lambda: counter("counts")["expected"], size=size,
                        probes={"client": lab.client.counters, "srv": lab.server.counters,
                                "nat_in": lambda: dut.call(remote_agent.link_counters, in_if),
                                "nat_out": lambda: dut.call(remote_agent.link_counters, out_if)},
                        offered_probe=("client", "tx_packets"))
                    after = counter("counts")
                other = (after["all"] - before["all"]) - (after["expected"] - before["expected"])
                rs.add(variant, trial, size, {"server_other_source": (other, "packets")}, kind="udp",
                       offloads="as on the hosts", flows=p.udp_flows, generator=gen.name)
                return m

            trial_loop(p.variants, p.trials, measure_one,
                       lambda v, size, t, m: rs.add_measurement(v, t, m, kind="udp", offloads="as on the hosts",
                                                                flows=p.udp_flows, generator=gen.name),
                       sizes=[p.udp_size], label=experiment.EXPERIMENT, show=p.progress)
        across_hosts.blank_local_cpu(rs.rows)
        for c in checks:
            rs.add(c["variant"], 0, None, {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}, kind="check",
                   offloads=c["offloads"])
        rs.caveat(f"across hosts (client {lab.client.host.name} -> NAT {dut.name} -> server {lab.server.host.name}): "
                  "small-packet UDP rates and the checks (ping, a UDP exchange) only; CPU is not measured across "
                  "hosts (blank), the TCP, new-flow, sweep and program-time trials ran on one machine only, and "
                  "`offloads` was not applied (the hosts' own settings)")
        if p.generator == "auto":
            rs.caveat(f"generator auto across hosts: {generator} (the in-kernel generator needs its veth peer, "
                      "which is on another host)")
        skipped = {**{part: "across hosts: it runs on one machine only" for part in experiment.PARTS
                      if part != "correctness checks"}, **experiment.switched_off(p)}
        run_dir = rs.save(bed, {"generator": gen.name, "checks": checks, "nat": lab.addresses(p),
                                "skipped_parts": skipped})
    table = rs.table
    checks_df = pd.DataFrame(checks, columns=["variant", "check", "ok", "detail", "offloads"])
    text = (experiment.interpret(table, checks_df, cpu=False, meta=saved_metadata(run_dir))  # CPU blank: left out
            + "\nCPU per packet: not measured across hosts (see the caveats).")
    return Result(experiment.EXPERIMENT, table, text, rs.caveats, run_dir, p,
                  experiment.parts(table, checks_df, pd.DataFrame(), skipped), headline_of=experiment.headline)


class HostsLab:
    """The three hosts of a connected Testbed, their addresses read and checked (nothing
    is changed until a `with` of `client_route` or `variant`)."""

    def __init__(self, bed):
        from labkit.experiments import across_hosts

        self.bed = bed
        self.client, self.server = across_hosts.end(bed, "sender"), across_hosts.end(bed, "receiver")
        self.dut, self.dut_ifs = bed.host("dut"), list(bed.interfaces("dut"))
        self.inside, self.outside = (self.dut.call(across_hosts.describe, i) for i in self.dut_ifs)
        where = {"client": (self.client.host, self.client.ifname, self.client.address),
                 "server": (self.server.host, self.server.ifname, self.server.address),
                 "NAT inside": (self.dut, self.dut_ifs[0], self.inside["address"]),
                 "NAT outside": (self.dut, self.dut_ifs[1], self.outside["address"])}
        for role, (host, ifname, address) in where.items():
            if not address:
                raise InputError(f"{bed.inventory.path}: interface {ifname} of host {host.name} ({role}) has no IPv4 "
                                 "address: configure one there (the NAT's networks are read from the interfaces)")
        self.inside_net = _network(self.inside)
        self.outside_net = _network(self.outside)
        for who, address, net, side in ((self.client, self.client.address, self.inside_net, "inside"),
                                        (self.server, self.server.address, self.outside_net, "outside")):
            if ipaddress.ip_address(address) not in net:
                raise InputError(f"{bed.inventory.path}: {who.host.name}'s address {address} ({who.ifname}) is not "
                                 f"on the NAT's {side} network {net} ({self.dut.name}): address them on one network")
        if self.inside_net.overlaps(self.outside_net):
            raise InputError(f"{bed.inventory.path}: the NAT's inside network {self.inside_net} and outside network "
                             f"{self.outside_net} overlap on {self.dut.name}: a NAT needs them apart")
        if self.dut.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() != "1":
            raise InputError(f"host {self.dut.name} (role dut) does not forward IPv4 (net.ipv4.ip_forward = 0): a "
                             "NAT host routes; set it there (sysctl -w net.ipv4.ip_forward=1, and in /etc/sysctl.d "
                             "to keep it)")

    def addresses(self, p) -> dict:
        return {"inside": str(self.inside_net), "outside": str(self.outside_net), "client": self.client.address,
                "server": self.server.address, "snat_address": self.outside["address"], "port_range": p.port_range}

    def client_route(self):
        return self.client.host.hold(f"{__name__}:route", self.client.ifname, self.server.address,
                                     self.inside["address"])

    @contextmanager
    def variant(self, name: str, p):
        """NAME set up across the hosts; yields the server's counter (a Held: "counts")."""
        with ExitStack() as stack:
            if name.startswith("xdp"):
                for end in (self.client, self.server):
                    stack.enter_context(end.host.hold(f"{__name__}:xdp_end", end.ifname))
            if name in ROUTING:
                stack.enter_context(self.server.host.hold(f"{__name__}:route", self.server.ifname,
                                                          self.client.address, self.outside["address"]))
            stack.enter_context(self.dut.hold(f"{__name__}:dut_variant", *self.dut_ifs, name, list(p.port_range),
                                              p.iptables_target))
            source = self.client.address if name in ROUTING else self.outside["address"]
            yield stack.enter_context(self.server.host.hold(f"{__name__}:server_counter", self.server.ifname,
                                                            source, FLOOD_PORT))

    def warm_up(self) -> None:
        """Resolve neighbours along the path before anything is measured."""
        self.client.host.run(["ping", "-c", "1", "-W", "2", self.server.address], check=False, timeout=10)

    def checks(self, variant: str) -> list[dict]:
        """Ping and a UDP exchange through VARIANT: replies back, sources the SNAT address."""
        snat = self.outside["address"]
        out = []

        def add(check, ok, detail):
            out.append({"variant": variant, "check": check, "ok": bool(ok), "detail": detail,
                        "offloads": "as on the hosts"})

        cp = self.client.host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", self.server.address], check=False,
                                  timeout=20)
        add("ping", cp.returncode == 0, (cp.stdout.strip().splitlines() or ["no output"])[-1])
        with self.server.host.hold(f"{__name__}:udp_echo", ECHO_PORT) as echo:
            back = self.client.host.call(udp_exchange, self.server.address, ECHO_PORT, ECHO_SPORT, ECHO_COUNT)
            seen = echo("seen")
        sources = sorted({s[0] for s in seen})
        add("udp_exchange", back == ECHO_COUNT and sources == [snat],
            f"{back}/{ECHO_COUNT} echoed back; the server saw source {', '.join(sources) or 'nothing'} "
            f"(SNAT address {snat})")
        return out


def _network(described: dict):
    return ipaddress.ip_interface(f"{described['address']}/{described['prefixlen']}").network


# ---------------------------------------------------------------- on the far hosts
@contextmanager
def dut_variant(inside_if: str, outside_if: str, variant: str, port_range: list, iptables_target: str):
    """On the DUT: VARIANT on INSIDE_IF and OUTSIDE_IF, the networks and the SNAT address
    read from them (the tc NAT compiled by this host's bcc). Undone on exit."""
    from labkit.dataplanes.nat import Nat
    from labkit.experiments.across_hosts import local_interface
    from labkit.experiments.nat.testbed import on_nat_host
    from labkit.testbed.hosts import ROOT_HOST

    inside, outside = local_interface(inside_if), local_interface(outside_if)
    inside_net = str(ipaddress.ip_interface(f"{inside.address}/{inside.prefixlen}").network)
    outside_net = str(ipaddress.ip_interface(f"{outside.address}/{outside.prefixlen}").network)
    with ExitStack() as stack:
        nat = None
        if variant in ("tc_nat", "xdp_nat"):
            nat = stack.enter_context(Nat(inside_net, outside_net, outside.address, tuple(port_range)))
        stack.enter_context(on_nat_host(variant, ROOT_HOST, [inside], outside, nat, iptables_target, inside_net,
                                        outside.address))
        yield variant


@contextmanager
def route(ifname: str, dst: str, gateway: str):
    """On a client or a server: DST/32 through GATEWAY on IFNAME while in the `with`,
    unless the host routes it so already; recorded in the session for `labkit clean`."""
    from labkit.testbed import runs
    from labkit.testbed.hosts import ROOT_HOST

    with ROOT_HOST.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        try:
            got = ipr.route("get", dst=dst)[0]
            present = got.get_attr("RTA_GATEWAY") == gateway and got.get_attr("RTA_OIF") == idx
        except Exception:  # no route at all
            present = False
    if present:
        yield "present"
        return
    def add():
        with ROOT_HOST.ipr() as ipr:
            ipr.route("add", dst=dst, dst_len=32, gateway=gateway, oif=idx)

    def delete():
        with ROOT_HOST.ipr() as ipr:
            try:
                ipr.route("del", dst=dst, dst_len=32, gateway=gateway, oif=idx)
            except Exception as exc:  # the link, and with it the route, may be gone
                if getattr(exc, "code", None) not in (3, 19):
                    raise

    rec = {"kind": "route", "ifname": ifname, "dst": dst, "dst_len": 32, "gateway": gateway}
    with runs.foreign_change(rec, add, delete):
        yield "added"


@contextmanager
def xdp_end(ifname: str):
    """On the client or the server for the XDP variants: where IFNAME is a veth, an
    XDP_PASS program on it and its tx checksum offload off (XDP updates full checksums),
    both recorded in the session for `labkit clean`."""
    from labkit import bpf
    from labkit.dataplanes.minimal import Minimal
    from labkit.experiments.across_hosts import local_interface
    from labkit.testbed import runs
    from labkit.testbed.hosts import ROOT_HOST

    if "driver: veth" not in ROOT_HOST.run(["ethtool", "-i", ifname], check=False, timeout=10).stdout:
        yield "not a veth"
        return
    offload = "tx-checksumming: on" in ROOT_HOST.run(["ethtool", "-k", ifname], timeout=10).stdout
    with ExitStack() as stack:
        m = stack.enter_context(Minimal())
        stack.enter_context(bpf.attach_xdp(local_interface(ifname), m.pass_(), "native"))
        if offload:  # `labkit clean` turns it back on
            stack.enter_context(runs.foreign_change(
                {"kind": "offload", "ifname": ifname, "feature": "tx"},
                lambda: ROOT_HOST.run(["ethtool", "-K", ifname, "tx", "off"], timeout=10),
                lambda: ROOT_HOST.run(["ethtool", "-K", ifname, "tx", "on"], check=False, timeout=10)))
        yield "veth"


class _Counts:
    def __init__(self, expected, every):
        self.expected, self.every = expected, every

    def counts(self) -> dict:
        return {"expected": self.expected.counters()["packets"], "all": self.every.counters()["packets"]}


@contextmanager
def server_counter(ifname: str, source: str, dport: int):
    """On the server: UDP to DPORT arriving on IFNAME, from SOURCE counted and dropped in
    iptables' raw table (so the stack never answers a flood), from anywhere counted."""
    from labkit.testbed import netfilter
    from labkit.testbed.hosts import ROOT_HOST

    match = ["-i", ifname, "-p", "udp", "--dport", str(dport)]
    with netfilter.rule(ROOT_HOST, "raw", "PREROUTING", *match, "-s", source, "-j", "DROP") as expected, \
            netfilter.rule(ROOT_HOST, "raw", "PREROUTING", *match) as every:  # first: counts, then goes on
        yield _Counts(expected, every)


class _Echo:
    def __init__(self):
        self.sources: list = []

    def seen(self) -> list:
        return list(self.sources)


@contextmanager
def udp_echo(port: int):
    """On the server: a UDP echo on PORT while in the `with`; `seen()` lists the
    (address, port) of every datagram it received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    echo, stop = _Echo(), threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except (socket.timeout, OSError):
                continue
            echo.sources.append(list(peer))
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, name="labkit-udp-echo", daemon=True)
    thread.start()
    try:
        yield echo
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def udp_exchange(server: str, port: int, sport: int, count: int, timeout: float = 2.0) -> int:
    """On the client: COUNT datagrams from SPORT to SERVER:PORT, one at a time; how many
    came back echoed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", sport))
    sock.settimeout(timeout)
    back = 0
    try:
        for i in range(count):
            payload = f"labkit nat check {i}".encode()
            sock.sendto(payload, (server, port))
            try:
                data, _ = sock.recvfrom(2048)
            except socket.timeout:
                continue
            back += data == payload
    finally:
        sock.close()
    return back
