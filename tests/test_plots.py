"""Plots agree with the tables beside them: every bar, whisker and offered tick is the
statistic of exactly the rows it describes. The tables are tidy tables in the results
format with every part of a drop run (trials, sweep, search, CPU at fixed loads), each
part with values unlike the others, so a plot that mixed parts would show it."""

import numpy as np
import pandas as pd
import pytest

from labkit import results
from labkit.errors import InputError
from labkit.experiments import xdp_drop
from labkit.reporting import plots

VARIANTS = ["stack", "iptables_raw", "xdp_native"]


def _row(kind, variant, trial, size, measure, value, unit, **extra):
    return {
        "experiment": "xdp_drop",
        "run_id": "20260101T000000Z-lk0000",
        "trial": trial,
        "variant": variant,
        "size": size,
        "measure": measure,
        "value": float(value),
        "unit": unit,
        "flags": extra.pop("flags", ""),
        "kind": kind,
        **extra,
    }


def drop_table() -> pd.DataFrame:
    """Three trials per variant and size; a sweep, searches and fixed loads whose offered
    rates and CPU times are far from the trials' (as in a real run: sweeps offer less)."""
    rng = np.random.default_rng(7)
    rows = []
    for i, v in enumerate(VARIANTS):
        for size in (64, 1500):
            for trial in range(3):
                offered = 6.0e6 + 0.1e6 * i + rng.uniform(-0.2e6, 0.2e6)
                processed = offered * (0.3 + 0.3 * i)
                rows += [
                    _row("trial", v, trial, size, "offered_pps", offered, "pps"),
                    _row(
                        "trial",
                        v,
                        trial,
                        size,
                        "processed_pps",
                        processed,
                        "pps",
                        flags="generator-limited" if i == 2 else "",
                    ),
                    _row("trial", v, trial, size, "loss_ratio", 1 - processed / offered, "ratio"),
                    _row("trial", v, trial, size, "cpu_ns_per_pkt", 400 + 100 * i + rng.uniform(-50, 50), "ns/packet"),
                    _row("trial", v, trial, size, "processed_mbps", processed * size * 8 / 1e6, "Mbit/s"),
                ]
        for step, target in enumerate([0.5e6, 2.0e6, None]):
            for trial in range(2):
                offered = (target or 4.25e6) * rng.uniform(0.9, 1.0)
                got = min(offered, (1.0 + i) * 1e6) * rng.uniform(0.95, 1.0)
                extra = {"target_pps": target, "step": step}
                rows += [
                    _row("sweep", v, trial, 64, "offered_pps", offered, "pps", **extra),
                    _row("sweep", v, trial, 64, "received_pps", got, "pps", **extra),
                    _row("sweep", v, trial, 64, "cpu_ns_per_pkt", 2450 + rng.uniform(-100, 5000), "ns/packet", **extra),
                ]
        for threshold, name in ((0.0, "ndr_pps"), (0.005, "pdr_pps")):
            for trial in range(3):
                rows.append(
                    _row(
                        "search",
                        v,
                        trial,
                        64,
                        name,
                        (0.5 + i) * 1e6 * (1 + threshold * 40) + trial**2 * 1e5,
                        "pps",
                        threshold=threshold,
                        generator_limited=(i == 2 and trial == 0),
                    )
                )
        for load in (0.5e6, 1e6):
            for trial in range(2):
                rows += [
                    _row(
                        "cpu_at_load",
                        v,
                        trial,
                        64,
                        "net_rx_cores",
                        0.05 * (1 + i) * load / 1e6 + 0.01 * trial,
                        "cores",
                        target_pps=load,
                    ),
                    _row("cpu_at_load", v, trial, 64, "offered_pps", load, "pps", target_pps=load),
                ]
    return pd.DataFrame(rows)[results.COLUMNS + ["kind", "target_pps", "step", "threshold", "generator_limited"]]


def drawn_bars(ax) -> dict:
    """{(variant, tick label): (height, whisker low, whisker high, offered tick or None)}."""
    labels = {round(t, 6): lab.get_text() for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())}
    ticks = {}
    for coll in ax.collections:  # the offered ticks: the big markers
        sizes = coll.get_sizes() if hasattr(coll, "get_sizes") else []
        if len(sizes) and sizes[0] >= 100:
            for x, y in coll.get_offsets():
                if not np.ma.is_masked(y):
                    ticks[round(float(x), 6)] = float(y)
    out = {}
    for c in plots.bars_of(ax):
        segments = c.errorbar.lines[2][0].get_segments() if c.errorbar else [None] * len(c.patches)
        for patch, seg in zip(c.patches, segments):
            x = patch.get_x() + patch.get_width() / 2
            group = min(labels, key=lambda t: abs(t - x))
            lo, hi = (seg[0][1], seg[1][1]) if seg is not None else (None, None)
            out[(c.get_label(), labels[group])] = (patch.get_height(), lo, hi, ticks.get(round(x, 6)))
    return out


