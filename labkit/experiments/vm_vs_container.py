"""XDP (and the tc NAT) in a container against the same in a VM: one testbed per place,
client -> box -> server, the box a network namespace or a local VM (`labkit.testbed.vm`),
fed by the same generator from the client namespace.

    result = vm_vs_container.run(smoke=True)
    result.headline()            # per place and part: rate, loss, CPU per packet, checks
    print(result.interpretation) # which numbers are speed numbers, which functional checks

Per place, three parts (`parts`), all on the same testbed (one VM boot per run):

- ``drop``: the drop filter of 01 (`xdp_drop_receiver`, rule "udp") on the box's port
  facing the client, in the same mode (`program`: native XDP by default, on the veth in
  the namespace and on the guest's virtio-net interface in the VM);
- ``nat``: the tc NAT on the box between client and server, checked (ping, a UDP exchange
  seen by the server from the SNAT address only) and measured (UDP counted at the server)
  by the NAT experiment's own lab (`vm_parts.nat_part`);
- ``latency``: one-way latency client -> box -> server through the box's drop filter
  (dropping only the flood), at no load and at fractions of the box's PDR
  (`vm_parts.latency_part`): client and server are namespaces, so one clock reads it.

The VM's packets take one more hop each way: veth -> bridge -> tap -> QEMU (or vhost-net)
-> virtio-net in the guest. CPU per packet is read on this machine: its receive softirq
time (the namespace's whole path; for the VM the veth, bridge and tap), and for the VM
also the time of QEMU's threads while the generator sends (`vcpu`: the guest's CPUs,
`vhost`: vhost-net, `qemu`: all of QEMU, its I/O thread that serves virtio-net without
vhost-net included); "host CPU" adds the two. The difference is the cost of the virtio
hop. (Without IRQ time accounting, softirq work done in QEMU's or vhost's time may be
counted in both.)
Under TCG (no usable KVM here) the VM's numbers say that it works (the program in the
guest counted the generator's packets, the NAT translated, probes crossed), never how fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from labkit import capabilities, measure, parameters, results, traffic
from labkit.dataplanes.softirq_clock import SoftirqClock
from labkit.errors import InputError
from labkit.experiments import Result, check_run_shape, smoke_clamp, trial_loop, vm_parts
from labkit.experiments.xdp_drop_receiver import drop_receiver
from labkit.measure import latency_profile
from labkit.testbed import runs, topology

EXPERIMENT = "vm_vs_container"
NOTEBOOK = "05-vm-vs-container"
RECEIVERS = ["namespace", "vm"]
PARTS = ["drop", "nat", "latency"]
PROGRAMS = ["xdp_native", "xdp_generic"]
ROLES = {"sender": ("snd", None), "dut": [("box", "snd"), ("box", "srv")], "receiver": ("srv", None)}
CLIENT, BOX_IN = "10.50.0.1/24", "10.50.0.2/24"
BOX_OUT, SERVER = "198.51.100.1/24", "198.51.100.2/24"
#: a smoke run: one trial of few packets per place and part (the VM's boot dominates it:
#: about 60 to 170 s under TCG here, a few seconds with KVM)
SMOKE = {"trials": 1, "count": 5_000, "nat_count": 3_000, "latency_probes": 200, "latency_loads": 1}
FUNCTIONAL = "functional check only (TCG)"
MAX_FLOWS = 65_536 - traffic.TrafficSpec.sport  # source ports from the generator's first one
SPEED = "speed numbers (this machine, shared CPUs)"


@dataclass
class Params:
    receivers: list = field(default_factory=lambda: list(RECEIVERS))
    parts: list = field(default_factory=lambda: list(PARTS))
    program: str = "xdp_native"  # the drop filter's XDP mode, the same in both places
    size: int = 64  # frame bytes without FCS
    trials: int = 3
    count: int = 200_000  # packets offered per drop trial and place
    nat_count: int = 50_000  # packets offered per NAT trial
    nat_flows: int = 16  # source ports of the NAT's trials
    latency_loads: list = field(default_factory=lambda: [0.1, 0.5, 0.9])  # fractions of the box's PDR
    latency_probes: int = 1000  # probes per latency point
    latency_probe_rate: float = 1000.0  # probes per second
    rate_pps: float | None = None  # the drop trials' rate; None: as fast as the generator goes
    # drop and latency: the same in both places, paced for the latency loads (trafgen's --rate is not,
    # above ~2 kpps); the NAT's UDP load is trafgen's under auto, as across hosts
    generator: str = "auto"
    vm_cpus: int = 1
    vm_memory: str = "512M"
    boot_timeout_s: float = 400.0  # a TCG boot takes 60 to 170 s here
    progress: bool = True
    smoke: bool = False

    def validate(self) -> "Params":
        parameters.check_fields(self)
        check_run_shape(self.receivers, RECEIVERS, self.trials, [self.size], self.count)
        unknown = [x for x in self.parts if x not in PARTS]
        if unknown or not self.parts or len(set(self.parts)) != len(self.parts):
            raise InputError(f"parts {self.parts!r}: name each of {PARTS} at most once, at least one")
        if self.program not in PROGRAMS:
            raise InputError(f"program {self.program!r}: choose one of {PROGRAMS}")
        if not (isinstance(self.nat_count, int) and 1 <= self.nat_count <= 100_000_000):
            raise InputError(f"nat_count {self.nat_count!r}: a whole number of packets, 1 to 100,000,000")
        if not (isinstance(self.nat_flows, int) and 1 <= self.nat_flows <= MAX_FLOWS):
            raise InputError(f"nat_flows {self.nat_flows!r}: 1 to {MAX_FLOWS} source ports")
        parameters.check_choice("generator", self.generator, traffic.backends_status(), extra=["auto"])
        if self.boot_timeout_s <= 0:
            raise InputError(f"boot_timeout_s {self.boot_timeout_s}: a positive number of seconds")
        if "latency" in self.parts:
            latency_profile.check(self.latency_loads, self.latency_probes, self.latency_probe_rate, vm_parts.NDR_LOSS)
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def _tools(p: Params) -> None:
    """What the parts need on this machine, found before a VM boots for minutes."""
    from labkit.testbed.hosts import which

    if "nat" in p.parts:
        which("iptables", "iptables")
        which("ping", "iputils-ping")
        if p.generator in ("auto", "trafgen"):
            which("trafgen", "netsniff-ng")
    if "vm" in p.receivers:
        from labkit.testbed import vm as vm_host

        vm_host.tools()


def spec() -> topology.TopologySpec:
    """client (snd) -> box -> server (srv): the box routes between the inside network
    (10.50.0.0/24) and the outside one (198.51.100.0/24), whose address is the NAT's."""
    return topology.TopologySpec(
        hosts=["snd", "box", "srv"],
        links=[topology.LinkSpec("snd", "box", CLIENT, BOX_IN), topology.LinkSpec("box", "srv", BOX_OUT, SERVER)],
        forwarding=["box"],
        routes=[("snd", "198.51.100.0/24", BOX_IN.split("/")[0])],
    )


