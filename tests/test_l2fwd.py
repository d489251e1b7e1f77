"""The forwarding variants of the L2 forwarding experiment, for real: XDP redirect through a
devmap with l2fwd's MAC rewrite (checked on the received frames), the Linux bridge and tc
redirect forward; the experiment's smoke run and its notebook leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from labkit import bpf, cleanup, dpdk, ovs, traffic
from labkit.dataplanes import xdp_fwd
from labkit.errors import InputError
from labkit.experiments import l2fwd, l2fwd_dut

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")
N = 2000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _send(topo, to_receiver: bool = False):
    """N frames from the sender; addressed to the DUT's port (so only a MAC rewrite makes them
    the receiver's), or to the receiver's MAC (what a bridge forwards)."""
    snd, rcv, d0 = topo.iface("snd"), topo.iface("rcv"), topo.iface("dut", "snd")
    spec = traffic.TrafficSpec.between(snd, rcv if to_receiver else d0, count=N, size=64, rate_pps=100_000)
    spec.dst_ip = rcv.address
    return traffic.generator("trafgen", snd).send(spec)


def test_xdp_redirect_forwards_with_mac_rewrite(fwd_topo, capture):
    rcv, d0, d1 = fwd_topo.iface("rcv"), fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    cap = capture(rcv)
    # the receiver needs an XDP program for XDP_REDIRECT into its peer to deliver
    with (
        bpf.load("xdp_minimal") as bare,
        bpf.attach_xdp(rcv, bare.function("xdp_pass_bare"), "native"),
        xdp_fwd.XdpForwarder([d0, d1]) as fwd,
        fwd.attach_xdp("native"),
    ):
        assert bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED")
        offered = _send(fwd_topo)
        frames = cap.udp_from(cap.frames(N), fwd_topo.iface("snd"))
        counters = fwd.counters()
    assert offered.packets == N
    assert counters["redirected"] >= N and counters["refused"] == 0  # (plus any stray frame)
    assert len(frames) == N, f"{len(frames)} of {N} frames arrived"
    assert all(f[0:6] == bytes.fromhex("020000000001") for f in frames)
    assert all(f[6:12] == bytes.fromhex(d1.mac.replace(":", "")) for f in frames)
    assert not bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED") and not bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED")


@pytest.mark.parametrize("name", ["bridge", "tc_redirect"])
def test_kernel_variants_forward(fwd_topo, name):
    rcv = fwd_topo.iface("rcv")
    ports = [fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")]
    with l2fwd_dut.receiver_sink(rcv), l2fwd_dut.variant(name, ports, l2fwd._params(l2fwd.Params(variants=[name]))):
        r0 = rcv.stats()["rx_packets"]
        offered = _send(fwd_topo, to_receiver=True)
        time.sleep(0.2)
        got = rcv.stats()["rx_packets"] - r0
    assert offered.packets == N and got >= N * 0.99, f"{name}: {got} of {N} arrived"
    with fwd_topo.host("dut").ipr() as ipr:
        assert not [
            l
            for l in ipr.get_links()
            if l.get_attr("IFLA_LINKINFO") and l.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "bridge"
        ]


@pytest.mark.parametrize("name", ["dpdk_l2fwd_afxdp", "ovs_afxdp", "ovs"])
def test_user_space_variants_forward(fwd_topo, name):
    if name in l2fwd.OVS_VARIANTS and not ovs.status()[0]:
        pytest.skip(ovs.status()[1])
    rcv, dut = fwd_topo.iface("rcv"), fwd_topo.host("dut")
    snd, d0 = fwd_topo.iface("snd"), fwd_topo.iface("dut", "snd")
    p = l2fwd.Params(variants=[name])
    with bpf.load("xdp_minimal") as bare, bpf.attach_xdp(rcv, bare.function("xdp_drop_bare"), "native"):
        with l2fwd_dut.variant(name, [d0, fwd_topo.iface("dut", "rcv")], l2fwd._params(p)) as setup:
            c0 = setup.own_counters()
            r0 = rcv.stats()["rx_packets"]
            spec = traffic.TrafficSpec.between(snd, d0, count=N, size=64, rate_pps=20_000)
            spec.dst_ip = rcv.address
            offered = traffic.generator("trafgen", snd).send(spec)
            time.sleep(0.3)
            got = rcv.stats()["rx_packets"] - r0
            c1 = setup.own_counters()
            notes = dict(setup.notes)
            assert setup.own_cpu() > 0
    assert offered.packets == N
    if name == "ovs":  # system ports lose frames between polls (see the variant's caveat)
        assert 0 < got <= N and c1["ovs_tx_port1"] - c0["ovs_tx_port1"] >= got
    else:
        assert got >= N * 0.99, f"{name}: {got} of {N} arrived"
    if name == "dpdk_l2fwd_afxdp":
        assert set(notes["af_xdp_socket_mode"].values()) == {"copy"} and notes["ring_size"] == p.dpdk_afxdp_ring
        assert c1["l2fwd_tx_port1"] - c0["l2fwd_tx_port1"] == got
    assert dpdk.xsk_sockets(dut) == 0 and not bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED")
    assert not ovs.switch_dirs(fwd_topo.run.prefix) and not dpdk.dpdk_processes(fwd_topo.run.prefix)


def test_missing_ovs_leaves_the_others_running(monkeypatch):
    monkeypatch.setattr(ovs, "SCHEMA", ovs.SCHEMA.with_name("no-such-schema"))  # a broken installation
    r = l2fwd.run(smoke=True, variants=["xdp_redirect", "ovs_afxdp"], baseline=False, latency=False)
    fwd = r.table[(r.table["measure"] == "processed_pkts")]
    assert set(fwd["variant"]) == {"xdp_redirect"} and (fwd["value"] > 0).all()
    assert any(c.startswith("not run: ") and "openvswitch" in c and c.endswith("[ovs_afxdp]") for c in r.caveats), (
        r.caveats
    )


def test_params_refused_before_kernel():
    with pytest.raises(InputError, match="variants"):
        l2fwd.run(variants=["dpdk", "bridge"])
    with pytest.raises(InputError, match="Not enough cores"):
        l2fwd.run(variants=["dpdk_l2fwd"], dpdk_queues_per_lcore=1)
    with pytest.raises(InputError, match="xdp_mode"):
        l2fwd.run(xdp_mode="fast")
    with pytest.raises(InputError, match="ovs_xdp_mode"):
        l2fwd.run(ovs_xdp_mode="native-with-zerocopy")
    with pytest.raises(InputError, match="fractions of the PDR"):
        l2fwd.run(latency_loads=[0.5, 2])
    with pytest.raises(InputError, match="ring size"):
        l2fwd.run(dpdk_afxdp_ring=1000)
    with pytest.raises(InputError, match="busy_budget"):
        l2fwd.run(dpdk_afxdp_busy_budget=-1)


def test_smoke_run_forwards_and_leaves_nothing(tmp_path):
    r = l2fwd.run(smoke=True)
    t = r.table
    fwd = t[(t["measure"] == "processed_pkts") & (t["variant"] != l2fwd.BASELINE)]
    assert set(fwd["variant"]) == set(l2fwd.VARIANTS)
    assert (fwd["value"] > 0).all(), fwd
    assert (r.run_dir / "results.csv").exists() and (r.run_dir / "metadata.json").exists()
    assert "dpdk_l2fwd" in r.interpretation and "busy polling" in r.interpretation
    assert r.resources.set_index("variant").loc["dpdk_l2fwd", "dpdk_idle_busy_cores"] > 0.3
    # latency: every forwarder probed with no load; the L2 table has a row per variant
    lat = r.latency
    assert set(lat[lat["load_fraction"] == 0]["variant"]) == set(l2fwd.VARIANTS)
    assert (lat[lat["load_fraction"] == 0]["probes"] > 0).all() and "One-way latency" in r.interpretation
    assert {"forwarded_mpps", "idle_busy_cores", "own_idle_busy_cores", "rss_mb", "p50_us (no load)"} <= set(
        r.overview.columns
    )
    assert set(r.latency_cdf["variant"]) == set(l2fwd.VARIANTS)
    assert "over AF_XDP forwarded" in r.interpretation
    assert any(c.startswith("net_af_xdp sockets ran in copy mode on af_xdp:") for c in r.caveats), r.caveats
    prefix = r.run_dir.name.rsplit("-", 1)[1]
    assert not dpdk.dpdk_processes(prefix) and not dpdk.runtime_dirs(prefix)
    assert not ovs.switch_dirs(prefix), "no Open vSwitch of the run is left"
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]


def test_notebook_runs_headless_in_smoke_mode(tmp_path):
    pytest.importorskip("papermill")
    nb = os.path.join(ROOT, "notebooks", "02-l2-forwarding.ipynb")
    out = tmp_path / "out.ipynb"
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            nb,
            str(out),
            "-p",
            "smoke",
            "True",
            "-k",
            "labkit",
            "--cwd",
            os.path.join(ROOT, "notebooks"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    text = out.read_text()
    assert "forwarded the most" in text
    m = re.search(r"l2fwd/\d{8}T\d{6}Z-(lk[0-9a-f]{4})", text)
    assert m, "the notebook shows where its data went"
    prefix = m.group(1)
    assert not dpdk.dpdk_processes(prefix), "no DPDK process of the notebook remains"
    assert not dpdk.runtime_dirs(prefix), "nothing left in DPDK's runtime directory"
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]


def test_notebook_runs_with_live_frames_refused_and_only_latency_on(tmp_path, monkeypatch):
    """Live frames refused (LABKIT_REFUSE) and the optional parts off but latency (no
    baseline sink, so no DUT CPU per packet; no idle window): the notebook runs to the end,
    says what was left out, and records the generator, the feed and the probes' backend."""
    from labkit import experiments, results
    from labkit.reporting import batch

    monkeypatch.setenv("LABKIT_REFUSE", "live_frames")
    data = tmp_path / "data"
    params = {
        "smoke": True,
        "variants": ["xdp_redirect", "bridge"],
        "baseline": False,
        "idle_s": 0.0,
        "progress": False,
    }
    run = batch.execute(
        batch.notebooks(["02-l2-forwarding"])[0], params, out_dir=tmp_path, data_dir=data, progress=False
    )
    assert run.ok, run.error
    r = results.load_run(results.list_runs("l2fwd", data)[0])
    meta = r.metadata
    assert meta["facilities"]["probes"]["live_frames"]["ok"] is False
    assert set(meta["skipped_parts"]) == {"idle cost", "DUT CPU per packet"}
    assert not (r.table["measure"] == "dut_cpu_ns_per_pkt").any() and "idle" not in set(r.table["kind"])
    skb = meta["generator"] not in ("xdp", "xdp_loop")  # the backends that put XDP frames into the veth
    assert meta["feed"]["receiver_got"] == (experiments.FEED_SKB if skb else experiments.FEED_XDP), meta["feed"]
    lat = r.table[(r.table["kind"] == "latency") & (r.table["measure"] == "lat_probes")]
    assert set(lat["variant"]) == set(params["variants"]) and (lat["value"] > 0).all()
    html = run.html.read_text()
    for said in (
        "no DUT CPU per packet in this run",
        "no idle cost in this run",
        "forwarded the most",
        f"Fed by the {meta['generator']} generator",
        "latency probes: ",
    ):
        assert said in html, said
    assert (
        "xdp_redirect&#x27;s native program on dut0 then runs the veth&#x27;s slow path" in html
        or "xdp_redirect's native program on dut0 then runs the veth's slow path" in html
    ) == skb
    prefix = r.path.name.rsplit("-", 1)[1]
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]


