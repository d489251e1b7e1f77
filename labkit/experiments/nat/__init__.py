"""The eBPF NAT experiment: is the NAT correct with real traffic, and what does it cost
next to netfilter's NAT, at tc and with its XDP fast path?

Testbed (`NatLab`): inside hosts c1..cN, each on its own /24 of the inside network
10.20.0.0/16, routed by host `nat` (one inside port per client, one outside port) to
host `srv` on the outside network 198.51.100.0/24. The NAT host's outside address
198.51.100.1 is the SNAT address.

1. Correctness, through every NAT variant (`check_correctness`): ping, a UDP exchange in
   which every inside host uses the same source port, TCP transfers (one with a hash of
   the data, 500 at once from the same source ports on two clients), ICMP errors back to
   the right inside host (port unreachable, time exceeded from beyond the NAT) and from
   it, a datagram beyond the MTU both ways, IPv4 options; for the eBPF NATs also a static
   1:1 mapping both ways, hairpinning refused, the flow table. A capture in the server's
   namespace shows only translated addresses, every captured checksum verifies (when the
   NAT's ports compute checksums in software, see `offloads`), the kernels' checksum
   error counters stay 0.
2. Performance, side by side in one run, several trials, rotating order, each variant on a
   freshly built testbed (netfilter's NAT leaves connection tracking hooked into a
   namespace once used, which would tax whatever ran after it):
   - ``routing``: no NAT, plain forwarding (the server routes the inside network back);
   - ``xdp_routing``: forwarding at XDP (bpf_fib_lookup + redirect), no NAT: the fast
     path's own baseline;
   - ``tc_nat``: the eBPF NAT at tc clsact on the outside port (``ebpf`` in runs before
     the XDP fast path existed: read as ``tc_nat``);
   - ``xdp_nat``: the XDP fast path on the inside and outside ports in front of the tc NAT
     (established flows and static mappings at XDP; new flows and anything unusual go up);
   - ``iptables``: netfilter NAT (MASQUERADE, or SNAT --to-source) in nat/POSTROUTING.
   Small-packet UDP (the generator on c1, many flows; the server drops it at XDP, see
   `server_sink`) gives packets per second and CPU time per packet; TCP (iperf3 c1 -> srv) throughput and CPU time per kilobyte; the
   new-flow trial (every packet from a source port of its own) how fast each NAT sets
   flows up (netfilter pays a conntrack entry per flow).
   The eBPF programs' own time per packet is read from the kernel's BPF run-time
   statistics (BPF_ENABLE_STATS) in a separate trial, so it does not tax the others.
3. Beyond the goal point (`sweep`, `tcp`): UDP at each of ``udp_sizes`` and each of
   ``flow_counts`` distinct source ports (kind ``udp_sweep``), and TCP with
   ``tcp_streams`` concurrent connections (kind ``tcp_streams``), per variant.

`offloads` is recorded with every row:
- ``mixed`` (default): veth checksum offload on at the clients and the server, off on the
  NAT's ports. Senders hand the NAT packets with partial checksums (CHECKSUM_PARTIAL), the
  NAT rewrites them, and the NAT's ports then compute the final checksums in software,
  which the receivers verify: a NAT that mishandled partial checksums is caught here.
- ``off``: every veth computes full checksums; the NAT updates complete checksums.
- ``on``: veth defaults; partial checksums end to end, which no receiver verifies.
The XDP variants turn the senders' checksum offload off while they run (XDP sees frames,
not skbs, and updates checksums as full ones; a NIC never hands XDP a partial checksum).
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field

from labkit import results, traffic
from labkit import parameters
from labkit.testbed.hosts import which  # (not `hosts`: that name is the submodule nat.hosts)
from labkit.testbed import inventory, runs
from labkit.dataplanes import softirq_clock
from labkit import measure
from labkit.experiments import Result, View, check_run_shape, smoke_clamp, trial_loop
from labkit.errors import InputError
from labkit.dataplanes.nat import Nat, check_port_range
from labkit.experiments.nat import newflows, progtime, sweep, tcp
from labkit.experiments.nat.checks import check_correctness
from labkit.experiments.nat.testbed import VARIANTS, spec, INSIDE_NET, NAT_OUTSIDE, NatLab, OUTSIDE_NET, SERVER, client_addr

#: variants that translate (the correctness checks run through each)
NAT_VARIANTS = ("tc_nat", "xdp_nat", "iptables")
HOST_ROLES = ("sender", "dut", "receiver")  # what an inventory must name: client, NAT, server
#: names of earlier runs: read as today's
ALIASES = {"ebpf": "tc_nat"}
#: the eBPF programs whose own time the run reads, per variant: (program, kind) by role
PROGRAMS = {"tc_nat": {"nat_egress": ("nat_egress", "tc"), "nat_ingress": ("nat_ingress", "tc")},
            "xdp_nat": {"xdp_nat_outbound": ("xdp_nat_outbound", "xdp"), "xdp_nat_inbound": ("xdp_nat_inbound", "xdp")}}

EXPERIMENT = "nat"
NOTEBOOK = "03-ebpf-nat"  # the notebook that runs this experiment
#: how the comparison and the index show this experiment: small-packet UDP
VIEW = View(EXPERIMENT, "NAT (small-packet UDP)", NOTEBOOK, select=(("kind", ("udp",)),))
#: a smoke run: one trial, few packets, one second of TCP (see smoke_clamp)
SMOKE = {"trials": 1, "udp_count": 30_000, "tcp_seconds": 1.0, "new_flows": 2000, "udp_sizes": 2, "flow_counts": 2,
         "sweep_count": 20_000, "sweep_trials": 1, "tcp_streams": 4}


# ---------------------------------------------------------------- captures


# ---------------------------------------------------------------- correctness


# ---------------------------------------------------------------- performance
@dataclass
class Params:
    clients: int = 2
    trials: int = 3
    variants: list = field(default_factory=lambda: list(VARIANTS))
    offloads: str = "mixed"
    udp_size: int = 64
    udp_count: int = 500_000
    udp_flows: int = 16
    new_flows: int = 8000  # new-flow trial: packets, each a flow of its own (0: none)
    server_sink: bool = True  # the server drops the floods at XDP: their CPU time is the NAT host's
    generator: str = "auto"  # the in-kernel generator where it works, else trafgen
    udp_sizes: list = field(default_factory=lambda: list(sweep.UDP_SIZES))  # sweep: frame sizes at udp_flows
    flow_counts: list = field(default_factory=lambda: list(sweep.FLOW_COUNTS))  # sweep: source ports at udp_size
    sweep_count: int = 131_072  # sweep: packets per point (65536 flows: two packets each)
    sweep_trials: int = 2  # sweep: trials per point (min..max spread)
    tcp_seconds: float = 3.0
    tcp_streams: int = 32  # TCP with this many concurrent connections beside the one stream (0: none)
    iptables_target: str = "MASQUERADE"
    port_range: list = field(default_factory=lambda: [20000, 29999])
    checks: bool = True
    prog_stats: bool = True
    timeout_s: float = 60.0
    progress: bool = True  # a text progress bar on stderr
    smoke: bool = False
    inventory: str | None = None  # an Ansible YAML inventory: client (sender), NAT (dut), server (receiver)

    def validate(self) -> "Params":
        # the values as given are checked first (types, then ranges); smoke shortens after
        parameters.check_fields(self)
        parameters.check_choice("generator", self.generator, traffic.backends_status(), extra=["auto"])
        spec(self.clients, self.offloads)
        if isinstance(self.variants, list):  # names of earlier runs
            self.variants = [ALIASES.get(v, v) for v in self.variants]
        check_run_shape(self.variants, VARIANTS, self.trials, [self.udp_size], self.udp_count, "udp_count")
        if not isinstance(self.udp_flows, int) or not 1 <= self.udp_flows <= 200:
            raise InputError(f"udp_flows {self.udp_flows!r}: 1..200 (trafgen varies one byte of the port)")
        if not self.tcp_seconds or self.tcp_seconds < 0.5 or self.tcp_seconds > 60:
            raise InputError(f"tcp_seconds {self.tcp_seconds!r}: 0.5..60")
        if self.iptables_target not in ("MASQUERADE", "SNAT"):
            raise InputError(f"iptables_target {self.iptables_target!r}: MASQUERADE or SNAT")
        self.port_range = list(check_port_range(tuple(self.port_range)))
        newflows.check(self.new_flows, self.generator)
        sweep.check(self.udp_sizes, self.flow_counts, self.sweep_count, self.sweep_trials, self.generator)
        tcp.check_streams(self.tcp_streams)
        room = int(0.8 * (self.port_range[1] - self.port_range[0] + 1))
        if self.new_flows > room:
            raise InputError(f"new_flows {self.new_flows}: all go to one server port, so each takes a port of "
                             f"the SNAT range {self.port_range[0]}-{self.port_range[1]}; keep it at most {room} "
                             "(80% of the range), or widen port_range")
        if self.inventory is not None:
            inventory.parse(self.inventory).require(HOST_ROLES)
        if self.smoke:
            smoke_clamp(self, SMOKE)
        sweep.check_count(self.sweep_count, self.flow_counts)
        return self


def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'udp' and 'tcp' (the side-by-side trials), 'udp_sweep' and 'tcp_streams' (see `sweep`), 'prog' (the programs' own time), 'check'
    (rows of the checks), 'checks' (correctness checks: check, ok, detail, offloads),
    'flows' (the flow table at the end of the checks)."""
    import pandas as pd

    p = Params(**kwargs).validate()
    if p.inventory is not None:
        from labkit.experiments.nat import hosts as across
        return across.run(p, data_dir)
    runs.require_root("the eBPF NAT experiment")
    for tool, pkg in (("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3")):
        which(tool, pkg)
    checks, flows = [], pd.DataFrame()
    with ExitStack() as stack:
        nat = stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(p.port_range)))
        rs = None
        topo_meta = None
        for v in [v for v in p.variants if v in NAT_VARIANTS] if p.checks else []:
            with NatLab(p.clients, p.offloads) as lab:
                if rs is None:
                    rs = results.ResultSet(EXPERIMENT, asdict(p), lab.topo.run.prefix, data_dir)
                    topo_meta = lab.topo.metadata()  # while the testbed exists
                checks += check_correctness(lab, None if v == "iptables" else nat, v, p.iptables_target)
                if v == "tc_nat" or (v == "xdp_nat" and flows.empty):
                    flows = nat.flows_table()
        clock = stack.enter_context(softirq_clock.SoftirqClock())

        def measure_one(variant, size, trial):
            nonlocal rs, topo_meta
            with NatLab(p.clients, p.offloads) as lab:
                if rs is None:
                    rs = results.ResultSet(EXPERIMENT, asdict(p), lab.topo.run.prefix, data_dir)
                    topo_meta = lab.topo.metadata()
                with lab.variant(variant, nat, p.iptables_target):
                    _warm_up(lab)
                    m = _udp_trial(lab, p, clock)
                    for n in (1, p.tcp_streams) if p.tcp_streams else (1,):
                        tcp.tcp_trial(lab, variant, trial, rs, clock, seconds=p.tcp_seconds, offloads=p.offloads,
                                      streams=n)
                    if p.new_flows:
                        with lab.server_sink() if p.server_sink else nullcontext():
                            nf = newflows.new_flow_trial(lab, p.generator, p.new_flows, clock, p.timeout_s)
                        rs.add_measurement(variant, trial, nf, kind="newflow", offloads=p.offloads, flows=p.new_flows)
            return m

        def record(variant, size, trial, m):
            rs.add_measurement(variant, trial, m, kind="udp", offloads=p.offloads, flows=p.udp_flows)

        trial_loop(p.variants, p.trials, measure_one, record, sizes=[p.udp_size], label=EXPERIMENT, show=p.progress)
        sweep.run(p, nat, clock, rs, _warm_up)
        for v in [v for v in p.variants if v in PROGRAMS] if p.prog_stats else []:
            with NatLab(p.clients, p.offloads) as lab, lab.variant(v, nat):
                _warm_up(lab)
                progtime.measure(lab, nat, PROGRAMS[v], p, v, rs)
        for c in checks:
            rs.add(c["variant"], 0, None, {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}, kind="check",
                   offloads=p.offloads)
        _caveats(rs, p)
        run_dir = rs.save(None, {"topology": topo_meta, "checks": checks, "nat": {"inside": INSIDE_NET, "outside": OUTSIDE_NET,
                                                                "snat_address": NAT_OUTSIDE, "port_range": p.port_range}})
    table = rs.table
    checks_df = pd.DataFrame(checks, columns=["variant", "check", "ok", "detail", "offloads"])
    return Result(EXPERIMENT, table, interpret(table, checks_df), rs.caveats, run_dir, p,
                  {"checks": checks_df, "flows": flows}, headline_of=headline)


