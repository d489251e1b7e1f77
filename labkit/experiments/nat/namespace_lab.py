"""The NAT experiment's testbed on this machine: `NatLab`'s namespaces, built afresh for
every trial (netfilter's NAT leaves connection tracking hooked into a namespace once
used, which would tax whatever ran after it), the tc NAT loaded once for the run
(`NamespaceNat`; `inventory_lab.InventoryNat` is the same on an inventory's hosts, and
the experiment's one run takes either).

Here every part runs: the full correctness checks (`checks.check_correctness`), UDP with
the receive path's CPU time (the softirq clock), TCP, new flows, the sweep and the eBPF
programs' own time.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from labkit import measure, traffic
from labkit.dataplanes import softirq_clock
from labkit.dataplanes.nat import Nat
from labkit.experiments.nat import newflows, progtime, sweep, sweep_run, tcp
from labkit.experiments.nat.checks import check_correctness
from labkit.experiments.nat.testbed import INSIDE_NET, NAT_OUTSIDE, OUTSIDE_NET, SERVER, NatLab
from labkit.testbed import runs
from labkit.testbed.undo import Undoable

UDP_LOAD = "UDP load"  # what the goal trial's generator serves, in the run's record of choices
#: the eBPF programs whose own time the run reads, per variant: (program, kind) by role
PROGRAMS = {
    "tc_nat": {"nat_egress": ("nat_egress", "tc"), "nat_ingress": ("nat_ingress", "tc")},
    "xdp_nat": {"xdp_nat_outbound": ("xdp_nat_outbound", "xdp"), "xdp_nat_inbound": ("xdp_nat_inbound", "xdp")},
}


class NamespaceNat(Undoable):
    """The NAT testbed on namespaces for Params P, for one run: one run prefix for every
    testbed built in it, the tc NAT, the softirq clock."""

    local = True
    checks_first = True  # each on a testbed of its own: nothing stays for the trials

    def __init__(self, p):
        import pandas as pd

        self.p, self.offloads = p, p.offloads
        self.generator = sweep.generator_name(p.generator, UDP_LOAD)
        self.flows, self.topo_meta = pd.DataFrame(), None

    def _open(self, stack) -> None:
        self.prefix = stack.enter_context(runs.run_scope()).prefix  # every NatLab of the run shares it
        self.nat = stack.enter_context(Nat(INSIDE_NET, OUTSIDE_NET, NAT_OUTSIDE, tuple(self.p.port_range)))
        self.clock = stack.enter_context(softirq_clock.SoftirqClock())

    @contextmanager
    def _lab(self):
        with NatLab(self.p.clients, self.p.offloads) as lab:
            if self.topo_meta is None:
                self.topo_meta = lab.topo.metadata()  # while the testbed exists
            yield lab

    # ---- what the run reads
    def metadata(self) -> dict | None:
        return self.topo_meta

    def nat_meta(self) -> dict:
        return {
            "inside": INSIDE_NET,
            "outside": OUTSIDE_NET,
            "snat_address": NAT_OUTSIDE,
            "port_range": self.p.port_range,
        }

    def skipped(self, parts, switched_off: dict, cannot_run: dict) -> dict:
        return {**switched_off, **cannot_run}

    def caveats(self, rs, feed_kind, new_flows: int, cannot_run: dict) -> None:
        from labkit.experiments import FEED_MEANS, FEED_SKB

        p = self.p
        rs.caveat(
            "namespace testbed: clients, NAT and server share this machine's CPUs; CPU time is the whole "
            "machine's (the NAT's share is the difference between variants), so compare variants as ratios "
            "within this run, not as absolute numbers"
        )
        rs.caveat(
            "each variant ran on a freshly built testbed, so netfilter's connection tracking (hooked into a "
            "namespace once its NAT table is used) did not tax the variants after it"
        )
        if {"xdp_nat", "xdp_routing"} & set(p.variants):
            rs.caveat(
                "the XDP variants turned the senders' checksum offload off while they ran (XDP updates "
                "checksums as full ones); on a veth testbed XDP frames are built from skbs by the sender, so "
                "native XDP here is no NIC's XDP: compare the variants with each other, not with NIC numbers"
            )
        if p.server_sink:
            rs.caveat(
                "the server dropped the UDP floods at XDP (native, every variant alike): their CPU time per "
                "packet is the generator's and the NAT host's; with server_sink=False it includes the server's "
                "stack (a closed port, answered with ICMP), as in runs before this option"
            )
        if new_flows:
            rs.caveat(
                f"new-flow trial: {new_flows} packets from c1, each from a source port of its own, one "
                "sending CPU: packets forwarded per second is the rate at which flows were set up"
            )
        if feed_kind == FEED_SKB and {"xdp_nat", "xdp_routing"} & set(p.variants):
            rs.caveat(f"the NAT's inside port got {FEED_SKB} from the generator: {FEED_MEANS[FEED_SKB]}")
        for part, why in cannot_run.items():
            rs.caveat(f"{part}: not measured: {why}")
        if p.offloads == "on":
            rs.caveat(
                "offloads=on: packets carry partial checksums end to end and no receiver verifies them; "
                "use offloads='mixed' or 'off' to check checksums"
            )

    # ---- checks, trials, the parts after them
    def check_all(self, variants) -> list[dict]:
        """The full correctness checks through each of VARIANTS, each on a fresh testbed;
        the flow table kept from the eBPF NAT's."""
        out = []
        for v in variants:
            with self._lab() as lab:
                out += check_correctness(lab, None if v == "iptables" else self.nat, v, self.p.iptables_target)
                if v == "tc_nat" or (v == "xdp_nat" and self.flows.empty):
                    self.flows = self.nat.flows_table()
        return out

    @contextmanager
    def trial(self, variant: str):
        with self._lab() as lab, lab.variant(variant, self.nat, self.p.iptables_target):
            warm_up(lab)
            yield _Trial(self, lab)

    def after_trials(self, rs, flow_counts: list) -> None:
        """The sweep, then the eBPF programs' own time (a trial of its own per variant)."""
        p = self.p
        sweep_run.run(p, self.nat, self.clock, rs, warm_up, flow_counts)
        for v in [v for v in p.variants if v in PROGRAMS] if p.prog_stats else []:
            with self._lab() as lab, lab.variant(v, self.nat):
                warm_up(lab)
                progtime.measure(lab, self.nat, PROGRAMS[v], p, v, rs)


