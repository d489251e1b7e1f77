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

from dataclasses import asdict, dataclass, field

from labkit import capabilities, parameters, results, traffic
from labkit.dataplanes.nat import check_port_range
from labkit.errors import InputError
from labkit.experiments import (
    Feed,
    Result,
    View,
    across_hosts,
    check_run_shape,
    saved_metadata,
    smoke_clamp,
    trial_loop,
)
from labkit.experiments.nat import newflows, sweep, tcp
from labkit.experiments.nat.inventory_lab import ROLES, InventoryNat
from labkit.experiments.nat.namespace_lab import PROGRAMS, UDP_LOAD, NamespaceNat  # noqa: F401 (read as nat.UDP_LOAD)
from labkit.experiments.nat.testbed import VARIANTS, spec
from labkit.experiments.nat.views import (  # noqa: F401 (read as nat.X)
    ALIASES,
    PARTS,
    headline,
    interpret,
    kind_of,
    left_out,
    shown,
)
from labkit.testbed import inventory, runs
from labkit.testbed.hosts import which

#: variants that translate (the correctness checks run through each)
NAT_VARIANTS = ("tc_nat", "xdp_nat", "iptables")

EXPERIMENT = "nat"
NOTEBOOK = "03-ebpf-nat"  # the notebook that runs this experiment
#: how the comparison and the index show this experiment: small-packet UDP
VIEW = View(EXPERIMENT, "NAT (small-packet UDP)", NOTEBOOK, select=(("kind", ("udp",)),))
#: a smoke run: one trial, few packets, one second of TCP (see smoke_clamp)
SMOKE = {
    "trials": 1,
    "udp_count": 30_000,
    "tcp_seconds": 1.0,
    "new_flows": 2000,
    "udp_sizes": 2,
    "flow_counts": 2,
    "sweep_count": 20_000,
    "sweep_trials": 1,
    "tcp_streams": 4,
}


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
    generator: str = "auto"  # the fastest generator the capability probes allow here
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
        if not 1 <= self.udp_flows <= 65536 - newflows.FIRST_SPORT:  # a whole number: check_fields saw to it
            raise InputError(
                f"udp_flows {self.udp_flows!r}: 1..{65536 - newflows.FIRST_SPORT} source ports from "
                f"{newflows.FIRST_SPORT}"
            )
        if not self.tcp_seconds or self.tcp_seconds < 1 or self.tcp_seconds > 60:
            raise InputError(f"tcp_seconds {self.tcp_seconds!r}: 1..60 (iperf3 counts whole seconds)")
        if self.iptables_target not in ("MASQUERADE", "SNAT"):
            raise InputError(f"iptables_target {self.iptables_target!r}: MASQUERADE or SNAT")
        self.port_range = list(check_port_range(tuple(self.port_range)))
        newflows.check(self.new_flows, self.generator)
        sweep.check(self.udp_sizes, self.flow_counts, self.sweep_count, self.sweep_trials, self.generator)
        tcp.check_streams(self.tcp_streams)
        room = int(0.8 * (self.port_range[1] - self.port_range[0] + 1))
        if self.new_flows > room:
            raise InputError(
                f"new_flows {self.new_flows}: all go to one server port, so each takes a port of "
                f"the SNAT range {self.port_range[0]}-{self.port_range[1]}; keep it at most {room} "
                "(80% of the range), or widen port_range"
            )
        if self.inventory is not None:
            inventory.parse(self.inventory).require(ROLES, two_interfaces=("dut",))
        if self.smoke:
            smoke_clamp(self, SMOKE)
        sweep.check_count(self.sweep_count, self.flow_counts)
        return self


