"""The eBPF NAT experiment: is the NAT correct with real traffic, and what does it cost
next to netfilter's NAT?

Testbed (`NatLab`): inside hosts c1..cN, each on its own /24 of the inside network
10.20.0.0/16, routed by host `nat` (one inside port per client, one outside port) to
host `srv` on the outside network 198.51.100.0/24. The NAT host's outside address
198.51.100.1 is the SNAT address.

1. Correctness, with the eBPF NAT attached (`check_correctness`): ping, a UDP exchange in
   which every inside host uses the same source port, a TCP transfer, a static 1:1
   mapping used in both directions; a capture in the server's namespace shows only
   translated addresses, every captured checksum verifies (when the NAT's ports compute
   checksums in software, see `offloads`), the kernels' checksum error counters stay 0,
   and the flow table holds every flow with counters in both directions.
2. Performance, side by side in one run, several trials, rotating order, each variant on a
   freshly built testbed (netfilter's NAT leaves connection tracking hooked into a
   namespace once used, which would tax whatever ran after it):
   - ``routing``: no NAT, plain forwarding (the server routes the inside network back);
   - ``ebpf``: the eBPF NAT at tc clsact on the outside port;
   - ``iptables``: netfilter NAT (MASQUERADE, or SNAT --to-source) in nat/POSTROUTING.
   Small-packet UDP (trafgen from c1, many flows) gives packets per second and CPU time per
   packet; TCP (iperf3 c1 -> srv) gives throughput and CPU time per kilobyte.
   The eBPF programs' own time per packet is read from the kernel's BPF run-time
   statistics (BPF_ENABLE_STATS) in a separate trial, so it does not tax the others.

`offloads` is recorded with every row:
- ``mixed`` (default): veth checksum offload on at the clients and the server, off on the
  NAT's ports. Senders hand the NAT packets with partial checksums (CHECKSUM_PARTIAL), the
  NAT rewrites them, and the NAT's ports then compute the final checksums in software,
  which the receivers verify: a NAT that mishandled partial checksums is caught here.
- ``off``: every veth computes full checksums; the NAT updates complete checksums.
- ``on``: veth defaults; partial checksums end to end, which no receiver verifies.
"""
from __future__ import annotations

import ctypes
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from labkit import bpf, results, traffic
from labkit import parameters
from labkit.testbed import hosts
from labkit.testbed import runs
from labkit.dataplanes import softirq_clock
from labkit import measure
from labkit.experiments import Result, View, check_run_shape, smoke_clamp, trial_loop
from labkit.errors import InputError, LabkitError
from labkit.dataplanes.nat import Nat, check_port_range
from labkit.experiments.nat.checks import check_correctness
from labkit.experiments.nat.testbed import VARIANTS, spec, INSIDE_NET, NAT_OUTSIDE, NatLab, OUTSIDE_NET, SERVER, client_addr