def _warm_up(lab: NatLab) -> None:
    """Resolve neighbours along the path before anything is measured."""
    for i in range(1, lab.clients + 1):
        lab.client(i).run(["ping", "-c", "1", "-W", "2", SERVER], check=False, timeout=10)


def _udp_trial(lab: NatLab, p: Params, clock) -> measure.Measurement:
    src, nat_in, out, srv = lab.client_iface(1), lab.inside(1), lab.outside, lab.server_iface
    spec_ = traffic.TrafficSpec(src.mac, nat_in.mac, client_addr(1), SERVER, size=p.udp_size, count=p.udp_count,
                                flows=p.udp_flows, sport=1024, dport=9, timeout_s=p.timeout_s).validate()
    with traffic.generator(p.generator, src) as gen, (lab.server_sink() if p.server_sink else nullcontext()):
        out_probe = measure.link_probe(out, ethtool=False)
        m = measure.run_trial(lambda: gen.send(spec_), lambda: out_probe()["tx_packets"], size=p.udp_size,
                              probes={"client": measure.link_probe(src), "nat_in": measure.link_probe(nat_in),
                                      "nat_out": measure.link_probe(out), "srv": measure.link_probe(srv)},
                              offered_probe=("client", "tx_packets"), clock=clock)
    return m


