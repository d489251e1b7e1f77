"""What `make bench` prints about generators and receivers, from hand-built tables in its
format: a generator-limited receiver gets no ratio of rates; ratios use medians."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from labkit.bench import generators as bench


def _receivers(xdp_got, ipt_got, sent=2_000_000):
    rows = []
    for t in range(3):
        offered = SimpleNamespace(notes=[], pps=float(sent), seconds=1.0, packets=sent)
        rows += bench._receiver_rows("xdp_loop", "xdp_drop_native", t, offered, xdp_got, 0.25)
        rows += bench._receiver_rows("xdp_loop", "iptables_raw_drop", t, offered, ipt_got, 1.2)
    return pd.DataFrame(rows)


def test_a_receiver_that_kept_up_is_generator_limited_and_gets_no_rate_ratio():
    out = bench.receiver_lines(_receivers(2_000_000, 1_200_000))
    assert "generator-limited" in out[0] and "lost 40%" in out[1]
    assert "no ratio of rates (xdp_drop_native generator-limited: lost nothing)" in out[2]
    assert out[3].endswith("0.12x (goal <= 0.25)")  # 125 ns against 1000 ns


def test_two_saturated_receivers_get_a_ratio_of_rates():
    out = bench.receiver_lines(_receivers(1_800_000, 600_000))
    assert "3.00x the rate (both receivers saturated)" in out[2]


def test_one_line_per_generator_against_trafgen():
    rows = []
    for t, (loop, tg) in enumerate([(2.0e6, 0.4e6), (1.6e6, 0.5e6), (1.8e6, 0.45e6)]):
        rows.append(bench._row("generators", "xdp_loop", "xdp_drop_native", t, "received_pps", loop, "pps"))
        rows.append(bench._row("generators", "trafgen", "xdp_drop_native", t, "received_pps", tg, "pps"))
    rows.append(
        bench._row("generators", "pktgen", "xdp_drop_native", 0, "unavailable", float("nan"), "", "no /proc/net/pktgen")
    )
    out = bench.lines(pd.DataFrame(rows))
    assert out[0].startswith("generator xdp_loop: 1.80 Mpps into xdp drop, 4.00x trafgen")
    assert out[1].startswith("generator trafgen: 0.45 Mpps into xdp drop, 1.00x trafgen")
    assert out[2] == "generator pktgen: unavailable: no /proc/net/pktgen"
