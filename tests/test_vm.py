"""The VM host kind (labkit.testbed.vm): a local VM in the receiver's place, booted for real.

A boot under TCG (no usable KVM) takes 60 to 170 s here, so the suite boots once outside
`slow`: one VM, in a process of its own, that checks everything a VM must do (it boots,
native XDP attaches on its virtio-net interface, the program there counts a namespace
sender's packets), and is then killed outright, so that its undo is checked too (no QEMU,
no tap, no namespace, no VM folder left). The notebook's experiment is `slow`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.errors import InputError
from labkit.testbed import vm

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

#: run in a process of its own: boot a VM receiver, attach native XDP in the guest, send
#: from the namespace sender, print what was counted, then wait to be killed
CHILD = """
import json, sys, time
from labkit import traffic
from labkit.experiments.xdp_drop_receiver import drop_receiver
from labkit.testbed import topology
from labkit.testbed.vm_bed import VmTestbed

bed = VmTestbed(topology.pair(), {"sender": ("snd", None), "receiver": ("rcv", None)})
with bed:
    snd, rcv = bed.end("sender"), bed.end("receiver")
    driver = bed.vm.remote.run(["ethtool", "-i", rcv.name], check=False).stdout
    with bed.hold("receiver", drop_receiver, "udp") as rx, traffic.generator("trafgen", snd) as gen:
        rx("use", "xdp_native")
        mode = bed.vm.remote.run(["ip", "-d", "link", "show", rcv.name]).stdout
        before = rx("processed")
        offered = gen.send(traffic.TrafficSpec.between(snd, rcv, size=64, count=2000, rate_pps=5000))
        time.sleep(2)
        counted = rx("processed") - before
        print(json.dumps({"prefix": bed.prefix, "qemu": bed.vm.qemu_pid, "taps": [bed.vm.name],
                          "counted": counted, "offered": offered.packets, "driver": driver, "link": mode,
                          "accel": bed.vm.accel, "boot_s": bed.vm.boot_seconds, "meta": bed.vm.metadata()}),
              flush=True)
        time.sleep(3600)