def run(data_dir=None, **kwargs) -> Result:
    """Run the comparison; keyword arguments are the fields of `Params`."""
    from labkit.testbed.bed import Namespaces
    from labkit.testbed.vm_bed import VmTestbed

    p = Params(**kwargs).validate()
    capabilities.begin_run()
    runs.require_root("the VM against container experiment")
    _tools(p)
    rs, meta, checks, cdfs = None, {}, [], []
    for place in p.receivers:
        if place == "vm":
            options = {"cpus": p.vm_cpus, "memory": p.vm_memory, "boot_timeout": p.boot_timeout_s}
            bed = VmTestbed(spec(), ROLES, vm_role="dut", **options)
        else:
            bed = Namespaces(spec(), ROLES)
        with bed:
            rs = rs or results.ResultSet(EXPERIMENT, asdict(p), bed.prefix, data_dir)
            tcg = getattr(getattr(bed, "vm", None), "accel", "") == "tcg"
            flags = [FUNCTIONAL] if tcg else []
            with traffic.generator(p.generator, bed.end("sender")) as gen:
                if "drop" in p.parts:
                    _measure(p, bed, place, rs, gen, flags)
                if "latency" in p.parts:
                    cdfs += vm_parts.latency_part(p, bed, place, rs, gen, flags)
            if "nat" in p.parts:
                with SoftirqClock() as clock:
                    checks += [{"receiver": place, **c} for c in vm_parts.nat_part(p, bed, place, rs, clock, flags)]
            meta[place] = bed.metadata()
    vm = (meta.get("vm") or {}).get("vm") or {}
    if isinstance(vm, dict) and vm.get("accelerator") == "tcg":
        rs.caveat(f"VM: {vm['warning']}; {vm.get('accelerator_reason', '')}", "vm")
    if isinstance(vm, dict) and not vm.get("vhost_net", True):
        rs.caveat("VM: no vhost-net here: QEMU served the virtio-net queues itself (its time is in qemu_ns_per_pkt)")
    rs.caveat("namespace testbed: client, box, server and VM share this machine's CPUs; compare places as ratios")
    if "latency" in p.parts:
        rs.caveat(
            "latency: probes (UDP port 7) from the client pass the box's drop filter (it drops only the flood's "
            f"port {traffic.TrafficSpec.dport}), are routed by the box to the server, whose XDP sink keeps every "
            "probe's delay; client and server are namespaces of this machine, one clock"
        )
    run_dir = rs.save(None, {"testbeds": meta, "vm": vm, "generator": p.generator, "nat_checks": checks})
    import pandas as pd

    lat = latency_profile.summary(rs.table)
    if len(lat):
        tcg = isinstance(vm, dict) and vm.get("accelerator") == "tcg"
        lat["numbers are"] = [FUNCTIONAL if tcg and place == "vm" else SPEED for place in lat["variant"]]
    parts = {"vm": vm, "checks": pd.DataFrame(checks), "latency": lat, "latency_cdf": pd.DataFrame(cdfs)}
    text = interpret(rs.table, vm, parts["checks"], lat)
    return Result(EXPERIMENT, rs.table, text, rs.caveats, run_dir, p, parts, headline_of=headline)


