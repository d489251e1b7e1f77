"""The own cost of every eBPF program in bpf/, per packet, from BPF_PROG_TEST_RUN (no NIC,
no generator, no other CPU work in the number).

    table = program_costs.measure(repeat=1_000_000, trials=5)
    # one row per source, program, scenario and trial: ns per packet and the verdict

Each bpf/*.c is searched for its XDP entry points (`int NAME(struct xdp_md *ctx)`) and tc
entry points (`int NAME(struct __sk_buff *skb)`); every one of them is loaded and run on a
64-byte UDP frame. Where labkit knows the program's control plane (labkit/dataplanes/), it
sets the maps up, so that the frame takes the program's working path, not its "nothing
configured" path:

- drop_filter.c: a rule dropping UDP (XDP_DROP / TC_ACT_SHOT);
- xdp_fwd.c: a port entry for the frame's ingress port (XDP_REDIRECT / TC_ACT_REDIRECT;
  the test run only computes the verdict, nothing is sent);
- xdp_gen.c: the generator with 64 flows (per-frame source-port and checksum rewrite,
  XDP_TX), and the sink (count per flow, XDP_DROP), loaded separately as in use;
- latency.c: the probe sender (template restored, stamped, XDP_TX), its tc egress
  counterpart (stamped, TC_ACT_OK) and the sink with a probe frame (delay histogrammed,
  XDP_DROP);
- nat.c: source NAT of an established flow outbound, and its reply inbound, at tc and at
  XDP (the XDP fast path with the flow's route remembered; xdp_route with this
  namespace's FIB, whatever it holds). The NAT
  rewrites the frame it is given, so a repeated run would measure the already-translated
  frame (which takes the "no rule" path): these two are measured one run per system
  call (`method` = "single"), averaged over many calls, which adds the timer reads and a
  cache that the system call left cold to each value: the bare XDP program and the tc drop
  filter are measured the same way as their baselines;
- any other program runs on the frame with its maps as loaded ("as loaded (no set-up)").

Programs that are neither XDP nor tc (the softirq clock's tracepoint programs) are listed
with no cost and the reason. Trials are interleaved across programs so drift on a shared
machine hits all of them alike; compare programs as ratios to the bare ones measured in
the same call.
"""

from __future__ import annotations

import ctypes
import re
import socket
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from labkit import BPF_DIR, bpf, packets
from labkit.dataplanes.drop_filter import DropFilter
from labkit.dataplanes.latency_probe import LatencyProbe
from labkit.dataplanes.minimal import Minimal
from labkit.dataplanes.nat import Nat
from labkit.dataplanes.xdp_fwd import XdpForwarder
from labkit.dataplanes.xdp_gen import GenProgram, GenSink
from labkit.dataplanes.xdp_nat import XdpNat
from labkit.errors import InputError

SRC_MAC, DST_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
EXPERIMENT = "program_costs"
NOTEBOOK = "04-comparison"  # the notebook that measures and shows these costs
ENTRY = re.compile(r"^\s*int\s+(\w+)\s*\(\s*struct\s+(xdp_md|__sk_buff)\s*\*", re.M)
KINDS = {"xdp_md": "xdp", "__sk_buff": "tc"}
SINGLE_CALLS = 2000  # system calls averaged per trial in "single" mode


@dataclass
class Scenario:
    """One program run on one frame, after SETUP(program) prepared its maps."""

    source: str
    program: str
    kind: str  # "xdp" or "tc"
    label: str
    frame: bytes
    expect: str | None = None  # the verdict the working path returns
    method: str = "repeat"  # "repeat": the kernel repeats the run; "single": one run per call
    defines: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.source}:{self.program}"


def entry_points(path: Path) -> list[tuple[str, str]]:
    """[(function, 'xdp'|'tc')] of one eBPF source, in the order they are written."""
    text = re.sub(r"/\*.*?\*/", "", Path(path).read_text(), flags=re.S)
    return [(name, KINDS[ctx]) for name, ctx in ENTRY.findall(text)]


def sources(directory: Path = BPF_DIR) -> dict[str, list[tuple[str, str]]]:
    """{source stem: entry points} for every bpf/*.c (an empty list: no XDP/tc program)."""
    return {p.stem: entry_points(p) for p in sorted(Path(directory).glob("*.c"))}


def verdict(kind: str, retval: int) -> str:
    if kind == "xdp":
        return bpf.XDP_ACTIONS.get(retval, str(retval))
    signed = ctypes.c_int32(retval).value
    return bpf.TC_ACTIONS.get(signed, str(signed))


