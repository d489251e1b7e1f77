"""DPDK for real: l2fwd built from the installed sources forwards between veths in
namespaces, with its MAC rewrite checked on the received frames; its statistics parse;
bad input is refused before anything runs; testpmd sends the count asked; nothing
(process, runtime directory) is left behind."""

from __future__ import annotations

import os
import time

import pytest

from labkit import bpf, dpdk, traffic
from labkit.errors import InputError, MissingDependency

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

N = 2000


@pytest.fixture(scope="module")
def binary():
    try:
        return dpdk.build_l2fwd()
    except MissingDependency as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------- build
def test_build_is_stamped_and_reused(binary):
    assert binary.exists() and os.access(binary, os.X_OK)
    stamp = (dpdk.L2FWD_BUILD_DIR / dpdk.STAMP_NAME).read_text()
    assert stamp.startswith(dpdk.dpdk_version() + " ")
    mtime = binary.stat().st_mtime
    assert dpdk.build_l2fwd() == binary and binary.stat().st_mtime == mtime  # not rebuilt


def test_dpdk_not_installed_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDependency, match="DPDK is not installed|pkg-config"):
        dpdk.build_l2fwd(pkg_config=str(tmp_path / "no-pkg-config"), build_dir=tmp_path / "b")
    with pytest.raises(MissingDependency, match="l2fwd example sources"):
        dpdk.build_l2fwd(examples_dir=tmp_path / "nothing", build_dir=tmp_path / "b")


# ---------------------------------------------------------------- options
def test_posters_command_line_is_expressible():
    eal, app = dpdk.parse_command_line("l2fwd -c 1 -n 1 -- -q 1 -p 1")
    assert eal.coremask == "1" and eal.memory_channels == 1 and eal.lcore_ids() == [0]
    assert app.portmask == 1 and app.queues_per_lcore == 1
    app.validate(nports=1, nlcores=1)
    args = eal.args([dpdk.Port.af_packet("x")], "lk0000-t") + ["--"] + app.args(1)
    assert args[:4] == ["-c", "1", "-n", "1"] and args[-6:-2] == ["-p", "0x1", "-q", "1"]


def test_stats_parse():
    out = (
        "\x1b[2J\x1b[1;1H\nPort statistics ====\nStatistics for port 0 ----\nPackets sent: 3\n"
        "Packets received: 7\nPackets dropped: 1\nStatistics for port 1 ----\nPackets sent: 7\n"
        "Packets received: 3\nPackets dropped: 0\nAggregate statistics ====\nTotal packets sent: 10\n"
        "Total packets received: 10\nTotal packets dropped: 1\n====\n\nPort statistics ====\nStatistics for"
    )
    blocks = dpdk.parse_stats(out)
    assert len(blocks) == 1  # the second block is incomplete
    assert blocks[0][0] == dpdk.PortStats(3, 7, 1) and blocks[0][1] == dpdk.PortStats(7, 3, 0)


def test_bad_input_is_refused_before_running(fwd_topo, binary):
    dut = fwd_topo.host("dut")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    ports = [dpdk.Port.af_packet(d0), dpdk.Port.af_packet(d1)]
    with pytest.raises(InputError, match=r"port mask 0x7 names port\(s\) \[2\].*use port mask 0x3"):
        dpdk.L2fwd(dut, ports, app=dpdk.L2fwdOptions(portmask=0x7))
    with pytest.raises(InputError, match="Not enough cores.*queues_per_lcore=2"):
        dpdk.L2fwd(dut, ports, dpdk.EalOptions(lcores="1"), dpdk.L2fwdOptions(portmask=0x3, queues_per_lcore=1))
    with pytest.raises(InputError, match="does not exist on this machine"):
        dpdk.L2fwd(dut, [dpdk.Port.pci("0000:7f:1f.7")])
    with pytest.raises(InputError, match="malformed"):
        dpdk.L2fwd(dut, [dpdk.Port.pci("eth0")])
    with pytest.raises(InputError, match="does not exist on host dut"):
        dpdk.L2fwd(dut, [dpdk.Port.af_packet("nosuchif")])
    with pytest.raises(InputError, match="lcore"):
        dpdk.L2fwd(dut, ports, dpdk.EalOptions(lcores="64"))
    assert not dpdk.dpdk_processes(fwd_topo.run.prefix)
    assert not dpdk.runtime_dirs(fwd_topo.run.prefix)