EXPERIMENT = "nat"
NOTEBOOK = "03-ebpf-nat"  # the notebook that runs this experiment
#: how the comparison and the index show this experiment: small-packet UDP
VIEW = View(EXPERIMENT, "NAT (small-packet UDP)", NOTEBOOK, select=(("kind", ("udp",)),))
#: a smoke run: one trial, few packets, one second of TCP (see smoke_clamp)
SMOKE = {"trials": 1, "udp_count": 30_000, "tcp_seconds": 1.0}


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
    generator: str = "auto"  # the in-kernel generator where it works, else trafgen
    tcp_seconds: float = 3.0
    iptables_target: str = "MASQUERADE"
    port_range: list = field(default_factory=lambda: [20000, 29999])
    checks: bool = True
    prog_stats: bool = True
    timeout_s: float = 60.0
    progress: bool = True  # a text progress bar on stderr
    smoke: bool = False

    def validate(self) -> "Params":
        # the values as given are checked first (types, then ranges); smoke shortens after
        parameters.check_fields(self)
        parameters.check_choice("generator", self.generator, traffic.backends_status(), extra=["auto"])
        spec(self.clients, self.offloads)
        check_run_shape(self.variants, VARIANTS, self.trials, [self.udp_size], self.udp_count, "udp_count")
        if not isinstance(self.udp_flows, int) or not 1 <= self.udp_flows <= 200:
            raise InputError(f"udp_flows {self.udp_flows!r}: 1..200 (trafgen varies one byte of the port)")
        if not self.tcp_seconds or self.tcp_seconds < 0.5 or self.tcp_seconds > 60:
            raise InputError(f"tcp_seconds {self.tcp_seconds!r}: 0.5..60")
        if self.iptables_target not in ("MASQUERADE", "SNAT"):
            raise InputError(f"iptables_target {self.iptables_target!r}: MASQUERADE or SNAT")
        self.port_range = list(check_port_range(tuple(self.port_range)))
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'udp' and 'tcp' (the side-by-side trials), 'prog' (the programs' own time), 'check'
    (rows of the checks), 'checks' (correctness checks: check, ok, detail, offloads),
    'flows' (the flow table at the end of the checks)."""
    import pandas as pd

    p = Params(**kwargs).validate()
    runs.require_root("the eBPF NAT experiment")
    for tool, pkg in (("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3")):
        hosts.which(tool, pkg)
    checks, flows = [], pd.DataFrame()
    with ExitStack() as stack:
        nat = stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(p.port_range)))
        rs = None
        if p.checks:
            with NatLab(p.clients, p.offloads) as lab:
                rs = results.ResultSet(EXPERIMENT, asdict(p), lab.topo.run.prefix, data_dir)
                checks = check_correctness(lab, nat)
                flows = nat.flows_table()
                topo_meta = lab.topo.metadata()  # while the testbed exists
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
                    _tcp_trial(lab, p, variant, trial, rs, clock)
            return m

        def record(variant, size, trial, m):
            rs.add_measurement(variant, trial, m, kind="udp", offloads=p.offloads, flows=p.udp_flows)

        trial_loop(p.variants, p.trials, measure_one, record, sizes=[p.udp_size], label=EXPERIMENT, show=p.progress)
        if p.prog_stats and "ebpf" in p.variants:
            with NatLab(p.clients, p.offloads) as lab, lab.ebpf(nat):
                _warm_up(lab)
                _program_time(lab, nat, p, rs)
        for c in checks:
            rs.add("ebpf", 0, None, {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}, kind="check",
                   offloads=p.offloads)
        _caveats(rs, p)
        run_dir = rs.save(None, {"topology": topo_meta, "checks": checks, "nat": {"inside": INSIDE_NET, "outside": OUTSIDE_NET,
                                                                "snat_address": NAT_OUTSIDE, "port_range": p.port_range}})
    table = rs.table
    checks_df = pd.DataFrame(checks, columns=["check", "ok", "detail", "offloads"])
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
    with traffic.generator(p.generator, src) as gen:
        out_probe = measure.link_probe(out, ethtool=False)
        m = measure.run_trial(lambda: gen.send(spec_), lambda: out_probe()["tx_packets"], size=p.udp_size,
                              probes={"client": measure.link_probe(src), "nat_in": measure.link_probe(nat_in),
                                      "nat_out": measure.link_probe(out), "srv": measure.link_probe(srv)},
                              offered_probe=("client", "tx_packets"), clock=clock)
    return m


def _iperf(lab: NatLab, seconds: float, port: int = 5201):
    """One iperf3 TCP stream c1 -> srv; the client's completed process."""
    with lab.server.spawn(["iperf3", "-s", "-1", "-p", str(port)], name="iperf3-server") as server:
        deadline = time.monotonic() + 5
        while "listening" not in server.output().lower() and time.monotonic() < deadline:
            time.sleep(0.05)
        return lab.client(1).run(["iperf3", "-c", SERVER, "-p", str(port), "-t", str(seconds), "-J"],
                                 check=False, timeout=seconds + 30)


def _tcp_trial(lab: NatLab, p: Params, variant: str, trial: int, rs: results.ResultSet, clock) -> None:
    out0 = lab.outside.stats()
    c0, s0 = measure.cpu_times(), clock.seconds()
    cp = _iperf(lab, p.tcp_seconds)
    c1, s1 = measure.cpu_times(), clock.seconds()
    out1 = lab.outside.stats()
    try:
        res = json.loads(cp.stdout)
        end = res["end"]
        bps = end["sum_received"]["bits_per_second"]
        nbytes = end["sum_received"]["bytes"]
        secs = end["sum_received"]["seconds"]
    except (ValueError, KeyError) as exc:
        raise LabkitError(f"iperf3 through the {variant} NAT failed: {cp.stdout[-800:]}{cp.stderr[-400:]}") from exc
    cpu = c1 - c0
    kb = nbytes / 1000
    rs.add(variant, trial, 1514, {
        "tcp_mbps": (bps / 1e6, "Mbit/s"),
        "tcp_bytes": (nbytes, "bytes"),
        "tcp_seconds": (secs, "s"),
        "tcp_nat_out_skbs": (out1["tx_packets"] - out0["tx_packets"], "packets"),
        "tcp_cpu_busy_s": (cpu.busy, "s"),
        "tcp_cpu_ns_per_kb": (cpu.busy / kb * 1e9 if kb else float("nan"), "ns/kB"),
        "tcp_net_rx_ns_per_kb": ((s1 - s0) / kb * 1e9 if kb else float("nan"), "ns/kB"),
    }, kind="tcp", offloads=p.offloads, flows=1)


@contextmanager
def bpf_run_time_stats():
    """Turn on the kernel's BPF run-time statistics (BPF_ENABLE_STATS) while in the `with`;
    the kernel turns them off again when the last holder closes its descriptor, so this
    never clobbers another user's setting (unlike the kernel.bpf_stats_enabled sysctl)."""
    lib = bpf.libbpf()
    lib.bpf_enable_stats.argtypes = [ctypes.c_int]
    lib.bpf_enable_stats.restype = ctypes.c_int
    fd = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise LabkitError(f"BPF_ENABLE_STATS failed ({os.strerror(-fd)})")
    try:
        yield
    finally:
        os.close(fd)


def prog_run_stats(fn) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo."""
    vals = {}
    for line in open(f"/proc/self/fdinfo/{fn.fd}"):
        k, _, v = line.partition(":")
        vals[k.strip()] = v.strip()
    return int(vals.get("run_time_ns", 0)), int(vals.get("run_cnt", 0))


def _program_time(lab: NatLab, nat: Nat, p: Params, rs: results.ResultSet) -> None:
    """The NAT programs' own time per packet on the real path (kernel BPF statistics)."""
    src, nat_in = lab.client_iface(1), lab.inside(1)
    count = max(10_000, p.udp_count // 2)
    spec_ = traffic.TrafficSpec(src.mac, nat_in.mac, client_addr(1), SERVER, size=p.udp_size, count=count,
                                flows=p.udp_flows, sport=1024, dport=9, timeout_s=p.timeout_s).validate()
    fns = {"nat_egress": nat.egress_function(), "nat_ingress": nat.ingress_function()}
    with bpf_run_time_stats(), traffic.generator(p.generator, src) as gen:
        windows = {}
        before = prog_run_stats(fns["nat_egress"])
        gen.send(spec_)  # UDP: the egress program translates every packet
        windows["nat_egress"] = (before, prog_run_stats(fns["nat_egress"]))
        before = prog_run_stats(fns["nat_ingress"])
        _iperf(lab, 1.0)  # TCP: the ingress program translates the ACKs coming back
        windows["nat_ingress"] = (before, prog_run_stats(fns["nat_ingress"]))
    for name, (b, a) in windows.items():
        dt, dn = a[0] - b[0], a[1] - b[1]
        rs.add("ebpf", 0, p.udp_size, {f"prog_ns_per_pkt:{name}": (dt / dn if dn else float("nan"), "ns/packet"),
                                       f"prog_runs:{name}": (dn, "packets")}, kind="prog", offloads=p.offloads)


def _caveats(rs: results.ResultSet, p: Params) -> None:
    rs.caveat("namespace testbed: clients, NAT and server share this machine's CPUs; CPU time is the whole "
              "machine's (the NAT's share is the difference between variants), so compare variants as ratios "
              "within this run, not as absolute numbers")
    rs.caveat("each variant ran on a freshly built testbed, so netfilter's connection tracking (hooked into a "
              "namespace once its NAT table is used) did not tax the variants after it")
    if p.offloads == "on":
        rs.caveat("offloads=on: packets carry partial checksums end to end and no receiver verifies them; "
                  "use offloads='mixed' or 'off' to check checksums")


def headline(table):
    import pandas as pd

    rows = []
    perf = table[table["kind"].isin(["udp", "tcp"])] if "kind" in table.columns else table
    for variant, g in perf.groupby("variant", sort=False):
        def stat(measure_, f="mean"):
            v = g[g["measure"] == measure_]["value"]
            return getattr(v, f)() if len(v) else float("nan")
        rows.append({
            "variant": variant,
            "UDP Mpps": stat("processed_pps") / 1e6,
            "UDP min..max": f"{stat('processed_pps', 'min') / 1e6:.3f}..{stat('processed_pps', 'max') / 1e6:.3f}",
            "offered Mpps": stat("offered_pps") / 1e6,
            "UDP NET_RX ns/pkt": stat("cpu_ns_per_pkt"),
            "UDP CPU ns/pkt (all)": stat("system_cpu_ns_per_pkt"),
            "TCP Mbit/s": stat("tcp_mbps"),
            "TCP min..max": f"{stat('tcp_mbps', 'min'):.0f}..{stat('tcp_mbps', 'max'):.0f}",
            "TCP NET_RX ns/kB": stat("tcp_net_rx_ns_per_kb"),
            "TCP CPU ns/kB (all)": stat("tcp_cpu_ns_per_kb"),
            "trials": int((g["measure"] == "processed_pps").sum()),
        })
    out = pd.DataFrame(rows)
    return out.round({"UDP Mpps": 3, "offered Mpps": 3, "UDP NET_RX ns/pkt": 0, "UDP CPU ns/pkt (all)": 0,
                      "TCP Mbit/s": 0, "TCP NET_RX ns/kB": 0, "TCP CPU ns/kB (all)": 0})


def _ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def interpret(table, checks) -> str:
    """Sentences computed from the data: correctness, then eBPF vs iptables and vs routing."""
    lines = []
    if checks is not None and len(checks):
        failed = checks[~checks["ok"]]
        lines.append(f"Correctness: {int(checks['ok'].sum())} of {len(checks)} checks passed with real traffic "
                     f"(offloads={checks['offloads'].iloc[0]})" + ("." if failed.empty else
                     "; FAILED: " + "; ".join(failed["check"]) + "."))

    def means(measure_):
        t = table[table["measure"] == measure_]
        return t.groupby("variant")["value"].agg(["mean", "min", "max"])

    pps, cpu, tcp = means("processed_pps"), means("cpu_ns_per_pkt"), means("tcp_mbps")
    if "ebpf" in pps.index and "iptables" in pps.index:
        e, i = pps.loc["ebpf"], pps.loc["iptables"]
        lines.append(f"Small-packet UDP: eBPF NAT {e['mean'] / 1e6:.3f} Mpps (trials {e['min'] / 1e6:.3f}–{e['max'] / 1e6:.3f}) "
                     f"vs iptables NAT {i['mean'] / 1e6:.3f} Mpps ({i['min'] / 1e6:.3f}–{i['max'] / 1e6:.3f}): "
                     f"{_ratio(e['mean'], i['mean']):.2f}× the rate.")
        if "ebpf" in cpu.index and "iptables" in cpu.index:
            ce, ci = cpu.loc["ebpf", "mean"], cpu.loc["iptables", "mean"]
            lines.append(f"CPU per packet in the receive path (NET_RX softirq time, all CPUs): eBPF {ce:.0f} ns vs iptables {ci:.0f} ns "
                         f"({_ratio(ce, ci):.2f}×).")
        if "routing" in pps.index:
            r = pps.loc["routing", "mean"]
            lines.append(f"Against plain forwarding ({r / 1e6:.3f} Mpps): eBPF keeps {_ratio(e['mean'], r):.0%}, "
                         f"iptables {_ratio(i['mean'], r):.0%} of the rate.")
        offered = table[table["measure"] == "offered_pps"].groupby("variant")["value"].mean()
        limited = table[(table["measure"] == "processed_pps") & table["flags"].str.contains(measure.GENERATOR_LIMITED, na=False)]
        if len(limited):
            lines.append("Generator-limited in some trials (" + ", ".join(
                f"{v}: {pps.loc[v, 'mean'] / 1e6:.3f} of {offered.get(v, float('nan')) / 1e6:.3f} Mpps offered"
                for v in sorted(set(limited["variant"]))) + "): the NAT forwarded (nearly) all that was offered "
                "there, so those rates are lower bounds; CPU per packet is the better comparison.")
    if "ebpf" in tcp.index and "iptables" in tcp.index:
        e, i = tcp.loc["ebpf"], tcp.loc["iptables"]
        lines.append(f"TCP (iperf3, one stream): eBPF {e['mean']:.0f} Mbit/s ({e['min']:.0f}–{e['max']:.0f}) vs iptables "
                     f"{i['mean']:.0f} Mbit/s ({i['min']:.0f}–{i['max']:.0f}): {_ratio(e['mean'], i['mean']):.2f}×.")
        kb = means("tcp_net_rx_ns_per_kb")
        if "ebpf" in kb.index and "iptables" in kb.index:
            lines.append(f"TCP receive-path CPU per kB: eBPF {kb.loc['ebpf', 'mean']:.0f} ns vs iptables "
                         f"{kb.loc['iptables', 'mean']:.0f} ns ({_ratio(kb.loc['ebpf', 'mean'], kb.loc['iptables', 'mean']):.2f}×).")
    prog = table[table["measure"].str.startswith("prog_ns_per_pkt:")]
    if len(prog):
        lines.append("The eBPF programs' own time per packet on the real path: "
                     + ", ".join(f"{m.split(':', 1)[1]} {v:.0f} ns" for m, v in zip(prog["measure"], prog["value"])) + ".")
    return "\n".join(lines) if lines else "Nothing was measured."


# ---------------------------------------------------------------- interactive use
