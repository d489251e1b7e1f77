"""The NAT experiment's sweep (UDP at several frame sizes and flow counts) and its TCP
trial with many concurrent connections: real runs on namespace testbeds, and bad input
refused before anything is built."""

from __future__ import annotations

import subprocess

import pytest
from conftest import own_leftovers

from labkit.errors import InputError
from labkit.experiments import nat as experiment
from labkit.experiments.nat import sweep, sweep_run, tcp

#: the parts of a run the sweep tests leave out, so they take seconds
QUICK = dict(smoke=True, checks=False, prog_stats=False, new_flows=0, progress=False)


def _values(table, measure: str):
    """{(variant, size, flows): mean value} of MEASURE in TABLE."""
    t = table[table["measure"] == measure]
    return t.groupby(["variant", "size", "flows"])["value"].mean().to_dict()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One run through tc_nat, xdp_nat and iptables: two sizes, two flow counts (one beyond
    a byte of the source port, and beyond a 200-port SNAT range), TCP with 4 connections."""
    r = experiment.run(
        data_dir=tmp_path_factory.mktemp("data"),
        variants=["tc_nat", "xdp_nat", "iptables"],
        udp_sizes=[64, 512],
        flow_counts=[1, 300],
        port_range=[20000, 20199],
        tcp_streams=4,
        **QUICK,
    )
    return r


def test_sweep_rows_have_their_sizes_flows_and_rates(swept):
    rows = sweep.rows(swept.table)
    pps = _values(rows, "processed_pps")
    want = {(v, s, f) for v in ("tc_nat", "xdp_nat", "iptables") for s, f in ((64, 16), (512, 16), (64, 1), (64, 300))}
    assert set(pps) == want
    assert all(v > 0 for v in pps.values()), pps
    offered = _values(rows, "offered_pps")
    cpu = _values(rows, "cpu_ns_per_pkt")
    assert all(offered[k] > 0 and cpu[k] > 0 for k in want)
    # the goal point's rows are apart: the headline and the goal sentences read kind 'udp' only
    assert set(swept.part("udp")["flows"]) == {16} and set(swept.part("udp")["size"]) == {64}
    assert "Sweep: xdp_nat against iptables by frame size: 64 B" in swept.interpretation


def test_flows_beyond_the_port_range_are_refused_by_every_nat_alike(swept):
    rows = sweep.rows(swept.table)
    setup, refused = _values(rows, "flows_set_up"), _values(rows, "refused_pkts")
    for v in ("tc_nat", "xdp_nat", "iptables"):
        assert setup[v, 64, 1] == 1 and setup[v, 64, 16] == 16 and refused[v, 64, 16] == 0
        # 300 flows, 200 ports: every NAT translates at most 200 and refuses the rest's packets
        assert 150 <= setup[v, 64, 300] <= 200, (v, setup[v, 64, 300])
        assert refused[v, 64, 300] > 0, v
    assert "Flows beyond the port range were refused" in swept.interpretation
    assert any("exceed the 200 ports" in c for c in swept.caveats)


def test_tcp_with_many_connections(swept):
    streams = swept.part("tcp_streams")
    mbps = streams[streams["measure"] == "tcp_mbps"].groupby("variant")["value"].mean()
    assert set(mbps.index) == {"tc_nat", "xdp_nat", "iptables"} and (mbps > 0).all()
    assert set(streams["flows"]) == {4}
    one = swept.part("tcp")
    assert set(one["flows"]) == {1}  # the one-stream trial stays as it was
    assert "TCP with 4 concurrent connections" in swept.interpretation


def test_nothing_of_the_sweep_remains(swept):
    prefix = swept.table["run_id"].iloc[0].rsplit("-", 1)[-1]
    assert prefix.startswith("lk") and own_leftovers(prefix) == []


def test_sweep_helpers_for_plots(swept):
    by_size, by_flows = sweep.by_size(swept.table), sweep.by_flows(swept.table)
    assert set(by_size["size"]) == {64, 512} and set(by_size["flows"]) == {16}
    assert set(by_flows["size"]) == {1, 16, 300}  # the flow count in the column plots group by
    assert sweep.flows_label(300) == "300 flows"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(udp_sizes=[64, 59]), "59"),
        (dict(udp_sizes=[64, 9000]), "9000"),
        (dict(udp_sizes=[64, 64]), "each at most once"),
        (dict(flow_counts=[0, 16]), "1..65536"),
        (dict(flow_counts=[70000]), "1..65536"),
        (dict(flow_counts=[1, 1024], generator="testpmd"), "at most 1 distinct source port"),
        (dict(new_flows=2000, generator="testpmd"), "new_flows 2000: the 'testpmd' generator sends at most 1"),
        (dict(flow_counts=[65536], sweep_count=10_000), "below the largest flow count"),
        (dict(sweep_count=10), "sweep_count"),
        (dict(sweep_trials=0), "sweep_trials"),
        (dict(tcp_streams=1), "tcp_streams"),
        (dict(tcp_streams=129), "2..128"),
        (dict(tcp_streams=-3), "tcp_streams"),
    ],
)
def test_bad_sweep_input_is_refused_before_any_namespace(kwargs, words, monkeypatch):
    def built(*a, **k):
        raise AssertionError("the testbed was touched before the input was checked")

    from labkit.experiments.nat import namespace_lab

    monkeypatch.setattr(namespace_lab, "NatLab", built)  # where the run builds its testbed and its NAT
    monkeypatch.setattr(namespace_lab, "Nat", built)
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    with pytest.raises(InputError, match=words):
        experiment.run(**{**QUICK, **kwargs})
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("\n") <= before.count(
        "\n"
    )  # (others may remove theirs meanwhile; none of ours appeared)


def test_the_error_names_what_to_do():
    with pytest.raises(InputError) as e:
        sweep.check([64], [4096], 10_000, 1, "testpmd")
    assert "every port: pktgen, trafgen, xdp" in str(e.value) and "keep flow_counts within it" in str(e.value)
    with pytest.raises(InputError) as e:
        tcp.check_streams(500)
    assert "iperf3" in str(e.value)


def test_conntrack_is_read_and_flushed_inside_a_running_event_loop():
    """As in a Jupyter kernel executing a cell: pyroute2's own loop must still run."""
    import asyncio

    from labkit.experiments.nat.testbed import SERVER, NatLab

    async def cell():
        with NatLab(1, "off") as lab, sweep_run._variant(lab, "iptables", None, (20000, 20099), "MASQUERADE"):
            lab.client(1).run(["ping", "-c", "1", "-W", "2", SERVER], check=False, timeout=10)
            seen = sweep_run._nat_counters(lab, "iptables", None)["flows_set_up"]
            sweep_run._forget_flows(lab, "iptables", None)
            return seen, sweep_run._nat_counters(lab, "iptables", None)["flows_set_up"]

    seen, after = asyncio.run(cell())
    assert seen >= 1 and after == 0


