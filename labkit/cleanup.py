"""`labkit clean`: find what crashed runs left in the kernel and undo it.

It sits above everything it cleans (the testbed, DPDK): every kernel object labkit
creates carries its run's prefix, and every run's registry file (`testbed.runs`) names
its process and what it changed on interfaces it does not own. Objects whose prefix
belongs to no live labkit process are leftovers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from contextlib import suppress

from labkit import ovs
from labkit.dpdk import runtime
from labkit.testbed.hosts import kill_pids, netlink, pids_in_netns
from labkit.testbed.runs import (
    NETNS_DIR,
    PREFIX_RE,
    REGISTRY_DIR,
    RULE_COMMENT,
    RUN_ENV,
    live_prefixes,
    owner_alive,
    require_root,
)
from labkit.testbed.vm import VM_DIR


def labkit_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if PREFIX_RE.match(p.name))


def labkit_root_links() -> list[str]:
    with netlink() as ipr:
        names = [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]
    return sorted(n for n in names if n and PREFIX_RE.match(n))


def _labkit_iptables_rules() -> list[tuple[str, str, str, str]]:
    """(binary, table, run prefix, rule) of root-namespace rules whose comment names a labkit run."""
    found = []
    for binary in ("iptables", "ip6tables"):
        try:
            out = subprocess.run([f"{binary}-save"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        table = None
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and RULE_COMMENT in line:
                m = re.search(r"labkit:(lk[0-9a-f]{4})", line)
                if m:
                    found.append((binary, table, m.group(1), line[3:]))
    return found


def _run_of(name: str) -> str:
    """The run prefix a kernel object's name starts with."""
    return name[:6]


def leftovers(include_live: bool = False, prefix: str | None = None) -> dict:
    """What crashed runs left: namespaces, root links, foreign records, iptables rules,
    processes. With PREFIX: what run PREFIX holds, whether its process lives or not."""
    if prefix is not None:
        mine = lambda name: name == prefix or name.startswith(prefix + "-")  # noqa: E731
    else:
        live = set() if include_live else live_prefixes()
        mine = lambda name: bool(PREFIX_RE.match(name)) and _run_of(name) not in live  # noqa: E731
    registries = [f for f in REGISTRY_DIR.glob("lk*.json") if mine(f.stem) and _same_netns(f)]
    return {
        "namespaces": [n for n in labkit_namespaces() if mine(n)],
        "links": [n for n in labkit_root_links() if mine(n)],
        "registries": registries,
        "iptables": [r for r in _labkit_iptables_rules() if mine(r[2])],
        "processes": [pid for pid, run in run_processes() if mine(run)],
        "ovs": [d.name for d in ovs.switch_dirs() if mine(d.name)],  # a run's own Open vSwitch
    }


