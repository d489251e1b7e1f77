"""The NAT and latency parts of `vm_vs_container`: each runs on one place's testbed (the
namespace one, or the one whose box is a VM) through the testbed interface only, so the
same code measures both places.

The testbed is client -> box -> server (`vm_vs_container.spec`), the box in a namespace
or a VM, routing between its two ports:

- **NAT** (`nat_part`): the tc NAT (bpf/nat.c, compiled where the box is) on the box,
  set up and checked by the NAT experiment's testbed-neutral lab
  (`nat.inventory_lab.InventoryNat`, given this testbed): a ping and a UDP exchange
  through it (every datagram echoed, the server seeing only the SNAT address), then UDP
  trials from the client's generator (trafgen: the NAT's UDP load, as across hosts)
  counted at the server, with this host's CPU per packet (its receive softirq; for a VM
  also QEMU's threads while the generator sends).
- **latency** (`latency_part`): one-way latency through the box as 01 measures it
  (bpf/latency.c; `measure.latency_profile`): probes (UDP port 7) from the client pass the
  box's drop filter (rule "flood": only the generator's port is dropped), are routed by
  the box to the server, where the sink keeps every probe's delay. Client and server are
  namespaces of this machine, so the probe is stamped and read on one clock even when
  the box is a VM: the VM's hop is inside the delay, its clock is not. At no load and
  under the flood at fractions of the box's own PDR (a short MLRsearch on it).
"""

from __future__ import annotations

from contextlib import ExitStack

from labkit import bpf, traffic
from labkit.dataplanes.latency_probe import LatencyProbe, sink_neighbour
from labkit.experiments import l2fwd_views as views
from labkit.experiments.nat import Params as NatParams
from labkit.experiments.nat.inventory_lab import InventoryNat
from labkit.experiments.xdp_drop_receiver import drop_receiver
from labkit.measure import latency_profile

NAT_VARIANT = "tc_nat"
NAT_KIND, CHECK_KIND = "udp", "check"  # the NAT's trials and checks, as 03 names them
NDR_LOSS = 0.001
SEARCH = {False: (0.5, 15.0), True: (0.2, 4.0)}  # the latency part's PDR search: trial s, budget s, by smoke


def cpu_window(bed):
    """A callable that starts a CPU reading of BED's box and returns one that ends it:
    {part: seconds} of QEMU's threads where the box is a VM; {} on namespaces (the
    softirq clock measures those)."""
    vm = getattr(bed, "vm", None)

    def start():
        if vm is None:
            return dict
        before = vm.cpu_seconds()
        return lambda: {k: v - before[k] for k, v in vm.cpu_seconds().items()}

    return start


def per_packet(seconds: dict, packets: int) -> dict:
    """{part: seconds} as rows' measures: {part}_ns_per_pkt."""
    return {
        f"{part}_ns_per_pkt": (s * 1e9 / packets if packets else float("nan"), "ns/packet")
        for part, s in seconds.items()
    }


def nat_part(p, bed, place: str, rs, clock, flags: list) -> list[dict]:
    """The tc NAT on BED's box: its checks, then P.trials UDP trials of P.nat_count packets
    (rows of kind NAT_KIND for variant PLACE, FLAGS on each); CLOCK: the softirq clock.
    Returns the checks (dicts: check, ok, detail)."""
    from labkit.experiments import Feed

    nat_p = NatParams(
        variants=[NAT_VARIANT],
        generator=p.generator,
        udp_size=p.size,
        udp_count=p.nat_count,
        udp_flows=p.nat_flows,
        trials=p.trials,
    )
    lab = InventoryNat(nat_p, bed=bed)
    lab.offloads = "as on the testbed"
    lab.clock, lab.send_window = clock, cpu_window(bed)
    with lab:
        checks = lab.check_all([NAT_VARIANT])
        for c in checks:
            rs.add(place, 0, None, {f"check:{c['check']}": (1.0 if c["ok"] else 0.0, "pass")}, kind=CHECK_KIND)
        feed = Feed(p.generator)
        for trial in range(p.trials):
            with lab.trial(NAT_VARIANT) as t:
                m = t.udp(rs, place, trial, feed)
                used = lab.sent_cpu  # QEMU's threads while the generator sent (none on namespaces)
            m.flags.extend(flags)
            extra = {"kind": NAT_KIND, "generator": lab.gen.name, "program": NAT_VARIANT}
            rs.add_measurement(place, trial, m, **extra)
            if used:
                rs.add(place, trial, p.size, per_packet(used, m.processed), m.flags, **extra)
    return checks


def latency_part(p, bed, place: str, rs, gen, flags: list) -> list[dict]:
    """One-way latency client -> box -> server with the box's drop filter in P.program mode
    dropping only the flood, P.trials times: rows of kind 'latency' for variant PLACE
    (FLAGS on each); returns the CDF points."""
    from labkit.traffic.xdpgen import GroOn

    client, box_in = bed.end("sender"), bed.end("dut", 0)
    box_out, server = bed.end("dut", 1), bed.end("receiver")
    flood = traffic.TrafficSpec.between(client, box_in, size=p.size, count=p.count).validate()
    trial_s, budget_s = SEARCH[bool(p.smoke)]
    cdfs, first = [], None
    with ExitStack() as stack:
        if p.program == "xdp_generic" and getattr(bed, "vm", None) is None:
            # a generic program on the client's veth peer: NAPI (for XDP frames) from GRO instead
            stack.enter_context(GroOn(box_in))
        rx = stack.enter_context(bed.hold("dut", drop_receiver, "flood"))
        probe = stack.enter_context(LatencyProbe(client, dst_mac=box_in.mac, dst_ip=server.address))
        stack.enter_context(sink_neighbour(bed.host("dut"), server.address, server.mac, box_out.name, timeout=30))
        stack.enter_context(bpf.attach_xdp(server, probe.sink(), "native"))
        rx("use", p.program)
        client.host.run(["ping", "-c", "1", "-W", "5", box_in.address], check=False, timeout=30)
        for trial in range(p.trials):
            prof = latency_profile.profile(
                probe,
                gen,
                flood,
                lambda: rx("processed"),
                loads=p.latency_loads,
                probes=p.latency_probes,
                probe_rate=p.latency_probe_rate,
                ndr_loss=NDR_LOSS,
                search_trial_s=trial_s,
                search_budget_s=budget_s,
                searched=first,  # searched once per place, in its first trial; the others measure at that PDR
            )
            first = first or (prof if prof.pdr_pps > 0 else None)
            cdfs += views.record_latency(rs, place, trial, p.size, prof, flags=flags, generator=gen.name)
        rx("off")
    return cdfs