def run(data_dir=None, **kwargs) -> Result:
    """Run the experiment; keyword arguments are the fields of `Params`. The Result's parts:
    'udp' and 'tcp' (the side-by-side trials), 'newflow' (the new-flow trial), 'udp_sweep'
    and 'tcp_streams' (see `sweep`), 'prog' (the programs' own time), 'check' (rows of the
    checks), 'checks' (correctness checks: check, ok, detail, offloads), 'flows' (the flow
    table at the end of the checks), 'skipped' (the parts this run left out, and why: an
    optional part's kind with no rows is an empty table, never an error). The testbed is
    namespaces on this machine (`NamespaceNat`) or an inventory's hosts (`InventoryNat`,
    where the checks are a ping and a UDP exchange and only the UDP trials run)."""
    import pandas as pd

    p = Params(**kwargs).validate()
    capabilities.begin_run()  # this run's choices of backends, not an earlier run's in this process
    if p.inventory is None:
        runs.require_root("the eBPF NAT experiment")
        for tool, pkg in (("ping", "iputils-ping"), ("tcpdump", "tcpdump"), ("iperf3", "iperf3")):
            which(tool, pkg)
    with NamespaceNat(p) if p.inventory is None else InventoryNat(p) as lab:
        cannot = cannot_run(p)
        skipped = lab.skipped(PARTS, switched_off(p), cannot)
        new_flows = 0 if "new flows" in skipped else p.new_flows
        flow_counts = (
            [f for f in p.flow_counts if f not in sweep.too_many(p.flow_counts, p.generator)[0]]
            if p.flow_counts
            else []
        )
        feed = Feed(lab.generator, real_interfaces=not lab.local)
        checking = "correctness checks" not in skipped
        checked = [v for v in p.variants if v in NAT_VARIANTS] if checking else []
        checks = lab.check_all(checked) if lab.checks_first else []
        rs = results.ResultSet(EXPERIMENT, asdict(p), lab.prefix, data_dir)

        def measure_one(variant, size, trial):
            with lab.trial(variant) as t:
                m = t.udp(rs, variant, trial, feed)
                t.extra(rs, variant, trial, new_flows)
            return m

        def record(variant, size, trial, m):
            generator = m.offered.generator or feed.generator
            extra = {"kind": "udp", "offloads": lab.offloads, "flows": p.udp_flows, "generator": generator}
            rs.add_measurement(variant, trial, m, **extra, feed=feed.add(m, "client"))  # feed last, as a column

        trial_loop(p.variants, p.trials, measure_one, record, sizes=[p.udp_size], label=EXPERIMENT, show=p.progress)
        lab.after_trials(rs, flow_counts)
        if not lab.checks_first:
            checks = lab.check_all(checked)
        if not lab.local:
            across_hosts.blank_local_cpu(rs.rows)  # this machine's CPU is no host's
        for c in checks:
            passed = {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}
            rs.add(c["variant"], 0, None, passed, kind="check", offloads=c["offloads"])
        lab.caveats(rs, feed.kind, new_flows, cannot)
        run_dir = rs.save(
            lab,
            {
                "checks": checks,
                "generator": feed.generator,
                "feed": feed.metadata(),
                "skipped_parts": skipped,
                "nat": lab.nat_meta(),
            },
        )
    table = rs.table
    checks_df = pd.DataFrame(checks, columns=["variant", "check", "ok", "detail", "offloads"])
    text = interpret(table, checks_df, cpu=lab.local, meta=saved_metadata(run_dir))
    if not lab.local:  # CPU blank: left out
        text += "\nCPU per packet: not measured across hosts (see the caveats)."
    result_parts = parts(table, checks_df, lab.flows, skipped)
    return Result(EXPERIMENT, table, text, rs.caveats, run_dir, p, result_parts, headline_of=headline)


def switched_off(p: Params) -> dict:
    """{part: why} for the optional parts Params P switches off."""
    off = {
        "correctness checks": (not p.checks, "checks = False"),
        "new flows": (not p.new_flows, "new_flows = 0"),
        "TCP with many connections": (not p.tcp_streams, "tcp_streams = 0"),
        "UDP sweep by frame size": (not p.udp_sizes, "udp_sizes = []"),
        "UDP sweep by flow count": (not p.flow_counts, "flow_counts = []"),
        "programs' own time": (not p.prog_stats, "prog_stats = False"),
    }
    return {part: why for part, (is_off, why) in off.items() if is_off}


def cannot_run(p: Params) -> dict:
    """{part: why} for the parts Params P asks for that cannot run: its variants leave them
    nothing to do, or the generator 'auto' picks here cannot send their flows (a generator
    named in P that cannot was refused by `Params.validate`)."""
    out = {}
    if p.checks and not set(p.variants) & set(NAT_VARIANTS):
        out["correctness checks"] = f"no NAT variant ({', '.join(NAT_VARIANTS)}) among the variants"
    if p.prog_stats and not set(p.variants) & set(PROGRAMS):
        out["programs' own time"] = f"no eBPF NAT variant ({', '.join(PROGRAMS)}) among the variants"
    if newflows.unavailable(p.new_flows, p.generator):
        out["new flows"] = newflows.unavailable(p.new_flows, p.generator)
    if p.flow_counts:
        out.update(sweep.beyond(p.flow_counts, p.generator))
    return out


def parts(table, checks, flows, skipped: dict) -> dict:
    """The Result's parts beside the table: the checks, the flow table, the skipped parts
    (part, kind, why), and an empty table for every optional part the table has no rows of."""
    import pandas as pd

    have = set(table["kind"].dropna()) if "kind" in table.columns else set()
    out = {kind: table.iloc[0:0] for kind in set(PARTS.values()) | {"udp", "tcp"} if kind not in have}
    out.update(
        {
            "checks": checks,
            "flows": flows,
            "skipped": pd.DataFrame(
                [(part, kind_of(part), why) for part, why in skipped.items()], columns=["part", "kind", "why"]
            ),
        }
    )
    return out