def udp_frame(
    src_ip: str = "10.11.0.1", dst_ip: str = "10.11.0.2", sport: int = 1024, dport: int = 9, size: int = 64
) -> bytes:
    return packets.build(
        packets.FrameSpec(SRC_MAC, DST_MAC, src_ip, dst_ip, proto="udp", sport=sport, dport=dport, size=size)
    )


# ---------------------------------------------------------------- per-source set-ups
# Each builds its scenario through the program's control plane (labkit/dataplanes/),
# entering what it loads into an ExitStack, and returns [(loaded program, scenario)].
# The loader of a source with no entry here loads it as it is (default maps).
def _scenarios(program, source: str, *rows) -> list:
    """[(PROGRAM, Scenario(SOURCE, *row))] for each row: (program, kind, label, frame[, expect[, method]])."""
    return [(program, Scenario(source, *row)) for row in rows]


def _setup_drop_filter(stack: ExitStack, frame: bytes):
    filt = stack.enter_context(DropFilter())
    filt.drop_proto("udp")
    return _scenarios(
        filt.program,
        "drop_filter",
        ("xdp_filter", "xdp", "rule: drop UDP", frame, "XDP_DROP"),
        ("tc_filter", "tc", "rule: drop UDP", frame, "TC_ACT_SHOT"),
    )


def _setup_xdp_fwd(stack: ExitStack, frame: bytes):
    fwd = stack.enter_context(XdpForwarder.unpaired())
    lo = socket.if_nametoindex("lo")  # the test run's ingress device is this namespace's loopback
    for ifindex in {0, lo}:  # tc's test run reports ingress_ifindex 0 unless a context says otherwise
        fwd.forward(ifindex, 1, lo, "02:00:00:00:00:0c")
    label = "port entry: redirect (MAC rewrite)"
    return _scenarios(
        fwd.program,
        "xdp_fwd",
        ("xdp_l2fwd", "xdp", label, frame, "XDP_REDIRECT"),
        ("tc_l2fwd", "tc", label, frame, "TC_ACT_REDIRECT"),
    )


def _setup_xdp_gen(stack: ExitStack, frame: bytes):
    gen = stack.enter_context(GenProgram(socket.if_nametoindex("lo")))  # a test run's ingress: lo
    # 64 flows by source port (the default of vary), IPv4, UDP
    gen.configure(frame, flows=64, sport=1024, dport=9, src_ip="10.11.0.1", dst_ip="10.11.0.2")
    sink = stack.enter_context(GenSink())
    return _scenarios(
        gen.program, "xdp_gen", ("xdp_gen", "xdp", "64 flows: source port + checksums rewritten", frame, "XDP_TX")
    ) + _scenarios(sink.program, "xdp_gen", ("xdp_gen_sink", "xdp", "sink: count per flow, drop", frame, "XDP_DROP"))


NAT_INSIDE, NAT_SERVER, NAT_SNAT = "10.20.1.2", "198.51.100.2", "198.51.100.1"


def _setup_nat(stack: ExitStack, frame: bytes):
    # routes remembered for the whole measurement (see below)
    nat = stack.enter_context(Nat("10.20.0.0/16", "198.51.100.0/24", NAT_SNAT, fib_cache_s=10**6))
    out = udp_frame(NAT_INSIDE, NAT_SERVER, 40000, 53)
    first = bpf.test_run(nat.egress_function(), out)  # creates the flow: later runs are "established"
    translated = packets.parse(first.data_out)
    reply = udp_frame(NAT_SERVER, NAT_SNAT, 53, translated.sport)
    # the XDP fast path's working path: the flow's route remembered (a test run has no
    # testbed FIB to look it up in), so it translates and redirects
    XdpNat(nat).remember_route(socket.if_nametoindex("lo"), SRC_MAC, DST_MAC)
    fast = "SNAT, established flow, route remembered"
    nat.add_mapping("10.20.9.9", "198.51.100.99")
    hairpin = udp_frame("10.20.2.2", "198.51.100.99", 40000, 53)  # to another inside host's outside address
    return _scenarios(
        nat.program,
        "nat",
        ("nat_egress", "tc", "SNAT, established flow (outbound)", out, "TC_ACT_OK", "single"),
        ("nat_ingress", "tc", "SNAT, established flow (reply)", reply, "TC_ACT_OK", "single"),
        ("xdp_nat_outbound", "xdp", fast + " (outbound)", out, "XDP_REDIRECT", "single"),
        ("xdp_nat_inbound", "xdp", fast + " (reply)", reply, "XDP_REDIRECT", "single"),
        ("nat_hairpin", "tc", "hairpinning refused (inside ports)", hairpin, "TC_ACT_SHOT"),
        ("xdp_route", "xdp", "FIB lookup in this namespace (its routes decide the verdict)", out),
    )