# ---------------------------------------------------------------- forwarding
def test_l2fwd_forwards_with_mac_rewrite_and_counts(fwd_topo, binary, capture):
    snd, rcv = fwd_topo.iface("snd"), fwd_topo.iface("rcv")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    cap = capture(rcv)
    with dpdk.L2fwd(
        fwd_topo.host("dut"),
        [dpdk.Port.af_packet(d0, framecnt=4096), dpdk.Port.af_packet(d1, framecnt=4096)],
        dpdk.EalOptions(lcores="1"),
        dpdk.L2fwdOptions(portmask=0x3, queues_per_lcore=2),
    ) as fwd:
        prefix = fwd.prefix
        assert dpdk.runtime_dirs(prefix), "DPDK's runtime directory exists while it runs"
        before = fwd.next_stats()
        # addressed to the sender's own peer MAC: only l2fwd's rewrite makes it the receiver's
        spec = traffic.TrafficSpec.between(snd, d0, count=N, size=64, rate_pps=20_000)
        spec.dst_ip = rcv.address
        offered = traffic.generator("trafgen", snd).send(spec)
        assert offered.packets == N
        frames = cap.udp_from(cap.frames(N), snd)
        after = fwd.next_stats()
        res = fwd.resources()
        drops = fwd.socket_drops()  # the packet sockets' counters, kept as running totals
    assert drops.get("packet_drops") == 0 == drops["socket_dropped"], drops
    rx, tx = after[0].received - before[0].received, after[1].sent - before[1].sent
    assert len(frames) == N, f"{len(frames)} of {N} frames arrived at the receiver (l2fwd: rx {rx}, tx {tx})"
    assert all(f[0:6] == bytes.fromhex("020000000001") for f in frames), "dst MAC is l2fwd's 02:00:00:00:00:01"
    assert all(f[6:12] == bytes.fromhex(d1.mac.replace(":", "")) for f in frames), "src MAC is the egress port's"
    assert after[0].received - before[0].received == N
    assert after[1].sent - before[1].sent == N
    assert res.cpu_seconds > 0 and res.busy_cores > 0.3 and res.rss_mb > 10 and not res.hugepages
    assert fwd.proc.returncode is not None  # stopped and reaped
    assert not dpdk.runtime_dirs(prefix), "runtime directory removed after the run"
    assert not dpdk.dpdk_processes(prefix)


def test_l2fwd_exits_cleanly_on_error_path(fwd_topo, binary):
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    with pytest.raises(RuntimeError, match="boom"):
        with dpdk.L2fwd(fwd_topo.host("dut"), [d0, d1]) as fwd:
            prefix = fwd.prefix
            raise RuntimeError("boom")
    assert not dpdk.dpdk_processes(prefix) and not dpdk.runtime_dirs(prefix)


