"""Latency in 01-xdp-drop for real: probes pass a drop variant's hook on the receiver, are
forwarded to a sink host that keeps every delay, with no load and under a flood the
variant drops at a fraction of its PDR; an HDR histogram per point in the rows;
percentiles ordered, probes counted at the sink, spread over trials; bad latency
parameters refused before the kernel is touched; nothing left behind."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import needs_root

from labkit import cleanup, results
from labkit.errors import InputError
from labkit.experiments import xdp_drop, xdp_drop_latency
from labkit.measure import hdr
from labkit.testbed import runs

LATENCY_HOSTS = ("-lsnd", "-lrcv", "-lsink")


def _latency_namespaces() -> set:
    return {n for n in cleanup.labkit_namespaces() if n.endswith(LATENCY_HOSTS)}


@needs_root
def test_probes_pass_three_drop_variants_with_and_without_a_flood(tmp_path):
    variants = ["iptables_raw", "xdp_generic", "xdp_native"]  # a rule, GRO for the probes, the native filter
    p = xdp_drop.Params(
        sizes=[64], trials=2, count=20_000, variants=variants, latency_loads=[0.5], latency_probes=100, progress=False
    ).validate()
    # the experiment's own PDR search gives the rate the flood is a fraction of (its NDR rows do not)
    search = pd.DataFrame(
        {
            "variant": variants * 2,
            "measure": ["pdr_pps"] * 3 + ["ndr_pps"] * 3,
            "value": [200_000.0] * 3 + [1e3] * 3,
            "threshold": [0.005] * 3 + [0.0] * 3,
        }
    )
    rs = results.ResultSet(xdp_drop.EXPERIMENT, {}, data_dir=tmp_path)
    before = _latency_namespaces()
    cdf = xdp_drop_latency.measure_all(p, rs, search)
    # nothing of the latency testbed is left (its namespaces carry the host names lsnd, lrcv, lsink)
    assert not [n for n in _latency_namespaces() - before if n[:6] not in runs.live_prefixes()]
    t = rs.table
    lat = t[t["kind"] == "latency"]
    assert set(lat["variant"]) == set(variants)
    pdr = lat[lat["measure"] == "pdr_pps"]
    assert len(pdr) == 6 and (pdr["value"] == 200_000.0).all()  # taken from the search, not searched again
    assert (lat["measure"] == "ndr_pps").sum() == 0
    got = lat[lat["measure"] == "lat_probes"]
    assert len(got) == len(variants) * 2 * 2  # variant x trial x (no load, 50%)
    assert (got["value"] > 0).all(), got  # probes reached the sink past every variant's hook
    sent = lat[lat["measure"] == "lat_probes_sent"]
    assert (sent["value"] == 100).all()
    kept = lat[lat["measure"] == hdr.MEASURE]  # every point's histogram: as many probes as the sink counted
    assert [hdr.histogram(r).get_total_count() for _, r in kept.iterrows()] == list(got["value"].astype(int))
    loaded = lat[(lat["measure"] == "lat_load_pps") & (lat[xdp_drop_latency.LOAD] == 0.5)]
    assert (loaded["value"] > 20_000).all()  # the flood ran beside the probes (its target: 100000 pps)
    summary = xdp_drop_latency.summary(t)
    assert set(summary["variant"]) == set(variants) and set(summary[xdp_drop_latency.LOAD]) == {0.0, 0.5}
    for _, r in summary.iterrows():
        assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"], r.to_dict()
        assert r["p50_us_min"] <= r["p50_us"] <= r["p50_us_max"]  # spread over the two trials
        assert 0 < r["p50_us_all"] <= r["p99_us_all"] and r["load"] in ("no load", "50% PDR")
    cdf = pd.DataFrame(cdf)
    assert set(cdf["variant"]) == set(variants) and cdf["fraction"].max() == pytest.approx(1.0)
    text = xdp_drop_latency.interpret(summary)
    assert "with no flood" in text and "at 50% of its own PDR" in text and "50% PDR" in text.splitlines()[-1]
    assert xdp_drop_latency.table(summary)["PDR Mpps"].tolist() == [0.2] * 6
    assert any("GRO" in c and "xdp_generic" in c for c in rs.caveats)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(latency_loads=[1.5]), "latency loads"),
        (dict(latency_loads=["half"]), "latency loads"),
        (dict(latency_probes=5), "10 .. 65536 per point"),
        (dict(latency_probe_rate=0.0), "probe rate"),
        (dict(latency_probe_rate=1e6), "probe rate"),
    ],
)
def test_bad_latency_parameters_are_refused_before_the_kernel_is_touched(params, message):
    before = set(cleanup.labkit_namespaces())
    with pytest.raises(InputError, match=message):
        xdp_drop.run(smoke=True, **params)
    assert not set(cleanup.labkit_namespaces()) - before


def test_latency_is_said_to_be_left_out_where_it_cannot_run():
    assert xdp_drop_latency.not_measured(xdp_drop.Params()) is None
    assert xdp_drop_latency.not_measured(xdp_drop.Params(latency=False)) is None
    assert "real interfaces" in xdp_drop_latency.not_measured(xdp_drop.Params(sender_if="a", receiver_if="b"))
    assert "across hosts" in xdp_drop_latency.not_measured(xdp_drop.Params(inventory="x.yml"))


def test_smoke_clamps_latency():
    p = xdp_drop.Params(smoke=True).validate()
    assert p.latency_loads == [0.1] and p.latency_probes == 200
    assert xdp_drop.Params().latency_loads == [0.1, 0.5, 0.9]  # CSIT's loads: 10, 50 and 90% of the PDR
