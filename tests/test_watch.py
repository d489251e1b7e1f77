"""`labkit watch` for real: interfaces named as a run, NETNS:IFACE or IFACE are found (and
unknown ones refused with what exists); per-interval rates of real traffic through a veth
pair, with the attached XDP program's counters read by map id; the command prints lines
and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from labkit import bpf, traffic
from labkit.dataplanes.xdp_gen import GenSink
from labkit.errors import InputError
from labkit.measure import watch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_targets_resolve_and_unknown_names_are_refused(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    prefix = pair.run.prefix
    got = watch.resolve([prefix])
    assert {str(t) for t in got} == {f"{snd.netns}:{snd.name}", f"{rcv.netns}:{rcv.name}"}
    assert watch.resolve([rcv.name]) == [watch.Target(rcv.netns, rcv.name)]  # found in its namespace
    assert watch.resolve([f"{snd.netns}:{snd.name}"]) == [watch.Target(snd.netns, snd.name)]
    assert watch.resolve(["lo"]) == [watch.Target(None, "lo")]
    with pytest.raises(InputError, match="does not exist in"):
        watch.resolve([f"{snd.netns}:nosuchif"])
    with pytest.raises(InputError, match="nor in any namespace"):
        watch.resolve(["nosuchif0"])
    with pytest.raises(InputError, match="has no namespace or interface"):
        watch.resolve(["lkffff" if prefix != "lkffff" else "lkfffe"])
    with pytest.raises(InputError, match="interval"):
        next(watch.rates(got, interval=0))


def test_rates_of_real_traffic_with_program_counters(pair):
    snd, rcv = pair.iface("snd"), pair.iface("rcv")
    spec = traffic.TrafficSpec.between(snd, rcv, size=100, count=40_000, rate_pps=20_000)
    with GenSink() as sink, bpf.attach_xdp(rcv, sink.function(), "native"):
        gen = traffic.generator("trafgen", snd)
        sender = threading.Thread(target=gen.send, args=(spec,))
        targets = watch.resolve([pair.run.prefix])
        lines = watch.rates(targets, interval=0.5, count=2)
        sender.start()
        try:
            rows = [r for batch in lines for r in batch]
        finally:
            sender.join()
        total = sink.total()["packets"]
    at_rcv = [r for r in rows if r["iface"].endswith(rcv.name)]
    at_snd = [r for r in rows if r["iface"].endswith(snd.name)]
    assert len(at_rcv) == 2 and len(at_snd) == 2
    assert max(r["rx_pps"] for r in at_rcv) > 0 and max(r["tx_pps"] for r in at_snd) > 0
    r = max(at_rcv, key=lambda r: r["rx_pps"])
    # bits are the kernel's byte count x 8: a veth counts received frames without their Ethernet header
    assert (100 - 14) * 8 * 0.99 <= r["rx_bps"] / r["rx_pps"] <= 100 * 8 * 1.01
    assert r["xdp"].startswith("xdp_gen_sink#"), "the attached program is named"
    assert r["counters"].get("sink_counters[0]", 0) > 0, "its per-CPU counter is read and rated"
    # the sink drops every frame on purpose: the veth counts them as XDP drops, not ring drops
    assert max(x["xdp_drop_ps"] for x in at_rcv) > 0 and "xdp_drop" in watch.format_rows(at_rcv)
    assert total >= 1 and not at_snd[0]["xdp"]
    text = watch.format_rows(rows, clock="00:00:00")
    assert f"{rcv.netns}:{rcv.name}" in text and "pps" in text and "xdp_gen_sink" in text


def test_command_prints_lines(pair):
    cp = subprocess.run(
        [sys.executable, "-m", "labkit", "watch", pair.run.prefix, "-i", "0.2", "-n", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.strip().splitlines()
    assert lines[0].startswith("watching 2 interface(s)") and len(lines) == 1 + 2 * 2
    bad = subprocess.run(
        [sys.executable, "-m", "labkit", "watch", "nosuchif0", "-n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "nosuchif0" in bad.stderr