"""


def test_bad_vm_settings_are_refused_before_anything_starts():
    with pytest.raises(InputError, match="1 to 4 lower-case"):
        vm.VmHost("Big-Name")
    with pytest.raises(InputError, match="memory"):
        vm.VmHost("vm", memory="lots")
    with pytest.raises(InputError, match="cpus"):
        vm.VmHost("vm", cpus=0)
    with pytest.raises(InputError, match="does not exist"):
        vm.guest_kernel("/boot/no-such-vmlinuz")


def test_bad_parameters_of_the_notebooks_experiment_are_refused_before_anything_starts():
    from labkit.experiments import vm_vs_container as v

    with pytest.raises(InputError, match="parts"):
        v.Params(parts=["drop", "nat", "drop"]).validate()
    with pytest.raises(InputError, match="parts"):
        v.Params(parts=["nap"]).validate()
    with pytest.raises(InputError, match="nat_count"):
        v.Params(nat_count=0).validate()
    with pytest.raises(InputError, match="probe"):
        v.Params(latency_probes=0).validate()
    with pytest.raises(InputError, match="program"):
        v.Params(program="xdp_offload").validate()
    assert v.Params(smoke=True).validate().latency_loads == [0.1]  # a smoke run: one load point


@needs_root
def test_the_accelerator_is_probed_and_says_why():
    accel, why = vm.accelerator()
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    if not ({"vmx", "svm"} & set(flags)):
        assert accel == "tcg" and "no vmx/svm" in why
    assert why


def _run_processes(prefix: str) -> list[int]:
    from labkit import cleanup

    return [pid for pid, run in cleanup.run_processes() if run == prefix]


def _running(pid: int) -> bool:
    """Whether PID runs (a zombie, dead and waiting to be reaped, does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _links_of(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if ns.startswith(prefix):
            names.append(f"netns {ns}")
    return [n for n in names if n.startswith(prefix) or n.startswith(f"netns {prefix}")]


@needs_root
def test_a_vm_receiver_boots_counts_a_namespace_senders_packets_with_native_xdp_and_a_kill_undoes_it():
    """One boot: the guest is up, native XDP is attached on its virtio-net interface, the
    program counts what trafgen in the sender namespace sent, and SIGKILL to the owner
    leaves no QEMU, tap, namespace or VM folder behind (the run's watcher undoes it)."""
    try:
        vm.tools()
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(str(exc))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # the boot, XDP and traffic take 2-6 minutes under TCG
        got = json.loads(line) if line else None
        prefix = got and got["prefix"]
        held = prefix and bool(_run_processes(prefix) and (vm.VM_DIR / prefix).is_dir() and _links_of(prefix))
    finally:  # killed outright, whatever it printed: its watcher must undo it all
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert got, f"the VM run ended early:\n{proc.stderr.read()[-4000:]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_run_processes(prefix) or _links_of(prefix) or _running(got["qemu"])):
        time.sleep(0.5)
    assert held, "while it ran: QEMU, its tap, the namespaces and the VM's folder were there"
    assert not _run_processes(prefix), "QEMU (or virtme-run) outlived its killed run"
    assert not _running(got["qemu"]), "QEMU outlived its killed run"
    assert not _links_of(prefix), "a tap, bridge or namespace outlived the killed run"
    assert not (vm.VM_DIR / prefix).exists()
    # what the VM did before it was killed
    assert "virtio_net" in got["driver"]
    assert re.search(r"prog/xdp id \d+", got["link"]), got["link"]  # native (generic: prog/xdpgeneric)
    assert got["offered"] == 2000
    # the program in the guest counted the sender's packets (TCG may lose some under load)
    assert 0.5 * got["offered"] <= got["counted"] <= got["offered"], got
    assert got["meta"]["accelerator"] == got["accel"]
    if got["accel"] == "tcg":
        assert "not speed numbers" in got["meta"]["warning"]


@needs_root
@pytest.mark.slow
def test_the_notebooks_experiment_compares_a_namespace_and_a_vm_box_and_says_what_is_functional(data_dir):
    """05's smoke run, both places, all three parts: the drop program counted in each, the
    tc NAT passed its checks in each (the server saw only the SNAT address), probes crossed
    each box to the server, and under TCG the VM's rows and sentences say functional only."""
    from labkit.experiments import vm_vs_container

    try:
        vm.tools()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    result = vm_vs_container.run(data_dir=data_dir, smoke=True, progress=False)
    head = result.headline().set_index(["part", "receiver"])
    for place in ("namespace", "vm"):
        assert head.loc[("drop", place), "counted packets"] > 0, place
        assert head.loc[("nat", place), "counted packets"] > 0, place  # translated, counted at the server
    checks = result.part("checks")
    assert set(checks["receiver"]) == {"namespace", "vm"}
    assert checks["ok"].all(), checks.to_dict("records")
    assert set(checks["check"]) == {"ping", "udp_exchange"}
    lat = result.part("latency").set_index(["variant", "load"])
    for place in ("namespace", "vm"):
        assert lat.loc[(place, "no load"), "probes"] > 0, place
        assert lat.loc[(place, "no load"), "p50_us"] > 0, place
    assert "XDP in the VM saw the generator's packets" in result.interpretation
    assert (
        lat.xs("vm", level="variant")["numbers are"]
        == (vm_vs_container.FUNCTIONAL if result.part("vm")["accelerator"] == "tcg" else vm_vs_container.SPEED)
    ).all()
    assert "The tc NAT in the vm: 2 of 2 checks passed" in result.interpretation
    if result.part("vm")["accelerator"] == "tcg":
        assert (head.xs("vm", level="receiver")["numbers are"] == vm_vs_container.FUNCTIONAL).all()
        assert "functional checks" in result.interpretation
    assert (head.xs("namespace", level="receiver")["numbers are"] == vm_vs_container.SPEED).all()
    # a normal end leaves nothing of the VM behind: no QEMU, tap, bridge, namespace or folder
    prefix = result.part("vm")["prefix"]
    assert prefix and not _run_processes(prefix) and not _links_of(prefix), prefix
    assert not (vm.VM_DIR / prefix).exists()
