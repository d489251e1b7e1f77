"""XDP in a container against XDP in a VM: the same drop program on the same receiver's
place, once in a network namespace and once in a local VM (`labkit.testbed.vm`), fed by
the same generator from a namespace sender.

    result = vm_vs_container.run(smoke=True)
    result.headline()            # rate, loss, CPU per packet per receiver
    print(result.interpretation) # which numbers are speed numbers, which functional checks

Each receiver gets the drop filter of 01 (`xdp_drop_receiver`), in the same mode
(`program`: native XDP by default, on the veth in the namespace and on the guest's
virtio-net interface in the VM). The VM's packets take one more hop: veth -> bridge ->
tap -> QEMU (or vhost-net) -> virtio-net in the guest. Besides rates, CPU per packet is
read on this machine: for the namespace, the machine's receive softirq time; for the VM,
the time of QEMU's threads (`vcpu`: the guest's CPUs, `vhost`: vhost-net, `qemu`: all of
QEMU, its I/O thread that serves virtio-net without vhost-net included). The difference
is the cost of the virtio hop. Under TCG (no usable KVM here) the VM's numbers say that
it works (the program in the guest counted the generator's packets), never how fast.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from labkit import capabilities, measure, parameters, results, traffic
from labkit.errors import InputError
from labkit.experiments import Result, check_run_shape, smoke_clamp, trial_loop
from labkit.experiments.xdp_drop_receiver import drop_receiver
from labkit.testbed import runs, topology

EXPERIMENT = "vm_vs_container"
NOTEBOOK = "05-vm-vs-container"
RECEIVERS = ["namespace", "vm"]
PROGRAMS = ["xdp_native", "xdp_generic"]
ROLES = {"sender": ("snd", None), "receiver": ("rcv", None)}
#: a smoke run: one trial of few packets per receiver (the VM's boot dominates it: about
#: 60 to 170 s under TCG here, a few seconds with KVM)
SMOKE = {"trials": 1, "count": 5_000}
FUNCTIONAL = "functional check only (TCG)"


@dataclass
class Params:
    receivers: list = field(default_factory=lambda: list(RECEIVERS))
    program: str = "xdp_native"  # the drop filter's XDP mode, the same on both receivers
    size: int = 64  # frame bytes without FCS
    trials: int = 3
    count: int = 200_000  # packets offered per trial and receiver
    rate_pps: float | None = None  # None: as fast as the generator goes
    generator: str = "trafgen"  # the same on both receivers (the in-kernel ones need XDP on the veth peer)
    vm_cpus: int = 1
    vm_memory: str = "512M"
    boot_timeout_s: float = 400.0  # a TCG boot takes 60 to 170 s here
    progress: bool = True
    smoke: bool = False

    def validate(self) -> "Params":
        parameters.check_fields(self)
        check_run_shape(self.receivers, RECEIVERS, self.trials, [self.size], self.count)
        if self.program not in PROGRAMS:
            raise InputError(f"program {self.program!r}: choose one of {PROGRAMS}")
        parameters.check_choice("generator", self.generator, traffic.backends_status())
        if self.boot_timeout_s <= 0:
            raise InputError(f"boot_timeout_s {self.boot_timeout_s}: a positive number of seconds")
        if self.smoke:
            smoke_clamp(self, SMOKE)
        return self


def run(data_dir=None, **kwargs) -> Result:
    """Run the comparison; keyword arguments are the fields of `Params`."""
    from labkit.testbed.bed import Namespaces
    from labkit.testbed.vm_bed import VmTestbed

    p = Params(**kwargs).validate()
    capabilities.begin_run()
    runs.require_root("the VM against container experiment")
    rs, meta, sent = None, {}, {}
    for receiver in p.receivers:
        if receiver == "vm":
            bed = VmTestbed(topology.pair(), ROLES, cpus=p.vm_cpus, memory=p.vm_memory, boot_timeout=p.boot_timeout_s)
        else:
            bed = Namespaces(topology.pair(), ROLES)
        with bed:
            rs = rs or results.ResultSet(EXPERIMENT, asdict(p), bed.prefix, data_dir)
            sent[receiver] = _measure(p, bed, receiver, rs)
            meta[receiver] = bed.metadata()
    vm = (meta.get("vm") or {}).get("vm") or {}
    if isinstance(vm, dict) and vm.get("accelerator") == "tcg":
        rs.caveat(f"VM: {vm['warning']}; {vm.get('accelerator_reason', '')}", "vm")
    if isinstance(vm, dict) and not vm.get("vhost_net", True):
        rs.caveat("VM: no vhost-net here: QEMU served the virtio-net queues itself (its time is in qemu_ns_per_pkt)")
    rs.caveat("namespace testbed: sender, receiver and VM share this machine's CPUs; compare receivers as ratios")
    run_dir = rs.save(None, {"testbeds": meta, "vm": vm, "generator": p.generator})
    text = interpret(rs.table, vm)
    return Result(EXPERIMENT, rs.table, text, rs.caveats, run_dir, p, {"vm": vm}, headline_of=headline)


def _measure(p: Params, bed, receiver: str, rs) -> int:
    """P.trials of P.count packets into BED's receiver, its drop filter in P.program mode;
    rows into RS. Returns the packets the receiver counted."""
    from labkit.dataplanes.softirq_clock import SoftirqClock

    snd, rcv = bed.end("sender"), bed.end("receiver")
    spec = traffic.TrafficSpec.between(snd, rcv, size=p.size, count=p.count, rate_pps=p.rate_pps).validate()
    vm = getattr(bed, "vm", None)
    counted = 0
    with (
        bed.hold("receiver", drop_receiver, "udp") as rx,
        traffic.generator(p.generator, snd) as gen,
        SoftirqClock() if vm is None else _no_clock() as clock,
    ):
        rx("use", p.program)

        def one(variant, size, trial):
            q0, t0 = (vm.cpu_seconds() if vm else None), time.monotonic()
            m = measure.run_trial(
                lambda: gen.send(spec),
                lambda: rx("processed"),
                size=p.size,
                probes={"snd": measure.link_probe(snd)},
                offered_probe=("snd", "tx_packets"),
                clock=clock,
            )
            m.vm_cpu = {k: v - q0[k] for k, v in vm.cpu_seconds().items()} if vm else None
            m.wall = time.monotonic() - t0
            return m

        def record(variant, size, trial, m):
            nonlocal counted
            counted += m.processed
            if vm is not None and vm.accel == "tcg":
                m.flags.append(FUNCTIONAL)
            rs.add_measurement(variant, trial, m, kind="trial", generator=gen.name, program=p.program)
            per = {
                f"{part}_ns_per_pkt": (seconds * 1e9 / m.processed if m.processed else float("nan"), "ns/packet")
                for part, seconds in (m.vm_cpu or {}).items()
            }
            if per:
                rs.add(variant, trial, p.size, per, m.flags, kind="trial", generator=gen.name, program=p.program)

        trial_loop([receiver], p.trials, one, record, sizes=[p.size], label=f"{EXPERIMENT} {receiver}", show=p.progress)
        rx("off")
    return counted


class _no_clock:
    """No softirq clock for the VM: the guest's receive path runs in QEMU's threads."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def headline(table):
    """One row per receiver: offered and processed kpps, loss, CPU per packet (the
    namespace's receive softirq; the VM's QEMU threads), and whether the row is a speed
    number or a functional check."""
    import pandas as pd

    rows = []
    for receiver, t in table.groupby("variant", sort=False):
        v = t.groupby("measure")["value"].mean()
        functional = t["flags"].astype(str).str.contains(FUNCTIONAL, regex=False).any()
        rows.append(
            {
                "receiver": receiver,
                "offered kpps": v.get("offered_pps", float("nan")) / 1e3,
                "processed kpps": v.get("processed_pps", float("nan")) / 1e3,
                "counted packets": v.get("processed_pkts", float("nan")),
                "loss %": v.get("loss_ratio", float("nan")) * 100,
                # the machine's receive CPU is the namespace's; the VM's is in QEMU's threads
                "receive CPU ns/pkt": v.get("cpu_ns_per_pkt", float("nan")) if receiver != "vm" else float("nan"),
                "vCPU ns/pkt": v.get("vcpu_ns_per_pkt", float("nan")),
                "QEMU ns/pkt": v.get("qemu_ns_per_pkt", float("nan")),
                "numbers are": FUNCTIONAL if functional else "speed numbers (this machine, shared CPUs)",
            }
        )
    return pd.DataFrame(rows).round(1)