def _setup_xdp_minimal(stack: ExitStack, frame: bytes):
    bare = stack.enter_context(Minimal())
    return _scenarios(
        bare.program,
        "xdp_minimal",
        ("xdp_drop_bare", "xdp", "bare (baseline)", frame, "XDP_DROP"),
        ("xdp_pass_bare", "xdp", "bare (baseline)", frame, "XDP_PASS"),
    )


def _setup_latency(stack: ExitStack, frame: bytes):
    probe = stack.enter_context(LatencyProbe.on_loopback())
    return _scenarios(
        probe.program,
        "latency",
        ("lat_probe", "xdp", "probe: headers restored, stamped", probe.frame, "XDP_TX"),
        ("lat_stamp", "tc", "probe stamped at tc egress (no live frames)", probe.frame, "TC_ACT_OK"),
        ("lat_sink", "xdp", "sink: a probe's delay histogrammed", probe.frame, "XDP_DROP"),
    )


SETUPS: dict[str, Callable] = {
    "drop_filter": _setup_drop_filter,
    "xdp_fwd": _setup_xdp_fwd,
    "xdp_gen": _setup_xdp_gen,
    "nat": _setup_nat,
    "xdp_minimal": _setup_xdp_minimal,
    "latency": _setup_latency,
}


def _default(stack: ExitStack, source: str, entries, frame: bytes):
    prog = stack.enter_context(bpf.load(source))
    return [(prog, Scenario(source, name, kind, "as loaded (no set-up)", frame)) for name, kind in entries]


SINGLE_BASELINES = ("xdp_minimal:xdp_drop_bare", "drop_filter:tc_filter")


def _single_baselines(plan):
    """The bare XDP program and the (small) tc drop filter again, one run per call: what
    a "single" scenario costs beyond them is the program's own work."""
    return [
        (prog, replace(sc, method="single", label=sc.label + "; one run per call (baseline)"))
        for prog, sc in plan
        if sc.name in SINGLE_BASELINES and sc.method == "repeat"
    ]


# ---------------------------------------------------------------- measuring
def _run(fn, sc: Scenario, repeat: int, single_calls: int) -> tuple[float, str]:
    if sc.method == "single":
        total, action = 0, None
        for _ in range(single_calls):
            r = bpf.test_run(fn, sc.frame, repeat=1)
            total += r.duration_ns
            action = r.retval
        return total / single_calls, verdict(sc.kind, action)
    r = bpf.test_run(fn, sc.frame, repeat=repeat)
    return float(r.duration_ns), verdict(sc.kind, r.retval)


