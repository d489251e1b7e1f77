"""The VM host kind (labkit.testbed.vm): a local VM in a role's place, booted for real.

A boot under TCG (no usable KVM) takes 40 to 170 s here, so the suite boots one VM for
everything a VM must do, in the notebook's experiment (`slow`): it boots, native XDP
attaches on its virtio-net interface and counts a namespace sender's packets, the tc NAT
in it translates and passes its checks, probes cross it, and a normal end leaves nothing.
Its undo on an error, Ctrl-C and a kill is in test_vm_undo.py (boots cut short)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labkit.errors import InputError
from labkit.testbed import vm

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")


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
    vm_meta = result.part("vm")
    assert vm_meta["facts"]["nics"][vm_meta["interfaces"][0]]["driver"] == "virtio_net", vm_meta["facts"]["nics"]
    drop = result.table[result.table["kind"] == "trial"]
    assert set(drop["program"]) == {"xdp_native"}  # attached native in the guest (no fallback to generic)
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