def interpret(table, vm: dict) -> str:
    """What the run says: did the program in each receiver count the packets, the rates
    side by side, the cost of the virtio hop, and which numbers are speed numbers."""
    h = headline(table).set_index("receiver") if len(table) else None
    if h is None or h.empty:
        return "No trials were run."
    lines = []
    for receiver, r in h.iterrows():
        lines.append(
            f"{receiver}: the drop program counted {r['counted packets']:.0f} packets per trial "
            f"({r['processed kpps']:.1f} kpps of {r['offered kpps']:.1f} offered, loss {r['loss %']:.1f}%)."
        )
    tcg = vm.get("accelerator") == "tcg"
    if "vm" in h.index:
        seen = h.loc["vm", "counted packets"] > 0
        lines.append(
            "XDP in the VM "
            + ("saw the generator's packets: the VM receiver works." if seen else "counted nothing: it does not work.")
        )
    if {"vm", "namespace"} <= set(h.index) and h.loc["vm", "QEMU ns/pkt"] > 0:
        ns, vmr = h.loc["namespace"], h.loc["vm"]
        hop = vmr["QEMU ns/pkt"] - ns["receive CPU ns/pkt"]
        lines.append(
            f"The virtio hop (veth -> bridge -> tap -> QEMU{' or vhost-net' if vm.get('vhost_net') else ''} -> "
            f"virtio-net -> the guest's XDP): QEMU spent {vmr['QEMU ns/pkt']:.0f} ns per packet on this host "
            f"({vmr['vCPU ns/pkt']:.0f} in the guest's vCPU threads) against {ns['receive CPU ns/pkt']:.0f} ns of "
            f"receive softirq in the namespace: a difference of {hop:+.0f} ns per packet; the VM processed "
            f"{vmr['processed kpps'] / ns['processed kpps']:.2f}x the namespace's rate"
            + (" — under TCG, where every guest instruction is emulated." if tcg else ".")
        )
    if tcg:
        lines.append(
            "Speed numbers: the namespace receiver's only. The VM's are functional checks: it ran under QEMU's "
            f"TCG emulation ({vm.get('accelerator_reason', 'no usable KVM')}), so its rates and CPU per packet "
            "are the emulator's, not a VM's; on a machine with real KVM and vhost-net the same run measures them."
        )
    elif vm:
        lines.append(
            "The VM ran on KVM"
            + (" with vhost-net" if vm.get("vhost_net") else " without vhost-net (QEMU served virtio-net itself)")
            + ": both receivers' numbers are speed numbers of this machine, with its CPUs shared by all."
        )
    return "\n".join(lines)
