"""labkit.measure.capture: tcpdump in a namespace sees what crossed an interface, the
frames are read back while it runs and after, and nothing is left on any exit (no
tcpdump running, no pcap file)."""

import os
import socket
import struct

import pytest
from conftest import needs_root

from labkit import packets
from labkit.errors import LabkitError
from labkit.measure.capture import Capture, capture, read_pcap


def _send_udp(host, dst: str, n: int, dport: int = 9) -> None:
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(n):
            s.sendto(f"datagram {i}".encode(), (dst, dport))
    finally:
        s.close()


def _gone(cap: Capture) -> None:
    assert not cap.proc.running, "tcpdump still runs"
    assert not os.path.exists(f"/proc/{cap.proc.pid}") or open(f"/proc/{cap.proc.pid}/comm").read().strip() != "tcpdump"
    assert not os.path.exists(cap.path), "the pcap file is left"


@needs_root
def test_frames_that_arrive_are_read_while_running_and_after(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with Capture(rcv.host, rcv.name, "udp", inbound=True) as cap:
        _send_udp(snd.host, rcv.address, 20)
        during = Capture.udp_from(cap.frames(want=20), snd)
    after = cap.frames()
    assert len(during) == 20, f"{len(during)} of 20 datagrams read while tcpdump ran"
    assert len(Capture.udp_from(after, snd)) == 20 == len(Capture.udp_from(after, snd.address))
    p = packets.parse(after[0])
    assert (p.src_ip, p.dst_ip, p.dport, p.src_mac) == (snd.address, rcv.address, 9, snd.mac)
    _gone(cap)
    assert cap.dropped == 0
    cap.close()  # harmless twice
    assert len(cap.frames()) == len(after)


@needs_root
def test_a_burst_is_kept_whole_with_a_snap_length(pair):
    """2000 frames at 100 kpps: with a snap length the ring holds them all, as the
    forwarding tests need."""
    from labkit import traffic

    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with Capture(rcv.host, rcv.name, inbound=True, snaplen=2048) as cap:
        spec = traffic.TrafficSpec.between(snd, rcv, count=2000, size=64, rate_pps=100_000)
        assert traffic.generator("trafgen", snd).send(spec).packets == 2000
        got = Capture.udp_from(cap.frames(want=2000), snd)
    assert len(got) == 2000 and cap.dropped == 0, f"{len(got)} of 2000 frames, {cap.dropped} dropped"
    assert {len(f) for f in got} == {spec.size}  # whole frames


@needs_root
def test_inbound_leaves_out_what_the_interface_sends(pair):
    """Nothing listens on the port: the receiver answers each datagram with an ICMP port
    unreachable, which only a capture of both directions holds."""
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    with (
        capture(rcv.host, rcv.name, "udp or icmp") as both,
        capture(rcv.host, rcv.name, "udp or icmp", inbound=True) as inbound,
    ):
        _send_udp(snd.host, rcv.address, 3, dport=9999)
    protos = lambda frames: sorted(packets.parse(f).proto for f in frames)  # noqa: E731
    assert protos(inbound()) == [17, 17, 17]
    assert 1 in protos(both()) and protos(both()).count(17) == 3


@needs_root
def test_an_exception_in_the_body_stops_tcpdump(pair):
    rcv = pair.iface("rcv")
    with pytest.raises(KeyError):
        with Capture(rcv.host, rcv.name) as cap:
            assert cap.proc.running
            raise KeyError("the body failed")
    _gone(cap)


@needs_root
def test_a_capture_that_cannot_start_says_why_and_leaves_nothing(pair, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(LabkitError, match="no-such-if"):
        Capture(pair.host("rcv"), "no-such-if")
    assert not list(tmp_path.iterdir()), "the pcap file of a failed start is left"
    assert not pair.host("rcv").processes, "tcpdump of a failed start still tracked"


def _pcap(records: list[bytes], linktype: int = 1) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for r in records:
        out += struct.pack("<IIII", 0, 0, len(r), len(r)) + r
    return out


def test_read_pcap_reads_whole_records_only(tmp_path):
    frames = [
        packets.build(packets.FrameSpec("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", size=60 + i))
        for i in range(3)
    ]
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap(frames)[:-10])  # the last record still being written
    assert read_pcap(str(path)) == frames[:2]
    path.write_bytes(b"")
    assert read_pcap(str(path)) == []


@pytest.mark.parametrize(
    "content, words", [(b"not a pcap file at all..", "not a pcap file"), (_pcap([], linktype=113), "not Ethernet")]
)
def test_read_pcap_refuses_what_it_cannot_read(tmp_path, content, words):
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(LabkitError, match=words):
        read_pcap(str(path))