def _measure(p: Params, bed, place: str, rs, gen, flags: list) -> None:
    """The drop part: P.trials of P.count packets into the box's port facing the client,
    its drop filter in P.program mode; rows of kind 'trial' for variant PLACE into RS."""
    snd, box = bed.end("sender"), bed.end("dut", 0)
    spec_ = traffic.TrafficSpec.between(snd, box, size=p.size, count=p.count, rate_pps=p.rate_pps).validate()
    window, used = vm_parts.cpu_window(bed), {}
    with bed.hold("dut", drop_receiver, "udp") as rx, SoftirqClock() as clock:
        rx("use", p.program)

        def send():  # QEMU's threads read around the send alone, not the counter reads in the guest
            stop = window()
            try:
                return gen.send(spec_)
            finally:
                used["cpu"] = stop()

        def one(variant, size, trial):
            m = measure.run_trial(
                send,
                lambda: rx("processed"),
                size=p.size,
                probes={"snd": measure.link_probe(snd)},
                offered_probe=("snd", "tx_packets"),
                clock=clock,
            )
            m.vm_cpu = used.pop("cpu", {})
            return m

        def record(variant, size, trial, m):
            m.flags.extend(flags)
            extra = {"kind": "trial", "generator": gen.name, "program": p.program}
            rs.add_measurement(variant, trial, m, **extra)
            if m.vm_cpu:
                rs.add(variant, trial, p.size, vm_parts.per_packet(m.vm_cpu, m.processed), m.flags, **extra)

        trial_loop([place], p.trials, one, record, sizes=[p.size], label=f"{EXPERIMENT} {place}", show=p.progress)
        rx("off")


PART_OF_KIND = {"trial": "drop", vm_parts.NAT_KIND: "nat"}


def headline(table):
    """One row per place and rated part (drop, nat): offered and processed kpps (the drop
    filter's count; the NAT's: translated packets at the server), loss, CPU per packet (the
    namespace's receive softirq; the VM's QEMU threads), and whether the row is a speed
    number or a functional check."""
    import pandas as pd

    rows = []
    if "kind" not in table.columns:
        return pd.DataFrame()
    for (kind, place), t in table[table["kind"].isin(list(PART_OF_KIND))].groupby(["kind", "variant"], sort=False):
        v = t.groupby("measure")["value"].mean()
        functional = t["flags"].astype(str).str.contains(FUNCTIONAL, regex=False).any()
        rows.append(
            {
                "receiver": place,
                "part": PART_OF_KIND[kind],
                "offered kpps": v.get("offered_pps", float("nan")) / 1e3,
                "processed kpps": v.get("processed_pps", float("nan")) / 1e3,
                "counted packets": v.get("processed_pkts", float("nan")),
                "loss %": v.get("loss_ratio", float("nan")) * 100,
                # this host's receive softirq: the namespace's whole path, the VM's veth-bridge-tap part
                "receive CPU ns/pkt": v.get("cpu_ns_per_pkt", float("nan")),
                "vCPU ns/pkt": v.get("vcpu_ns_per_pkt", float("nan")),
                "QEMU ns/pkt": v.get("qemu_ns_per_pkt", float("nan")),  # vCPUs, I/O thread, vhost-net
                "host CPU ns/pkt": v.get("cpu_ns_per_pkt", float("nan")) + v.get("qemu_ns_per_pkt", 0.0),
                "numbers are": FUNCTIONAL if functional else SPEED,
            }
        )
    return pd.DataFrame(rows).round(1)