def test_dpdk_ports_compared_with_tunings_and_socket_losses_recorded(tmp_path):
    """The two DPDK variants side by side: each run records how l2fwd was tuned (AF_XDP copy
    or zero-copy, the driver's XDP hook, rings, busy polling, lcore; af_packet's frames),
    the kernel's drop counters of l2fwd's sockets per trial, and the interpretation says
    whether the AF_XDP goal is met and where the packets were lost; make bench's ratio
    reads the same rows."""
    import json

    from labkit.bench import l2fwd as bench_l2fwd

    r = l2fwd.run(smoke=True, variants=list(l2fwd.DPDK_VARIANTS), baseline=False, latency=False, progress=False)
    meta = json.loads((r.run_dir / "metadata.json").read_text())
    setup = json.dumps(meta)  # wherever collect_metadata nests the run's extra fields
    assert '"af_xdp_socket_mode"' in setup and '"copy"' in setup and '"xdp_hook": "xdp"' in setup
    assert '"busy_budget": 0' in setup and '"napi_settings": {}' in setup  # off on veths by default
    assert '"ring_size": 4096' in setup and '"framecnt": 4096' in setup
    t = r.table
    sock = t[(t["measure"] == "socket_dropped") & (t["kind"] == "trial")]
    assert set(sock["variant"]) == set(l2fwd.DPDK_VARIANTS) and (sock["value"] >= 0).all()
    fill = t[t["measure"] == "xsk_fill_ring_empty"]
    assert set(fill["variant"]) == {"dpdk_l2fwd_afxdp"}
    before = t[t["measure"] == "lost_before_dut_pkts"].set_index(["variant", "trial"])["value"]
    for (v, trial), n in sock.set_index(["variant", "trial"])["value"].items():
        assert n <= before[(v, trial)] + 64, "drops at l2fwd's sockets are part of the loss before it"
    assert "goal of 2.5×" in r.interpretation and "socket counters" in r.interpretation
    ratios = bench_l2fwd.ratios(t)
    assert len(ratios) == 1 and (ratios > 0).all()  # smoke: one trial
    prefix = r.run_dir.name.rsplit("-", 1)[1]
    assert not dpdk.dpdk_processes(prefix) and not dpdk.runtime_dirs(prefix)
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]