def test_testpmd_sends_the_count_asked(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    gen = traffic.generator("testpmd", snd)
    with bpf.load("xdp_minimal") as prog, bpf.attach_xdp(rcv, prog.function("xdp_drop_bare"), "native"):
        r0 = rcv.stats()["rx_packets"]
        spec = traffic.TrafficSpec.between(snd, rcv, count=5_003, size=128)  # not a multiple of the burst
        off = gen.send(spec)
        time.sleep(0.3)
        got = rcv.stats()["rx_packets"] - r0
    assert off.packets == 5_003 and off.bytes == 5_003 * 128 and off.pps > 0
    assert got >= 5_003  # the receiver saw them all (plus any stray frame of the namespace)
    assert not dpdk.runtime_dirs(pair.run.prefix)


# ---------------------------------------------------------------- net_af_xdp ports
def test_af_xdp_options_refused_before_running(fwd_topo, binary):
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    with pytest.raises(InputError, match="net_af_xdp has no option 'framecnt'"):
        dpdk.Port.af_xdp(d0, framecnt=4096)
    with pytest.raises(InputError, match="busy_budget=-1"):
        dpdk.Port.af_xdp(d0, busy_budget=-1)
    with pytest.raises(InputError, match="ring size 1000"):
        dpdk.L2fwd(
            fwd_topo.host("dut"), [dpdk.Port.af_xdp(d0), dpdk.Port.af_xdp(d1)], app=dpdk.L2fwdOptions(ring_size=1000)
        )
    with bpf.load("xdp_minimal") as prog, bpf.attach_xdp(d0, prog.function("xdp_pass_bare"), "native"):
        with pytest.raises(InputError, match="already has an XDP program"):
            dpdk.L2fwd(fwd_topo.host("dut"), [dpdk.Port.af_xdp(d0), dpdk.Port.af_xdp(d1)])
    assert not dpdk.dpdk_processes(fwd_topo.run.prefix)


def test_l2fwd_over_af_xdp_forwards_in_copy_mode(fwd_topo, binary, capture):
    snd, rcv = fwd_topo.iface("snd"), fwd_topo.iface("rcv")
    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    dut = fwd_topo.host("dut")
    cap = capture(rcv)
    ports = [dpdk.Port.af_xdp(d0, busy_budget=0), dpdk.Port.af_xdp(d1, busy_budget=0)]
    with dpdk.L2fwd(
        dut, ports, dpdk.EalOptions(lcores="1"), dpdk.L2fwdOptions(portmask=0x3, queues_per_lcore=2, ring_size=2048)
    ) as fwd:
        prefix = fwd.prefix
        assert "-ring2048" in str(fwd.binary) or "ring2048" in str(fwd.binary.parent.parent)
        assert fwd.socket_modes() == {f"af_xdp:{d0.name}": "copy", f"af_xdp:{d1.name}": "copy"}  # veth: no zero-copy
        assert set(fwd.xdp_programs) == {d0.name, d1.name} and all(fwd.xdp_programs.values())
        assert dpdk.xsk_sockets(dut) == 2, "one AF_XDP socket per port"
        before = fwd.next_stats()
        spec = traffic.TrafficSpec.between(snd, d0, count=N, size=64, rate_pps=20_000)
        spec.dst_ip = rcv.address
        assert traffic.generator("trafgen", snd).send(spec).packets == N
        frames = cap.udp_from(cap.frames(N), snd)
        after = fwd.next_stats()
        drops = fwd.socket_drops()  # the kernel's counters of l2fwd's AF_XDP sockets
    # AF_XDP ports only: the AF_XDP counters, no packet socket's; counts, never a rate assumption
    assert set(drops) == {
        "xsk_rx_dropped",
        "xsk_fill_ring_empty",
        "xsk_rx_ring_full",
        "xsk_tx_invalid",
        "socket_dropped",
    }, drops
    assert all(type(v) is int and v >= 0 for v in drops.values()), drops
    assert drops["socket_dropped"] == drops["xsk_rx_dropped"] + drops["xsk_rx_ring_full"], drops
    assert drops["xsk_tx_invalid"] == 0, f"l2fwd handed its AF_XDP sockets invalid descriptors: {drops}"
    assert fwd.socket_drops() == {}, "nothing to read once l2fwd has stopped"
    assert len(frames) == N, f"{len(frames)} of {N} frames arrived over net_af_xdp"
    assert all(f[0:6] == bytes.fromhex("020000000001") for f in frames)
    assert after[0].received - before[0].received == N and after[1].sent - before[1].sent == N
    assert not bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED") and not bpf.xdp_state(d1).get("IFLA_XDP_ATTACHED")
    assert dpdk.xsk_sockets(dut) == 0
    assert not dpdk.dpdk_processes(prefix) and not dpdk.runtime_dirs(prefix)


def test_killed_l2fwd_leaves_no_xdp_program(fwd_topo, binary):
    import signal

    d0, d1 = fwd_topo.iface("dut", "snd"), fwd_topo.iface("dut", "rcv")
    with dpdk.L2fwd(fwd_topo.host("dut"), [dpdk.Port.af_xdp(d0), dpdk.Port.af_xdp(d1)]) as fwd:
        prefix = fwd.prefix
        fwd.proc.send_signal(signal.SIGKILL)  # no chance to close its ports
        fwd.proc.wait(10)
        assert bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED"), "the killed driver left its program"
    assert dpdk.xsk_sockets(fwd_topo.host("dut")) == 0
    assert not bpf.xdp_state(d0).get("IFLA_XDP_ATTACHED") and not bpf.xdp_state(d1).get("IFLA_XDP_ATTACHED")
    assert not dpdk.dpdk_processes(prefix) and not dpdk.runtime_dirs(prefix)


def test_busy_poll_settings_are_restored(fwd_topo):
    dut = fwd_topo.host("dut")
    d0 = fwd_topo.iface("dut", "snd")
    path = f"/sys/class/net/{d0.name}/gro_flush_timeout"
    old = dut.read(path).strip()
    with pytest.raises(RuntimeError):
        with dpdk.BusyPollSettings(dut, [d0.name]):
            assert dut.read(path).strip() == "200000"
            raise RuntimeError("boom")
    assert dut.read(path).strip() == old


# ---------------------------------------------------------------- testpmd over net_af_xdp
def test_testpmd_afxdp_sends_and_leaves_nothing(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    ok, why = traffic.backends_status()["testpmd_afxdp"]
    if not ok:
        pytest.skip(why)
    gen = traffic.generator("testpmd_afxdp", snd)
    with bpf.load("xdp_minimal") as prog, bpf.attach_xdp(rcv, prog.function("xdp_drop_bare"), "native"):
        r0, t0 = rcv.stats()["rx_packets"], snd.stats()["tx_packets"]
        off = gen.send(traffic.TrafficSpec.between(snd, rcv, count=5_003, size=128))
        time.sleep(0.3)
        got, sent = rcv.stats()["rx_packets"] - r0, snd.stats()["tx_packets"] - t0
    assert 0 < off.packets <= 5_003 and off.pps > 0
    assert off.packets == sent, "what the generator reports is what the interface transmitted"
    assert got >= off.packets > 0, "the receiver counted what was sent"
    assert any("copy mode" in n for n in off.notes), off.notes  # a veth has no AF_XDP zero-copy
    assert not bpf.xdp_state(snd).get("IFLA_XDP_ATTACHED"), "the driver's XDP program is gone"
    assert dpdk.xsk_sockets(pair.host("snd")) == 0
    assert not dpdk.runtime_dirs(pair.run.prefix) and not dpdk.dpdk_processes(pair.run.prefix)


def test_testpmd_afxdp_bad_options_refused(pair):
    snd = pair.iface("snd")
    if not traffic.backends_status()["testpmd_afxdp"][0]:
        pytest.skip("testpmd_afxdp cannot run here")
    with pytest.raises(InputError, match="no option.*'framecnt'"):
        traffic.generator("testpmd_afxdp", snd, framecnt=4096)
    with pytest.raises(InputError, match="busy_budget=-1"):
        traffic.generator("testpmd_afxdp", snd, busy_budget=-1)
    with pytest.raises(InputError, match="no option.*'colour'"):
        traffic.generator("testpmd", snd, colour="red")
    gen = traffic.generator("testpmd_afxdp", snd, busy_budget=0)
    spec = traffic.TrafficSpec.between(snd, pair.iface("rcv"), count=10)
    with bpf.load("xdp_minimal") as prog, bpf.attach_xdp(snd, prog.function("xdp_pass_bare"), "native"):
        with pytest.raises(InputError, match="already has an XDP program"):
            gen.send(spec)
        assert bpf.xdp_state(snd).get("IFLA_XDP_ATTACHED"), "someone else's program stays"
    assert not dpdk.dpdk_processes(pair.run.prefix) and dpdk.xsk_sockets(pair.host("snd")) == 0


def test_testpmd_afxdp_takes_off_a_program_the_driver_left(pair):
    """testpmd killed before it closed its port leaves the driver's XDP program on the
    sending interface: the generator's guard takes it off after the run and says so."""
    from labkit.traffic.testpmd import _AfXdpPortGuard

    snd = pair.iface("snd")
    notes = []
    with bpf.load("xdp_minimal") as prog:
        with _AfXdpPortGuard(snd, dpdk.Port.af_xdp(snd), notes) as guard:
            # stands in for the program a killed testpmd's net_af_xdp port leaves behind
            with bpf.attach_xdp(snd, prog.function("xdp_pass_bare"), "native"):
                assert bpf.xdp_state(snd).get("IFLA_XDP_ATTACHED")
                guard.__exit__(None, None, None)
                assert not bpf.xdp_state(snd).get("IFLA_XDP_ATTACHED"), "the left program is gone"
    assert any("labkit removed it" in n for n in notes), notes
    assert not bpf.xdp_state(snd).get("IFLA_XDP_ATTACHED")