def measure(
    repeat: int = 1_000_000,
    trials: int = 5,
    single_calls: int = SINGLE_CALLS,
    directory: Path = BPF_DIR,
    only: list | None = None,
    progress: bool = False,
):
    """Every XDP and tc entry point of every bpf/*.c (or the sources named in ONLY),
    measured TRIALS times. Returns a DataFrame: source, program, kind, scenario, method,
    verdict, expected, trial, ns_per_pkt (NaN, with the reason in `note`, for programs
    that BPF_PROG_TEST_RUN cannot run)."""
    import pandas as pd

    from labkit.progress import bar as progress_bar

    for name, value, low in (("repeat", repeat, 1), ("trials", trials, 1), ("single_calls", single_calls, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} {value!r}: a whole number >= {low}")
    found = sources(directory)
    if only:
        missing = [s for s in only if s not in found]
        if missing:
            raise InputError(f"no eBPF source {missing} in {directory}: sources are {sorted(found)}")
        found = {s: e for s, e in found.items() if s in only}
    frame = udp_frame()
    rows, plan = [], []
    with ExitStack() as stack:
        for source, entries in found.items():
            if not entries:
                none = Scenario(source, "-", "-", "no XDP or tc entry point", b"")
                rows.append(_row(none, note="not an XDP or tc program (BPF_PROG_TEST_RUN does not apply)"))
                continue
            try:
                setup = SETUPS.get(source)
                pairs = setup(stack, frame) if setup else _default(stack, source, entries, frame)
            except Exception as exc:  # a program that does not load is reported, not fatal
                note = f"{type(exc).__name__}: {exc}"
                rows += [_row(Scenario(source, name, kind, "could not load", b""), note=note) for name, kind in entries]
                continue
            covered = {sc.program for _, sc in pairs}
            prog = pairs[0][0]
            pairs += [
                (prog, Scenario(source, n, k, "as loaded (no set-up)", frame)) for n, k in entries if n not in covered
            ]
            plan += pairs
        if any(sc.method == "single" for _, sc in plan):
            plan += _single_baselines(plan)
        bar = progress_bar(trials * len(plan), "program costs", progress, unit="run")
        for trial in range(trials):
            for prog, sc in plan:  # interleaved: drift hits every program alike
                try:
                    ns, v = _run(prog.function(sc.program, sc.kind), sc, repeat, single_calls)
                    rows.append(_row(sc, trial, ns, v))
                except Exception as exc:
                    rows.append(_row(sc, trial, note=f"{type(exc).__name__}: {exc}"))
                bar.update(1)
        bar.close()
    return pd.DataFrame(rows)


def _row(sc: Scenario, trial=None, ns=None, v=None, note: str = "") -> dict:
    if not note and sc.expect and v != sc.expect:
        note = f"returned {v}, expected {sc.expect}: the scenario did not take the working path"
    return {
        "source": sc.source,
        "program": sc.program,
        "kind": sc.kind,
        "scenario": sc.label,
        "method": sc.method,
        "verdict": v,
        "expected": sc.expect,
        "trial": trial,
        "ns_per_pkt": float(ns) if ns is not None else float("nan"),
        "note": note,
    }


def summary(costs):
    """One row per program and scenario: mean, min, max ns per packet, verdict, notes."""
    import pandas as pd

    if costs is None or len(costs) == 0:
        return pd.DataFrame(
            columns=["program", "scenario", "kind", "method", "verdict", "mean", "min", "max", "trials", "note"]
        )
    rows = []
    for (source, program, scenario), g in costs.groupby(["source", "program", "scenario"], sort=False):
        v = g["ns_per_pkt"].dropna()
        notes = sorted({n for n in g["note"] if n})
        rows.append(
            {
                "program": f"{source}:{program}",
                "scenario": scenario,
                "kind": g["kind"].iloc[0],
                "method": g["method"].iloc[0],
                "verdict": ", ".join(sorted({str(x) for x in g["verdict"].dropna()})),
                "mean": v.mean() if len(v) else float("nan"),
                "min": v.min() if len(v) else float("nan"),
                "max": v.max() if len(v) else float("nan"),
                "trials": len(v),
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows)


def tidy(costs):
    """The costs in the plots' tidy shape: `variant` (program, scenario), `value` (ns)."""
    t = costs.dropna(subset=["ns_per_pkt"]).copy()
    single = t["method"] == "single"
    t["variant"] = t["source"] + ":" + t["program"] + single.map({True: " (single runs)", False: ""})
    t["value"] = t["ns_per_pkt"]
    return t


def save(costs, params: dict, data_dir: Path | None = None) -> Path:
    """Write the costs as a run of the `program_costs` experiment in data/ (tidy rows,
    measure `prog_ns_per_pkt`), so runs from other machines and commits compare."""
    from labkit import results

    rs = results.ResultSet("program_costs", params, data_dir=data_dir)
    for _, r in tidy(costs).iterrows():
        flags = ["unexpected-verdict"] if r["note"] else []
        rs.add(
            r["variant"],
            int(r["trial"]),
            64,
            {"prog_ns_per_pkt": (r["ns_per_pkt"], "ns/packet")},
            flags,
            scenario=r["scenario"],
            method=r["method"],
            verdict=r["verdict"],
        )
    for _, r in costs[costs["ns_per_pkt"].isna()].drop_duplicates(["source", "program"]).iterrows():
        rs.caveat(f"{r['source']}:{r['program']} not measured: {r['note']}")
    if (costs["method"] == "single").any():
        rs.caveat(
            "programs that rewrite the frame they run on (nat.c) were measured one run per system call "
            "(method=single), which adds the kernel's timer reads to each value; compare them with the bare "
            "program measured the same way"
        )
    return rs.save(extra={"kind": "BPF_PROG_TEST_RUN"})