# ---------------------------------------------------------------- the DPDK ports' sentences, from hand-built tables
def _ports_table(
    sock_a: float,
    sock_p: float,
    lost_a: float = 400_000,
    lost_p: float = 600_000,
    xsk_rx_dropped: float = 300_000,
    xsk_rx_ring_full: float = 100_000,
    fill: float = 200_000,
    cpu: bool = True,
    trials: int = 2,
):
    """A table as l2fwd.run records it, for the two DPDK variants at 64 bytes (no kernel):
    per trial 1 M offered, AF_XDP forwarding 0.6 Mpps and af_packet 0.3 (0.25 in trial 1)."""
    import pandas as pd

    rows = []
    per_trial = {
        "dpdk_l2fwd_afxdp": {
            "offered_pkts": 1e6,
            "offered_pps": 1e6,
            "processed_pps": 6e5,
            "lost_before_dut_pkts": lost_a,
            "socket_dropped": sock_a,
            "xsk_rx_dropped": xsk_rx_dropped,
            "xsk_rx_ring_full": xsk_rx_ring_full,
            "xsk_fill_ring_empty": fill,
            "dpdk_cpu_ns_per_pkt": 1500.0,
        },
        "dpdk_l2fwd": {
            "offered_pkts": 1e6,
            "offered_pps": 1e6,
            "processed_pps": 3e5,
            "lost_before_dut_pkts": lost_p,
            "socket_dropped": sock_p,
            "packet_drops": sock_p,
            "dpdk_cpu_ns_per_pkt": 3000.0,
        },
    }
    for trial in range(trials):
        for v, ms in per_trial.items():
            for m, val in ms.items():
                if m == "dpdk_cpu_ns_per_pkt" and not cpu:
                    continue
                if m == "processed_pps" and v == "dpdk_l2fwd" and trial == 1:
                    val = 2.5e5
                rows.append(
                    {
                        "experiment": "l2fwd",
                        "run_id": "test",
                        "trial": trial,
                        "variant": v,
                        "size": 64,
                        "measure": m,
                        "value": val,
                        "unit": "",
                        "flags": "",
                        "kind": "trial",
                    }
                )
    return pd.DataFrame(rows)