def _caveats(rs: results.ResultSet, p: Params) -> None:
    rs.caveat("namespace testbed: clients, NAT and server share this machine's CPUs; CPU time is the whole "
              "machine's (the NAT's share is the difference between variants), so compare variants as ratios "
              "within this run, not as absolute numbers")
    rs.caveat("each variant ran on a freshly built testbed, so netfilter's connection tracking (hooked into a "
              "namespace once its NAT table is used) did not tax the variants after it")
    if {"xdp_nat", "xdp_routing"} & set(p.variants):
        rs.caveat("the XDP variants turned the senders' checksum offload off while they ran (XDP updates "
                  "checksums as full ones); on a veth testbed XDP frames are built from skbs by the sender, so "
                  "native XDP here is no NIC's XDP: compare the variants with each other, not with NIC numbers")
    if p.server_sink:
        rs.caveat("the server dropped the UDP floods at XDP (native, every variant alike): their CPU time per packet "
                  "is the generator's and the NAT host's; with server_sink=False it includes the server's stack "
                  "(a closed port, answered with ICMP), as in runs before this option")
    if p.new_flows:
        rs.caveat(f"new-flow trial: {p.new_flows} packets from c1, each from a source port of its own, one "
                  "sending CPU: packets forwarded per second is the rate at which flows were set up")
    if p.offloads == "on":
        rs.caveat("offloads=on: packets carry partial checksums end to end and no receiver verifies them; "
                  "use offloads='mixed' or 'off' to check checksums")


