"""The drop filter really drops: packets are counted by the program and do not arrive; ping
fails while it is attached and works after; rules changed from userspace apply at once;
nothing stays attached."""

import pytest
from conftest import needs_root
from udp_sink import UdpSink

from labkit import bpf, packets, traffic
from labkit.dataplanes.drop_filter import DropFilter
from labkit.errors import InputError

pytestmark = needs_root
N = 2000


@pytest.fixture(scope="module")
def filt():
    with DropFilter() as f:
        yield f


def ping(topo):
    return topo.host("snd").run(["ping", "-c1", "-W1", "10.11.0.2"], check=False).returncode == 0


def send(topo, count=N, dport=9, sport=1024):
    snd, rcv = topo.iface("snd"), topo.iface("rcv")
    spec = traffic.TrafficSpec.between(snd, rcv, count=count, dport=dport, sport=sport)
    return traffic.generator("trafgen", snd).send(spec)


@pytest.mark.parametrize("hook", ["xdp_native", "xdp_generic", "tc"])
def test_dropped_packets_are_counted_and_do_not_arrive(pair, filt, hook):
    rcv = pair.iface("rcv")
    filt.clear()
    filt.drop_proto("udp")
    filt.drop_proto("icmp")
    attach = filt.attach_tc(rcv) if hook == "tc" else filt.attach_xdp(rcv, hook.split("_")[1])
    with UdpSink(pair.host("rcv")) as sink:
        before = filt.dropped()
        with attach:
            offered = send(pair)
            assert offered.packets == N
            sink.drain()
            assert filt.dropped() - before == N
            assert sink.count == 0
            assert not ping(pair)
        assert bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED") is None
        assert ping(pair)
        send(pair)
        assert sink.drain() == N  # detached: everything arrives


def test_rules_change_while_attached_without_reload(pair, filt):
    rcv = pair.iface("rcv")
    filt.clear()
    prog_id = None
    with (
        UdpSink(pair.host("rcv"), port=9) as p9,
        UdpSink(pair.host("rcv"), port=10) as p10,
        filt.attach_xdp(rcv, "generic"),
    ):
        prog_id = bpf.xdp_state(rcv)["IFLA_XDP_PROG_ID"]
        filt.drop_port(9)
        send(pair, 500, dport=9)
        send(pair, 500, dport=10)
        assert (p9.drain(), p10.drain()) == (0, 500)
        assert filt.counters()["drop_port"]["packets"] >= 500
        filt.clear()
        filt.drop_proto("icmp")
        send(pair, 500, dport=9)
        assert p9.drain() == 500
        assert not ping(pair)
        filt.clear()
        filt.drop_src("10.11.0.0/24")
        send(pair, 300, dport=10)
        assert p10.drain() == 500
        assert filt.rules()["sources"] == ["10.11.0.0/24"]
        filt.clear()
        filt.drop_src("192.168.0.0/16")  # not our sender
        send(pair, 300, dport=10)
        assert p10.drain() == 800
        assert bpf.xdp_state(rcv)["IFLA_XDP_PROG_ID"] == prog_id  # same program all along


def test_program_cost_against_bare_program(filt):
    frame = packets.build(packets.FrameSpec("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", size=64))
    filt.clear()
    filt.drop_all()
    res = bpf.test_run(filt.xdp_function(), frame, repeat=1000)
    assert res.action == "XDP_DROP" and res.duration_ns > 0
    filt.clear()
    assert bpf.test_run(filt.xdp_function(), frame).action == "XDP_PASS"
    filt.drop_port(9)
    assert bpf.test_run(filt.xdp_function(), frame).action == "XDP_DROP"
    with bpf.load("xdp_minimal") as bare:
        costs = bpf.program_cost_ns(bare.function("xdp_drop_bare"), frame, repeat=1000, trials=2)
        assert all(c > 0 for c in costs)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: f.drop_port(70000), "out of range"),
        (lambda f: f.drop_proto("nosuch"), "protocol"),
        (lambda f: f.drop_src("10.0.0.0/40"), "IPv4 prefix"),
    ],
)
def test_bad_rules_are_refused(filt, call, message):
    filt.clear()
    with pytest.raises(InputError, match=message):
        call(filt)
    assert filt.rules() == {"drop_all": False, "protocols": [], "ports": [], "sources": []}


def test_attach_to_a_busy_interface_is_refused_and_the_first_stays(pair, filt):
    rcv = pair.iface("rcv")
    with filt.attach_xdp(rcv, "generic"):
        with pytest.raises(Exception, match="already has an XDP program"):
            filt.attach_xdp(rcv, "generic").attach()
        assert bpf.xdp_state(rcv)["IFLA_XDP_ATTACHED"] == "xdpgeneric"
    assert bpf.xdp_state(rcv).get("IFLA_XDP_ATTACHED") is None


def test_interactive_lab_changes_rules_live_and_cleans_up():
    from labkit import cleanup
    from labkit.widgets.drop import DropLab

    lab = DropLab(hook="XDP generic")
    try:
        lab.widget()  # the controls build without a display
        lab.filter.drop_proto("udp")
        lab.send(3000)
        assert lab.filter.counters()["drop_proto"]["packets"] == 3000
        lab.set_hook("tc ingress")
        assert bpf.xdp_state(lab.rcv).get("IFLA_XDP_ATTACHED") is None
        lab.send(1000)
        assert lab.filter.counters()["drop_proto"]["packets"] == 4000
        prefix = lab.topo.run.prefix
    finally:
        lab.close()
    lab.close()  # twice is harmless
    assert not [n for n in cleanup.labkit_namespaces() if n.startswith(prefix)]
