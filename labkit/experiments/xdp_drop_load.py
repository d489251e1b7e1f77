"""The drop experiment's optional parts on the receiver it holds for the run (where the run
is local): the offered-load sweep, the NDR/PDR search and CPU at fixed loads
(`labkit.measure.loadsweep`), NDR/PDR by MLRsearch beside it (`xdp_drop_mlr`), and the
programs' own cost by BPF_PROG_TEST_RUN. P is the experiment's `Params`."""

from __future__ import annotations

import time

from labkit import bpf, capabilities, packets, progress, results
from labkit.dataplanes.drop_filter import DropFilter
from labkit.experiments import xdp_drop_mlr as mlr_part
from labkit.experiments.xdp_drop_receiver import set_rule, using
from labkit.measure import loadsweep


def fastest_fed(table, size, variants) -> str:
    """The variant the generator reached its highest offered rate into, in this run's trials
    at SIZE: the receiver that slows the generator least, whatever the generator and its feed."""
    t = table[(table["kind"] == "trial") & (table["measure"] == "offered_pps") & (table["size"] == size)]
    rates = t.groupby("variant")["value"].mean().dropna()
    return rates.idxmax() if len(rates) else variants[-1]


def load_tests(p, gen, tspec, receiver, clock, rs) -> None:
    """The offered-load sweep (one common set of target rates for every variant, up to the
    generator's maximum into the receiver it reached its highest rate into in the trials),
    NDR/PDR search and CPU at fixed loads."""
    rows = []
    with using(receiver, fastest_fed(rs.table, tspec.size, p.variants)) as cnt:
        top = loadsweep.generator_trial(gen, tspec, cnt, seconds=p.point_s, clock=clock, settle_s=0.05)(
            None
        ).offered_pps
    rates = loadsweep.sweep_rates(top, p.sweep_steps) if p.sweep_steps else []
    for variant in progress.iterate(p.variants, "sweeps and searches", p.progress, unit="variant"):
        with using(receiver, variant) as processed:
            trial = loadsweep.generator_trial(gen, tspec, processed, seconds=p.point_s, clock=clock, settle_s=0.05)
            if rates:
                rows += [
                    dict(r, kind="sweep")
                    for r in loadsweep.sweep(trial, variant=variant, size=tspec.size, rates=rates, include_max=True)
                ]
                rows += [
                    dict(r, kind="sweep", step=len(rates))
                    for r in loadsweep.point_rows(trial(None), variant, tspec.size, trial=0)
                ]
            for threshold in p.loss_thresholds:
                t0 = time.monotonic()
                found = loadsweep.search(trial, loss_threshold=threshold, hi=top, resolution=0.05, max_iterations=8)
                took = mlr_part.binary_columns(found, time.monotonic() - t0)  # its bracket and time, as MLRsearch's
                rows += [
                    dict(r, kind="search", **c) for r, c in zip(found.rows(variant=variant, size=tspec.size), took)
                ]
            if p.mlr_loss_ratios:  # on the same receiver and trial, right after the binary search
                rows += mlr_part.search_rows(trial, top, p, variant, tspec.size)
            if p.cpu_loads:
                rows += [
                    dict(r, kind="cpu_at_load")
                    for r in loadsweep.cpu_at_loads(trial, p.cpu_loads, variant=variant, size=tspec.size)
                ]
    loadsweep.add_to(rs, rows)


def program_costs(filt: DropFilter | None, snd, rcv, p, rs: results.ResultSet, skipped: dict):
    """BPF_PROG_TEST_RUN cost per packet: the filter (with the experiment's rule, and with
    drop-all) next to a bare `return XDP_DROP`, measured now, in the same run; where this
    machine refuses BPF_PROG_TEST_RUN, the part goes into SKIPPED and the rest stands."""
    import pandas as pd

    if filt is None:  # the filter is on another host
        return pd.DataFrame(columns=["variant", "trial", "value"])
    refused = capabilities.probe("test_run")
    if p.cost_trials and not refused.ok:
        skipped["program costs"] = f"BPF_PROG_TEST_RUN refused here: {refused.reason}"
        rs.caveat(f"program costs were not measured: {skipped['program costs']}")
    if not p.cost_trials or not refused.ok:
        return pd.DataFrame(columns=["variant", "trial", "value"])
    frame = packets.build(
        packets.FrameSpec(snd.mac, rcv.mac, snd.address or "10.11.0.1", rcv.address or "10.11.0.2", size=64)
    )
    rows = []
    with bpf.load("xdp_minimal") as bare:
        progs = [
            ("xdp_drop_bare", bare.function("xdp_drop_bare"), None),
            (f"xdp_filter (rule: {p.rule})", filt.xdp_function(), p.rule),
        ]
        if p.rule != "all":
            progs.append(("xdp_filter (rule: all)", filt.xdp_function(), "all"))
        for trial in range(p.cost_trials):
            for name, fn, rule in progs:  # interleaved, so drift hits all alike
                if rule:
                    set_rule(filt, rule)
                res = bpf.test_run(fn, frame, repeat=p.cost_repeat)
                if res.action != "XDP_DROP":
                    raise AssertionError(f"{name} returned {res.action} on a UDP frame, expected XDP_DROP")
                rs.add(name, trial, 64, {"prog_ns_per_pkt": (res.duration_ns, "ns/packet")}, kind="test_run")
                rows.append({"variant": name, "trial": trial, "value": float(res.duration_ns)})
    set_rule(filt, p.rule)
    return pd.DataFrame(rows)
