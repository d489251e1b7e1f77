"""`labkit provision INVENTORY`: make every host of an inventory ready, with Ansible.

The playbook is deploy/site.yml: it copies the workbench to each host and runs the same
scripts/setup.sh a single machine runs, plus the opt-in tuning for real NICs that the
inventory asks for (hugepages, DPDK driver binding, IRQ affinity, CPU isolation). This
module drives it through ansible-runner, in a private folder of its own that it removes
afterwards:

- the inventory is checked first (`labkit.testbed.inventory.parse`);
- host keys stay checked: each host's `labkit_known_hosts` becomes the SSH options
  Ansible uses, and `labkit_bastion` a ProxyCommand through that host;
- the workbench goes as an archive of the files git tracks (the working tree's version);
- a host that fails or cannot be reached is named, with the task and Ansible's message.

`check=True` runs Ansible's check mode: nothing is changed, every task says what it would do.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from labkit import ROOT
from labkit.errors import LabkitError, MissingDependency

PLAYBOOK = ROOT / "deploy" / "site.yml"
#: never packed: a host makes its own
SKIP = {".git", ".venv", "build", "data", "reports", "__pycache__", ".ipynb_checkpoints"}


class ProvisionFailed(LabkitError):
    """Ansible failed on a host, or could not reach it."""


def _ansible_runner():
    try:
        import ansible_runner
    except ImportError:
        raise MissingDependency("provisioning needs ansible-runner: run `sudo make setup`") from None
    if not shutil.which("ansible-playbook"):
        raise MissingDependency(
            "provisioning needs ansible-playbook (Debian package ansible-core): run `sudo make setup`"
        )
    return ansible_runner


def ssh_args(host, inventory) -> str:
    """The SSH options Ansible uses for HOST: its known_hosts, strictly; its bastion."""
    conn = host.connection(inventory)
    args = ["-o", "StrictHostKeyChecking=yes"]
    if conn["known_hosts"]:
        args += ["-o", f"UserKnownHostsFile={conn['known_hosts']}"]
    jump = conn["bastion"]
    if jump:
        hop = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-p", str(jump.get("port") or 22)]
        if jump.get("identity_file"):
            hop += ["-i", jump["identity_file"]]
        if jump.get("known_hosts"):
            hop += ["-o", f"UserKnownHostsFile={jump['known_hosts']}"]
        hop += ["-W", "%h:%p", f"{jump.get('user') or 'root'}@{jump['hostname']}"]
        args += ["-o", f"ProxyCommand={shlex.join(hop)}"]
    return shlex.join(args)


def ansible_inventory(inventory, path: Path) -> Path:
    """The inventory as Ansible reads it, with each host's SSH options added (unless set)."""
    import yaml

    doc = yaml.safe_load(Path(inventory.path).read_text())
    hosts = doc["all"].setdefault("hosts", {}) or {}
    doc["all"]["hosts"] = hosts
    for name, host in inventory.hosts.items():
        entry = hosts.setdefault(name, {}) or {}
        hosts[name] = entry
        entry.setdefault("ansible_ssh_common_args", ssh_args(host, inventory))
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pack(path: Path) -> Path:
    """A .tar.gz of the workbench's files (those git tracks, as they are in the working tree)."""
    try:
        files = (
            subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=60)
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.SubprocessError):
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    with tarfile.open(path, "w:gz") as tar:
        for rel in files:
            if rel and not SKIP & set(Path(rel).parts) and (ROOT / rel).is_file():
                tar.add(ROOT / rel, arcname=rel)
    return path


def provision(inventory_path, check: bool = False, log=print) -> dict:
    """Run deploy/site.yml on every host of INVENTORY_PATH. Returns Ansible's per-host
    counts ({'ok': {host: n}, 'changed': ..., 'skipped': ...}); raises ProvisionFailed
    naming each host that failed or could not be reached, with the task and the message."""
    from labkit.testbed import inventory

    inv = inventory.parse(inventory_path)
    runner = _ansible_runner()
    work = Path(tempfile.mkdtemp(prefix="labkit-provision-"))
    try:
        extravars = {"labkit_archive": str(pack(work / "labkit.tar.gz")) if not check else "(check mode)"}
        r = runner.run(
            private_data_dir=str(work),
            playbook=str(PLAYBOOK.resolve()),
            inventory=str(ansible_inventory(inv, work / "inventory.yml")),
            extravars=extravars,
            cmdline="--check --diff" if check else None,
            quiet=True,
            envvars={
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "True",
            },
        )
        problems = []
        for ev in r.events:
            data = ev.get("event_data", {})
            if ev.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                res = data.get("res", {})
                msg = (res.get("msg") or res.get("stderr") or "").strip().splitlines()
                what = "unreachable" if ev["event"] == "runner_on_unreachable" else f"task '{data.get('task')}' failed"
                problems.append(f"host {data.get('host')}: {what}: {msg[0] if msg else 'no message'}")
        stats = r.stats or {}
        if problems or r.status != "successful":
            hint = (
                "; check each host's address, key and known_hosts (docs/remote-hosts.md)"
                if any("unreachable" in p for p in problems)
                else ""
            )
            raise ProvisionFailed(
                f"provisioning {inv.path} {r.status}:\n  "
                + "\n  ".join(problems or [f"ansible-playbook exited {r.rc}"])
                + hint
            )
        for host in inv.hosts:
            log(
                f"{host}: {stats.get('ok', {}).get(host, 0)} ok, {stats.get('changed', {}).get(host, 0)} "
                f"{'would change' if check else 'changed'}, {stats.get('skipped', {}).get(host, 0)} skipped"
            )
        return {k: dict(stats.get(k) or {}) for k in ("ok", "changed", "skipped")} | {"events": _task_results(r)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _task_results(r) -> list:
    """(host, task, outcome) of every task result, e.g. ('dut1', 'hugepages ...', 'changed')."""
    out = []
    for ev in r.events:
        data = ev.get("event_data", {})
        if ev.get("event") in ("runner_on_ok", "runner_on_skipped"):
            outcome = (
                "skipped"
                if ev["event"] == "runner_on_skipped"
                else ("changed" if data.get("res", {}).get("changed") else "ok")
            )
            out.append((data.get("host"), data.get("task"), outcome))
    return out
