"""Kernel facilities probed for real (labkit/capabilities.py, labkit/probes.py): each tried
once, its answer kept with the reason; LABKIT_REFUSE treats named ones as refused; runs
record what was probed and which backend served each purpose."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from conftest import ROOT, needs_root

from labkit import capabilities, results, traffic
from labkit.errors import InputError, MissingDependency, Refused


@needs_root
@pytest.mark.parametrize("name", ["test_run", "xdp_native", "xdp_generic", "tc_clsact", "iptables", "af_xdp"])
def test_facilities_this_testbed_needs_are_tried_and_work(name, monkeypatch):
    monkeypatch.delenv("LABKIT_REFUSE", raising=False)
    capabilities.forget()
    p = capabilities.probe(name)
    assert p.ok, p.message()
    assert p.reason and not p.forced
    assert capabilities.probe(name) is p, "asked twice, tried once"
    # its throw-away namespaces and veths are gone: the session's nothing_left_behind checks


@needs_root
def test_live_frames_is_answered_from_a_real_attempt_with_errno_and_fallbacks(monkeypatch):
    monkeypatch.delenv("LABKIT_REFUSE", raising=False)
    capabilities.forget()
    p = capabilities.probe("live_frames")
    if p.ok:
        assert "live frames" in p.reason
    else:  # refused by this kernel or its policy: the errno and what to do are kept
        assert p.errno in (errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP, 524), p
        assert "5.18" in p.causes and "trafgen" in p.instead


def test_a_missing_kernel_module_is_a_refusal_with_its_reason(monkeypatch):
    monkeypatch.delenv("LABKIT_REFUSE", raising=False)
    capabilities.forget()
    p = capabilities.probe("pktgen")
    if os.path.isdir("/proc/net/pktgen"):
        assert p.ok
    else:
        assert not p.ok and "pktgen" in p.reason and "CONFIG_NET_PKTGEN" in p.causes
        with pytest.raises(MissingDependency, match="refused here.*likely causes.*instead"):
            capabilities.require("pktgen")


def test_labkit_refuse_refuses_without_trying(refuse):
    refuse("live_frames", "xdp_generic")
    for name in ("live_frames", "xdp_generic"):
        p = capabilities.probe(name)
        assert not p.ok and p.forced and "LABKIT_REFUSE" in p.reason
        assert name not in capabilities._cache, "not tried"
    rec = capabilities.record()
    assert rec["refused_by_env"] == "live_frames,xdp_generic"
    assert rec["probes"]["live_frames"]["forced"] is True


def test_labkit_refuse_with_an_unknown_name_says_which_names_exist(refuse):
    refuse("live_frame")
    with pytest.raises(InputError, match="unknown facility live_frame: choose from .*live_frames"):
        capabilities.probe("live_frames")


def test_unknown_facility_is_an_input_error():
    with pytest.raises(InputError, match="unknown facility 'warp'"):
        capabilities.probe("warp")


def test_run_metadata_records_probes_and_choices(refuse):
    refuse("live_frames")
    capabilities.probe("live_frames")
    capabilities.chose("load generator", "trafgen", "live frames refused")
    meta = results.collect_metadata({})
    fac = meta["facilities"]
    assert fac["probes"]["live_frames"]["ok"] is False
    assert fac["choices"]["load generator"] == {"backend": "trafgen", "why": "live frames refused"}
    assert capabilities.summary_line(fac) == "load generator: trafgen (live frames refused)"


@needs_root
def test_doctor_shows_each_probe_and_a_refusal_with_what_labkit_uses_instead():
    env = dict(os.environ, LABKIT_REFUSE="live_frames")
    cp = subprocess.run(
        [sys.executable, "-m", "labkit", "doctor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    out = cp.stdout
    assert "kernel facilities" in out, out
    line = next(l for l in out.splitlines() if l.strip().startswith("NO") and " live_frames " in l)
    assert "LABKIT_REFUSE" in line
    assert "labkit uses instead:" in out.split(line, 1)[1].splitlines()[1]
    assert any(l.strip().startswith("ok") and " xdp_native " in l for l in out.splitlines())


@needs_root
def test_a_refusal_met_in_use_is_kept_and_later_choices_avoid_it(monkeypatch):
    monkeypatch.delenv("LABKIT_REFUSE", raising=False)
    capabilities.forget()
    try:
        capabilities.refused("live_frames", Refused("BPF_PROG_RUN in live-frames mode was refused", errno.EPERM))
        p = capabilities.probe("live_frames")
        assert not p.ok and p.errno == errno.EPERM and p.reason.startswith("refused in use")
        assert traffic.choose("auto") != "xdp"
        assert "xdp refused" in capabilities.choices()["load generator"]["why"]
    finally:
        capabilities.forget()