def expected(rows, measure, div, stat="mean"):
    t = rows[rows["measure"] == measure]
    return {
        (v, s): (getattr(g["value"], stat)() / div, g["value"].min() / div, g["value"].max() / div)
        for (v, s), g in t.groupby(["variant", "size"])
    }


def test_throughput_bars_and_offered_ticks_are_the_trial_rows():
    table = drop_table()
    trials = table[table["kind"] == "trial"]
    bars = drawn_bars(plots.throughput(trials))
    want = expected(trials, "processed_pps", 1e6)
    offered = expected(trials, "offered_pps", 1e6)
    assert len(bars) == len(want) == 6
    for (v, size), (mean, lo, hi) in want.items():
        height, wlo, whi, tick = bars[(v, f"{int(size)} B")]
        assert height == pytest.approx(mean) and wlo == pytest.approx(lo) and whi == pytest.approx(hi), (v, size)
        assert tick == pytest.approx(offered[(v, size)][0]), (v, size)
    # and the experiment's own table says the same
    head = xdp_drop.headline(table).set_index(["variant", "size"])
    for (v, size), (height, _, _, tick) in bars.items():
        row = head.loc[(v, int(size.split()[0]))]
        assert row["processed Mpps"] == pytest.approx(height, abs=6e-4)
        assert row["offered Mpps"] == pytest.approx(tick, abs=6e-4)


def test_cpu_bars_are_the_trial_rows_and_agree_with_the_headline():
    table = drop_table()
    bars = drawn_bars(plots.cpu_per_packet(table[table["kind"] == "trial"]))
    head = xdp_drop.headline(table).set_index(["variant", "size"])
    want = expected(table[table["kind"] == "trial"], "cpu_ns_per_pkt", 1)
    for (v, size), (mean, lo, hi) in want.items():
        height, wlo, whi, tick = bars[(v, f"{int(size)} B")]
        assert (height, wlo, whi) == pytest.approx((mean, lo, hi)) and tick is None
        assert head.loc[(v, size), "CPU ns/pkt"] == pytest.approx(height, abs=0.51)
        assert height < 1000  # the sweep's thousands of ns are not in it


def test_a_bar_plot_refuses_rows_of_several_parts():
    with pytest.raises(InputError, match="several parts.*sweep.*trial|several parts.*trial"):
        plots.throughput(drop_table())
    with pytest.raises(InputError, match="several parts"):
        plots.cpu_per_packet(drop_table())


def test_load_curve_points_are_the_sweep_means():
    table = drop_table()
    sweep = table[table["kind"] == "sweep"]
    ax = plots.load_curve(sweep)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    stars = [
        tuple(xy)
        for c in ax.collections
        if hasattr(c, "get_offsets")
        for xy in c.get_offsets()
        if len(c.get_offsets()) == 1
    ]
    for v in VARIANTS:
        g = sweep[sweep["variant"] == v]
        want = []
        for target, p in g.assign(t=g["target_pps"].fillna(-1)).groupby("t"):
            received = p[p["measure"] == "received_pps"]["value"].mean()
            if target >= 0:
                want.append((target / 1e6, received / 1e6))
            else:  # the full-speed point, at the rate reached
                offered = p[p["measure"] == "offered_pps"]["value"].mean()
                assert any(np.allclose(s, (offered / 1e6, received / 1e6)) for s in stars), v
        got = sorted(zip(lines[v].get_xdata(), lines[v].get_ydata()))
        assert np.allclose(got, sorted(want)), v
    assert "received = offered" in lines


def test_search_bars_are_the_search_table_medians():
    table = drop_table()
    search = table[table["kind"] == "search"]
    bars = drawn_bars(plots.search_rates(search))
    st = xdp_drop.search_table(search).set_index(["variant", "measure"])
    names = {"NDR (no loss)": "ndr_pps", "PDR (loss ≤ 0.5%)": "pdr_pps"}
    assert {g for _, g in bars} == set(names)
    for (v, group), (height, lo, hi, _) in bars.items():
        row = st.loc[(v, names[group])]
        assert (height, lo, hi) == pytest.approx((row["Mpps (median)"], row["min"], row["max"]))
    limited = [c.get_label() for c in plots.bars_of(plots.search_rates(search)) for p in c.patches if p.get_hatch()]
    assert limited and set(limited) == {"xdp_native"}


def test_cpu_at_fixed_loads_bars_are_those_rows():
    table = drop_table()
    rows = table[table["kind"] == "cpu_at_load"]
    bars = drawn_bars(plots.at_loads(rows))
    t = rows[rows["measure"] == "net_rx_cores"]
    for (v, load), g in t.groupby(["variant", "target_pps"]):
        height, lo, hi, _ = bars[(v, f"{load / 1e6:g} Mpps")]
        assert (height, lo, hi) == pytest.approx((g["value"].mean(), g["value"].min(), g["value"].max()))