def canonical(table):
    """TABLE with the variant names of earlier runs read as today's (``ebpf`` -> ``tc_nat``)."""
    if table is None or "variant" not in getattr(table, "columns", ()):
        return table
    return table.assign(variant=table["variant"].replace(ALIASES))


def headline(table):
    import pandas as pd

    table = canonical(table)
    rows = []
    perf = table[table["kind"].isin(["udp", "tcp", "newflow"])] if "kind" in table.columns else table
    for variant, g in perf.groupby("variant", sort=False):
        udp = g[g["kind"] == "udp"] if "kind" in g.columns else g
        new = g[g["kind"] == "newflow"] if "kind" in g.columns else g.iloc[0:0]

        def stat(measure_, f="mean", t=g):
            v = t[t["measure"] == measure_]["value"]
            return getattr(v, f)() if len(v) else float("nan")
        rows.append({
            "variant": variant,
            "UDP Mpps": stat("processed_pps", t=udp) / 1e6,
            "UDP min..max": f"{stat('processed_pps', 'min', udp) / 1e6:.3f}..{stat('processed_pps', 'max', udp) / 1e6:.3f}",
            "offered Mpps": stat("offered_pps", t=udp) / 1e6,
            "UDP NET_RX ns/pkt": stat("cpu_ns_per_pkt", t=udp),
            "UDP CPU ns/pkt (all)": stat("system_cpu_ns_per_pkt", t=udp),
            "new flows k/s": stat("processed_pps", t=new) / 1e3,
            "new flow NET_RX ns": stat("cpu_ns_per_pkt", t=new),
            "TCP Mbit/s": stat("tcp_mbps"),
            "TCP min..max": f"{stat('tcp_mbps', 'min'):.0f}..{stat('tcp_mbps', 'max'):.0f}",
            "TCP NET_RX ns/kB": stat("tcp_net_rx_ns_per_kb"),
            "TCP CPU ns/kB (all)": stat("tcp_cpu_ns_per_kb"),
            "trials": int((udp["measure"] == "processed_pps").sum()),
        })
    out = pd.DataFrame(rows)
    return out.round({"UDP Mpps": 3, "offered Mpps": 3, "UDP NET_RX ns/pkt": 0, "UDP CPU ns/pkt (all)": 0,
                      "new flows k/s": 1, "new flow NET_RX ns": 0, "TCP Mbit/s": 0, "TCP NET_RX ns/kB": 0,
                      "TCP CPU ns/kB (all)": 0})