def _ports(table, caveats=(), lcores=None) -> str:
    from labkit.experiments import l2fwd_views as views

    return "\n".join(views.interpret_ports(table, None, l2fwd.BASELINE, caveats, lcores))


VETH_CAVEATS = [f"{l2fwd.views.PORT_CAVEATS[v]} [{v}]" for v in ("dpdk_l2fwd", "dpdk_l2fwd_afxdp")]


def test_backlog_claimed_only_where_socket_drops_are_the_loss_before_l2fwd():
    both = _ports(_ports_table(sock_a=390_000, sock_p=590_000))  # within 10% of what was lost before l2fwd
    assert "socket counters" in both and "in both the losses before the DUT are l2fwd's own backlog" in both
    far = _ports(_ports_table(sock_a=40_000, sock_p=60_000))  # the sockets account for a tenth of it
    assert "socket counters" in far and "backlog" not in far
    one = _ports(_ports_table(sock_a=400_000, sock_p=60_000))
    assert "in both" not in one and "over AF_XDP that is the loss before l2fwd (its own backlog)" in one
    assert "over af_packet the sockets account for 6% of the 60% lost before it" in one


def test_fill_ring_share_counts_every_drop_at_the_af_xdp_socket():
    """xsk_fill_ring_empty is a share of all the socket's drops: rx_dropped and rx_ring_full."""
    text = _ports(
        _ports_table(sock_a=400_000, sock_p=600_000, xsk_rx_dropped=300_000, xsk_rx_ring_full=100_000, fill=200_000)
    )
    assert "(50% of those because its fill ring was empty" in text  # 200k of 300k + 100k, not of 300k
    none = _ports(_ports_table(sock_a=0, sock_p=0, lost_a=0, lost_p=0, xsk_rx_dropped=0, xsk_rx_ring_full=0, fill=0))
    assert "of those because" not in none and "backlog" not in none  # no drops: no share of them, no claim