def _same_netns(registry) -> bool:
    """Whether REGISTRY's changes were made in this network namespace, or in one that is
    gone (a remote host's session records its own: a "host" that is a namespace of this
    machine is cleaned from inside it, by `clean_hosts`)."""
    try:
        netns = json.loads(registry.read_text()).get("netns")
    except (OSError, ValueError):
        return True
    if netns is None or netns == os.readlink("/proc/self/ns/net"):
        return True
    named = {os.stat(p).st_ino for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()
    return int(re.sub(r"\D", "", netns) or 0) not in named


def run_processes() -> list[tuple[int, str]]:
    """(pid, run prefix) of processes a run started (they carry the run in their
    environment), wherever they are: a generator on a real interface is in no namespace."""
    marker = f"{RUN_ENV}=".encode()
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(marker):
                run = var[len(marker) :].decode(errors="replace")
                if PREFIX_RE.match(run):
                    out.append((int(entry), run[:6]))
                break
    return out


#: what `clean` logs for one item of each kind it removed
SINGULAR = {
    "namespaces": "namespace",
    "links": "link",
    "foreign": "change on a foreign interface",
    "iptables": "iptables rule",
    "processes": "process",
    "dpdk": "DPDK runtime directory",
    "ovs": "Open vSwitch of a run",
}


def clean(include_live: bool = False, log=print, student: str | None = "caller") -> dict:
    """Remove what crashed labkit runs left behind, found by the labkit prefix only.

    Runs whose process is still alive are left alone unless ``include_live``. On a class
    machine (LABKIT_STUDENT=s07, labkit.teaching) only that student's runs are touched: those
    whose namespaces or links carry the slot; ``student=None`` (or an empty LABKIT_STUDENT)
    means everyone's. Returns what was removed, by kind."""
    require_root("labkit clean")
    live = set() if include_live else live_prefixes()
    found = leftovers(include_live)
    student = os.environ.get("LABKIT_STUDENT") if student == "caller" else student
    mine = {n[:6] for n in found["namespaces"] + found["links"] if n[7:].startswith(student or "")}
    if student:
        run_of_pid = dict(run_processes())
        key = {"registries": lambda f: f.stem, "iptables": lambda r: r[2], "processes": lambda p: run_of_pid.get(p, "")}
        found = {k: [x for x in v if key.get(k, _run_of)(x)[:6] in mine] for k, v in found.items()}
    return _undo(found, lambda run: run not in live and (not student or run in mine), log)


def clean_run(prefix: str, log=print) -> dict:
    """Undo everything of run PREFIX and nothing of any other run, as `clean` would once its
    process is gone (the run's watcher calls this when the process dies without closing it).
    Returns what was removed, by kind."""
    require_root("undoing a run")
    if not PREFIX_RE.match(prefix) or len(prefix) != 6:
        raise ValueError(f"run prefix {prefix!r} must be 'lk' + 4 hex digits")
    return _undo(leftovers(prefix=prefix), lambda run: run == prefix, log)


def clean_dead_runs(log=print) -> dict:
    """Undo each run registered in this registry whose process is gone, and nothing else:
    what a batch's kernels killed outright left (their watchers normally undo it first).
    Unlike `clean`, it never removes what no registry here names, so it cannot take a
    testbed from a run that keeps its registry elsewhere (another LABKIT_RUNTIME_DIR).
    Returns what was removed, by kind."""
    removed: dict = {}
    for reg in sorted(REGISTRY_DIR.glob("lk*.json")):
        try:
            state = json.loads(reg.read_text())
        except (OSError, ValueError):
            continue
        if PREFIX_RE.match(reg.stem) and len(reg.stem) == 6 and not owner_alive(state):
            for kind, items in clean_run(reg.stem, log=log).items():
                removed.setdefault(kind, []).extend(items)
    return removed


def _undo(found: dict, dpdk_run_gone, log) -> dict:
    """Remove FOUND (from `leftovers`): processes first, then what they used."""
    from pyroute2 import netns

    removed = {"namespaces": [], "links": [], "foreign": [], "iptables": [], "processes": list(found["processes"])}
    kill_pids(found["processes"])
    for reg in found["registries"]:
        try:
            state = json.loads(reg.read_text())
        except (OSError, ValueError):
            state = {}
        for rec in state.get("foreign", []):
            try:
                _undo_foreign(rec)
                removed["foreign"].append(rec)
            except Exception as exc:  # keep cleaning the rest
                log(f"could not undo {rec}: {exc}")
    for binary, table, _prefix, rule in found["iptables"]:
        subprocess.run([binary, "-w", "-t", table, "-D", *shlex.split(rule)], capture_output=True)
        removed["iptables"].append(f"{binary} -t {table} -A {rule}")
    for ns in found["namespaces"]:
        pids = pids_in_netns(ns)
        kill_pids(pids)
        removed["processes"].extend(pids)
        try:
            netns.remove(ns)
            removed["namespaces"].append(ns)
        except FileNotFoundError:
            pass  # removed meanwhile (by its own run, or another clean)
        except OSError as exc:
            log(f"could not remove namespace {ns}: {exc}")
    if found["links"]:
        with netlink() as ipr:
            for name in found["links"]:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    try:
                        ipr.link("del", index=idx[0])
                        removed["links"].append(name)
                    except Exception as exc:
                        log(f"could not remove link {name}: {exc}")
    stale = [
        p for p, prefix in runtime.file_prefixes().items() if PREFIX_RE.match(prefix) and dpdk_run_gone(_run_of(prefix))
    ]
    kill_pids(stale)
    removed["processes"].extend(stale)
    removed["dpdk"] = [
        d
        for d in runtime.runtime_dirs()
        if PREFIX_RE.match(os.path.basename(d)) and dpdk_run_gone(_run_of(os.path.basename(d)))
    ]
    for d in removed["dpdk"]:
        runtime.remove_runtime_dir(os.path.basename(d))
    removed["ovs"] = list(found.get("ovs", []))  # its daemons (if alive) stopped, its folder removed
    for name in removed["ovs"]:
        ovs.remove_dir(ovs.OVS_DIR / name)
    # the registry goes last: while it is there, the run is not fully undone
    for reg in found["registries"]:
        reg.unlink(missing_ok=True)
        shutil.rmtree(reg.with_name(f"{reg.stem}-bpf"), ignore_errors=True)  # a remote session's BPF sources
        shutil.rmtree(VM_DIR / reg.stem, ignore_errors=True)  # a VM's keys and start script (testbed.vm)
    for kind, items in removed.items():
        for item in items:
            log(f"removed {SINGULAR.get(kind, kind)}: {item}")
    return removed


def _undo_foreign(rec: dict) -> None:
    """Undo one recorded change on an interface labkit does not own."""
    kind = rec.get("kind")
    with netlink() as ipr:
        idx = ipr.link_lookup(ifname=rec["ifname"])
        if not idx:
            return
        if kind == "xdp":
            ipr.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", rec.get("flags", 0))]})
        elif kind == "clsact":
            with suppress(Exception):
                ipr.tc("del", "clsact", idx[0])
        elif kind == "address":
            with suppress(Exception):
                ipr.addr("del", index=idx[0], address=rec["address"], prefixlen=rec["prefixlen"])
        elif kind == "promisc":  # a receiver on a real interface (experiments.l2fwd_dut)
            ipr.link("set", index=idx[0], flags=0, change=0x100)
        elif kind == "route":  # an inventory run's route on a client or server (experiments.nat.inventory_lab)
            with suppress(Exception):
                ipr.route("del", dst=rec["dst"], dst_len=rec["dst_len"], gateway=rec["gateway"], oif=idx[0])
        elif kind == "offload":  # a checksum offload an inventory run turned off (experiments.nat.inventory_lab)
            subprocess.run(["ethtool", "-K", rec["ifname"], rec["feature"], "on"], capture_output=True, timeout=10)


def clean_hosts(inventory, include_live: bool = False, log=print) -> dict:
    """`clean` on every host of INVENTORY (an Ansible YAML inventory file), each through
    a session of its own: what a crashed or cut-off run left on a remote host is undone
    there. Returns {host: what was removed, by kind, or the reason it could not be reached}."""
    from labkit.testbed import inventory as inv
    from labkit.testbed.remote import HostUnreachable, RemoteHost

    parsed = inv.parse(inventory)
    out = {}
    for name, host in parsed.hosts.items():
        try:
            with RemoteHost(**host.connection(parsed)) as remote:
                out[name] = remote.call(clean_here, include_live)
        except HostUnreachable as exc:
            out[name] = f"unreachable: {exc}"
        if isinstance(out[name], str):
            log(f"{name}: {out[name]}")
        for kind, items in (out[name] if isinstance(out[name], dict) else {}).items():
            for item in items:
                log(f"{name}: removed {SINGULAR.get(kind, kind)}: {item}")
        if isinstance(out[name], dict) and not any(out[name].values()):
            log(f"{name}: checked, nothing left behind")
    return out


def clean_here(include_live: bool = False) -> dict:
    """`clean` on this host, its result as plain text (called on remote hosts by
    `clean_hosts`; the calling session's own run is live, so it is left alone)."""
    removed = clean(include_live=include_live, log=lambda msg: None, student=None)
    return {kind: [str(x) for x in items] for kind, items in removed.items()}