def test_runs_before_the_sweep_read_without_sweep_sentences():
    """A table of an earlier run (no sweep rows, no flows column) gives no sweep sentences."""
    import pandas as pd

    old = pd.DataFrame(
        [{"variant": "tc_nat", "kind": "udp", "measure": "processed_pps", "value": 1e5, "size": 64, "flags": ""}]
    )
    assert sweep.interpret(old) == "" and len(sweep.by_size(old)) == 0 and len(sweep.by_flows(old)) == 0


@pytest.mark.parametrize("xdp_routing_mbps, says", [(4800.0, True), (6600.0, False)])
def test_xdp_tcp_gap_is_explained_only_when_the_xdp_path_itself_is_slower(xdp_routing_mbps, says):
    """The sentence on TCP through the XDP path appears when xdp_routing (no NAT) carries
    less than 0.9x routing, and quotes both variants' own numbers."""
    import pandas as pd

    rows = []
    for v, mbps, ns in (
        ("routing", 6700.0, 1000.0),
        ("xdp_routing", xdp_routing_mbps, 1400.0),
        ("xdp_nat", 4500.0, 1460.0),
        ("iptables", 7200.0, 1050.0),
    ):
        for trial, f in enumerate((0.98, 1.02)):
            rows += [
                {
                    "variant": v,
                    "trial": trial,
                    "kind": "tcp_streams",
                    "flows": 32,
                    "size": 1514,
                    "flags": "",
                    "measure": "tcp_mbps",
                    "value": mbps * f,
                },
                {
                    "variant": v,
                    "trial": trial,
                    "kind": "tcp_streams",
                    "flows": 32,
                    "size": 1514,
                    "flags": "",
                    "measure": "tcp_net_rx_ns_per_kb",
                    "value": ns,
                },
            ]
    text = sweep.interpret(pd.DataFrame(rows))
    assert ("TCP through the XDP path is slower" in text) is says
    if says:
        assert f"xdp_routing {xdp_routing_mbps:.0f} Mbit/s vs routing 6700" in text and "+60 ns" in text


def test_the_goal_point_is_the_runs_own_not_a_guess():
    """With one size and three flow counts every flow count is as frequent as the other:
    by_size still takes the goal trial's flow count (16), by_flows its size."""
    import pandas as pd

    def row(kind, size, flows):
        return {
            "variant": "tc_nat",
            "trial": 0,
            "kind": kind,
            "size": size,
            "flows": flows,
            "flags": "",
            "measure": "processed_pps",
            "value": 1e5,
        }

    table = pd.DataFrame([row("udp", 64, 16)] + [row(sweep.KIND, 64, n) for n in (1, 16, 1024)])
    assert set(sweep.by_size(table)["flows"]) == {16}
    assert set(sweep.by_flows(table)["size"]) == {1, 16, 1024}
    assert set(sweep.by_size(table.assign(flows=table["flows"].where(table["kind"] != "udp", 1)))["flows"]) == {1}