def test_veth_paragraph_only_on_veths_with_the_runs_lcores():
    t = _ports_table(sock_a=390_000, sock_p=590_000)
    nic = _ports(t, caveats=["net_af_xdp sockets ran in zero-copy mode on ens1f0 [dpdk_l2fwd_afxdp]"], lcores="3")
    assert "What bounds both" not in nic and "perf" not in nic and "CPU 1" not in nic
    assert "What bounds both" not in _ports(t)  # nothing recorded about the ports: no claim about veths
    veth = _ports(t, caveats=VETH_CAVEATS, lcores="5")
    assert "What bounds both on these veths is l2fwd's lcore on CPU(s) 5" in veth and "CPU 1" not in veth
    assert "1500 ns over AF_XDP and 3000 ns over af_packet" in veth
    assert "What bounds both" not in _ports(_ports_table(390_000, 590_000, cpu=False), VETH_CAVEATS, "1")


def test_ratio_per_trial_is_one_function_for_the_interpretation_and_bench():
    from labkit.bench import l2fwd as bench_l2fwd
    from labkit.experiments import l2fwd_views as views

    t = _ports_table(sock_a=390_000, sock_p=590_000)
    r = views.trial_ratios(t)
    assert list(r.round(2)) == [2.0, 2.4] and list(bench_l2fwd.ratios(t)) == list(r)
    assert "per trial 2.00–2.40" in _ports(t)
    assert views.trial_ratios(t[t["variant"] == "dpdk_l2fwd"]).empty