class _Trial:
    """One trial through a variant on a fresh testbed: UDP, then TCP and new flows."""

    def __init__(self, owner: NamespaceNat, lab: NatLab):
        self.owner, self.lab = owner, lab

    def udp(self, rs, variant: str, trial: int, feed) -> measure.Measurement:
        p, lab = self.owner.p, self.lab
        spec = lab.c1_udp(size=p.udp_size, count=p.udp_count, flows=p.udp_flows, timeout_s=p.timeout_s)
        with (
            traffic.generator(p.generator, lab.client_iface(1), UDP_LOAD) as gen,
            lab.server_sink() if p.server_sink else nullcontext(),
        ):
            feed.generator = gen.name
            return lab.c1_trial(gen, spec, self.owner.clock)

    def extra(self, rs, variant: str, trial: int, new_flows: int) -> None:
        p, lab, clock = self.owner.p, self.lab, self.owner.clock
        for n in (1, p.tcp_streams) if p.tcp_streams else (1,):
            tcp.tcp_trial(lab, variant, trial, rs, clock, seconds=p.tcp_seconds, offloads=p.offloads, streams=n)
        if new_flows:
            with lab.server_sink() if p.server_sink else nullcontext():
                nf = newflows.new_flow_trial(lab, p.generator, new_flows, clock, p.timeout_s)
            rs.add_measurement(variant, trial, nf, kind="newflow", offloads=p.offloads, flows=new_flows)


def warm_up(lab: NatLab) -> None:
    """Resolve neighbours along the path before anything is measured."""
    for i in range(1, lab.clients + 1):
        lab.client(i).run(["ping", "-c", "1", "-W", "2", SERVER], check=False, timeout=10)