def _ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def _spread(s) -> str:
    return f"{s['mean'] / 1e6:.3f} Mpps ({s['min'] / 1e6:.3f}–{s['max'] / 1e6:.3f})"


def interpret(table, checks, cpu: bool = True) -> str:
    """Sentences computed from the data: correctness per variant, then the fast path and
    the tc NAT against iptables and against their routing baselines, new flows, TCP, the
    programs' own time, and the issue's goals met or not. CPU=False (across hosts, where
    CPU is not measured) leaves out every clause about CPU and keeps the rest."""
    table = canonical(table)
    lines = []
    if checks is not None and len(checks):
        checks = canonical(checks) if "variant" in checks.columns else checks
        by = checks.groupby("variant", sort=False) if "variant" in checks.columns else [("eBPF NAT", checks)]
        for v, c in by:
            failed = c[~c["ok"]]
            lines.append(f"Correctness through {v}: {int(c['ok'].sum())} of {len(c)} checks passed with real traffic "
                         f"(offloads={c['offloads'].iloc[0]})" + ("." if failed.empty else
                         "; FAILED: " + "; ".join(failed["check"]) + "."))
    kind = table["kind"] if "kind" in table.columns else None

    def means(measure_, k="udp"):
        t = table[(table["measure"] == measure_) & ((kind == k) if kind is not None else True)]
        return t.groupby("variant")["value"].agg(["mean", "min", "max"])

    pps, tcp = means("processed_pps"), means("tcp_mbps", "tcp")
    cpu = means("cpu_ns_per_pkt") if cpu else pps.iloc[:0]  # no CPU: no variant has any
    have = set(pps.index)
    label = {"tc_nat": "eBPF NAT", "xdp_nat": "eBPF NAT with its XDP fast path"}
    for nat_, base in (("tc_nat", "routing"), ("xdp_nat", "xdp_routing")):
        if {nat_, "iptables"} <= have:
            e, i = pps.loc[nat_], pps.loc["iptables"]
            lines.append(f"Small-packet UDP ({nat_}): {label[nat_]} {_spread(e)} vs iptables NAT {_spread(i)}: "
                         f"{_ratio(e['mean'], i['mean']):.2f}× the rate.")
            if {nat_, "iptables"} <= set(cpu.index):
                ce, ci = cpu.loc[nat_, "mean"], cpu.loc["iptables", "mean"]
                lines.append(f"  NET_RX CPU per packet (all CPUs): {nat_} {ce:.0f} ns vs iptables {ci:.0f} ns "
                             f"({_ratio(ce, ci):.2f}×).")
        if {nat_, base} <= have:
            ns = (f"{cpu.loc[nat_, 'mean'] - cpu.loc[base, 'mean']:+.0f} ns of NET_RX per packet, "
                  if {nat_, base} <= set(cpu.index) else "")
            lines.append(f"  {nat_} against its baseline {base}: {ns}"
                         f"{_ratio(pps.loc[nat_, 'mean'], pps.loc[base, 'mean']):.0%} of its rate.")
    if {"tc_nat", "iptables", "routing"} <= have:
        r = pps.loc["routing", "mean"]
        lines.append(f"Against plain forwarding ({r / 1e6:.3f} Mpps): tc_nat keeps {_ratio(pps.loc['tc_nat', 'mean'], r):.0%}, "
                     f"iptables {_ratio(pps.loc['iptables', 'mean'], r):.0%} of the rate.")
    if {"tc_nat", "iptables", "routing"} <= set(cpu.index):
        r = cpu.loc["routing", "mean"]
        me, mi = cpu.loc["tc_nat", "mean"] - r, cpu.loc["iptables", "mean"] - r
        lines.append(f"Marginal cost over plain routing: tc_nat {me:+.0f} ns, iptables {mi:+.0f} ns per packet "
                     f"({_ratio(me, mi):.2f}× iptables'; the goal is at most 0.5×).")
    udp = table[kind == "udp"] if kind is not None else table
    offered = udp[udp["measure"] == "offered_pps"].groupby("variant")["value"].mean()
    limited = udp[(udp["measure"] == "processed_pps") & udp["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]
    if len(limited):
        lines.append("Generator-limited in some trials (" + ", ".join(
            f"{v}: {pps.loc[v, 'mean'] / 1e6:.3f} of {offered.get(v, float('nan')) / 1e6:.3f} Mpps offered"
            for v in sorted(set(limited["variant"])) if v in pps.index) + "): the variant forwarded (nearly) all "
            "that was offered, so those rates are lower bounds" + ("; CPU per packet is the better comparison."
                                                                  if len(cpu) else "."))
    new = means("processed_pps", "newflow")
    if "iptables" in new.index:
        lines.append("New flows per second (every packet a new flow): " + ", ".join(
            f"{v} {new.loc[v, 'mean'] / 1e3:.0f}k ({_ratio(new.loc[v, 'mean'], new.loc['iptables', 'mean']):.2f}× iptables)"
            for v in new.index if v != "iptables") + f"; iptables {new.loc['iptables', 'mean'] / 1e3:.0f}k.")
    if {"tc_nat", "iptables"} <= set(tcp.index):
        for v in [v for v in ("tc_nat", "xdp_nat") if v in tcp.index]:
            e, i = tcp.loc[v], tcp.loc["iptables"]
            lines.append(f"TCP (iperf3, one stream): {v} {e['mean']:.0f} Mbit/s ({e['min']:.0f}–{e['max']:.0f}) vs "
                         f"iptables {i['mean']:.0f} Mbit/s ({i['min']:.0f}–{i['max']:.0f}): "
                         f"{_ratio(e['mean'], i['mean']):.2f}×.")
    lines += progtime.sentences(table)
    if {"xdp_nat", "iptables"} <= have:
        rate = _ratio(pps.loc["xdp_nat", "mean"], pps.loc["iptables", "mean"])
        goals = f"Goals: xdp_nat at {rate:.2f}× iptables' rate (goal ≥ 4×: {'met' if rate >= 4 else 'not met'})"
        if {"xdp_nat", "iptables"} <= set(cpu.index):
            c = _ratio(cpu.loc["xdp_nat", "mean"], cpu.loc["iptables", "mean"])
            goals += f" and {c:.2f}× its CPU per packet (goal ≤ 0.25×: {'met' if c <= 0.25 else 'not met'})"
        lines.append(goals + ".")
    more = sweep.interpret(table)
    lines += [more] if more else []
    return "\n".join(lines) if lines else "Nothing was measured."


# ---------------------------------------------------------------- interactive use