def interpret(table, vm: dict, checks=None, lat=None) -> str:
    """What the run says: did each place's programs work (the drop filter counted, the NAT
    translated and passed its checks, the probes crossed), the rates and latency side by
    side, the cost of the virtio hop, and which numbers are speed numbers."""
    h = headline(table)
    if h.empty and (lat is None or not len(lat)):
        return "No trials were run."
    vm = vm if isinstance(vm, dict) else {}  # metadata that could not be read: a message
    tcg, lines = vm.get("accelerator") == "tcg", []
    for _, r in h.iterrows():
        what = "the drop program counted" if r["part"] == "drop" else "the server counted, translated,"
        lines.append(
            f"{r['receiver']} {r['part']}: {what} {r['counted packets']:.0f} packets per trial "
            f"({r['processed kpps']:.1f} kpps of {r['offered kpps']:.1f} offered, loss {r['loss %']:.1f}%)."
        )
    by = h.set_index(["part", "receiver"]) if len(h) else None
    if by is not None and ("drop", "vm") in by.index:
        seen = by.loc[("drop", "vm"), "counted packets"] > 0
        lines.append(
            "XDP in the VM "
            + (
                "saw the generator's packets: a VM in the box's place works."
                if seen
                else "counted nothing: it does not work."
            )
        )
    if checks is not None and len(checks):
        for place, c in checks.groupby("receiver", sort=False):
            bad = c[~c["ok"].astype(bool)]
            lines.append(
                f"The tc NAT in the {place}: {len(c) - len(bad)} of {len(c)} checks passed"
                + (f"; failed: {'; '.join(f'{x.check} ({x.detail})' for x in bad.itertuples())}." if len(bad) else ".")
            )
    for part in ("drop", "nat"):
        if by is not None and {(part, "vm"), (part, "namespace")} <= set(by.index):
            lines.append(_hop(part, by.loc[(part, "namespace")], by.loc[(part, "vm")], vm, tcg))
    lines += _latency_lines(lat)
    if tcg:
        lines.append(
            "Speed numbers: the namespace's only. The VM's are functional checks: it ran under QEMU's TCG "
            f"emulation ({vm.get('accelerator_reason', 'no usable KVM')}), so its rates, CPU per packet and "
            "latency are the emulator's, not a VM's; on a machine with real KVM and vhost-net the same run "
            "measures them."
        )
    elif vm:
        lines.append(
            "The VM ran on KVM"
            + (" with vhost-net" if vm.get("vhost_net") else " without vhost-net (QEMU served virtio-net itself)")
            + ": both places' numbers are speed numbers of this machine, with its CPUs shared by all."
        )
    return "\n".join(lines)


def _hop(part: str, ns, vmr, vm: dict, tcg: bool) -> str:
    """The virtio hop's cost in PART: QEMU's time per packet against the namespace's softirq."""
    ratio = vmr["processed kpps"] / ns["processed kpps"] if ns["processed kpps"] else float("nan")
    path = f"veth -> bridge -> tap -> QEMU{' or vhost-net' if vm.get('vhost_net') else ''} -> virtio-net"
    return (
        f"The virtio hop in {part} ({path} -> the guest): {vmr['host CPU ns/pkt']:.0f} ns of this host's CPU per "
        f"packet ({vmr['receive CPU ns/pkt']:.0f} of receive softirq, {vmr['QEMU ns/pkt']:.0f} in QEMU's threads, "
        f"{vmr['vCPU ns/pkt']:.0f} of them the guest's vCPUs) against {ns['host CPU ns/pkt']:.0f} ns in the "
        f"namespace ({vmr['host CPU ns/pkt'] / ns['host CPU ns/pkt']:.1f}x); the VM processed {ratio:.2f}x the "
        "namespace's rate" + (" (under TCG, every guest instruction emulated)." if tcg else ".")
    )


def _latency_lines(lat) -> list[str]:
    """Per place, p50/p99 at no load and at the highest load, and the VM's against the
    namespace's at no load."""
    if lat is None or not len(lat):
        return []
    out, at_rest = [], {}
    for place, g in lat.groupby("variant", sort=False):
        g = g.sort_values(latency_profile.LOAD)
        rest, top = g.iloc[0], g.iloc[-1]
        at_rest[place] = rest["p50_us"]
        text = f"latency through the {place}: p50/p99 {rest['p50_us']:.1f}/{rest['p99_us']:.1f} µs with no load"
        if len(g) > 1:
            text += f", {top['p50_us']:.1f}/{top['p99_us']:.1f} µs at {top['load']} ({top['load_mpps'] * 1e3:.1f} kpps)"
        out.append(text + f" ({rest['probes']:.0f} probes at no load).")
    if {"vm", "namespace"} <= set(at_rest) and at_rest["namespace"] > 0:
        out.append(
            f"With no load the VM's path took {at_rest['vm'] / at_rest['namespace']:.1f}x the namespace's median "
            "delay: two virtio hops (in and out of the guest) and its forwarding."
        )
    return out
