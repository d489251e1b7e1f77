"""`labkit clean`: find what crashed runs left in the kernel and undo it.

It sits above everything it cleans (the testbed, DPDK): every kernel object labkit
creates carries its run's prefix, and every run's registry file (`testbed.runs`) names
its process and what it changed on interfaces it does not own. Objects whose prefix
belongs to no live labkit process are leftovers.
"""
from __future__ import annotations
import json
import re
import subprocess
from labkit.testbed.runs import NETNS_DIR, PREFIX_RE, REGISTRY_DIR, RULE_COMMENT, live_prefixes, require_root
from labkit.testbed.hosts import kill_pids, pids_in_netns


def labkit_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if PREFIX_RE.match(p.name))


def labkit_root_links() -> list[str]:
    from labkit.testbed.hosts import netlink

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


def leftovers(include_live: bool = False) -> dict:
    """What crashed runs left: namespaces, root links, foreign records, iptables rules."""
    live = set() if include_live else live_prefixes()
    stale = lambda name: name[:6] not in live  # noqa: E731
    dead_registries = []
    if REGISTRY_DIR.is_dir():
        for f in REGISTRY_DIR.glob("lk*.json"):
            if stale(f.stem):
                dead_registries.append(f)
    return {
        "namespaces": [n for n in labkit_namespaces() if stale(n)],
        "links": [n for n in labkit_root_links() if stale(n)],
        "registries": dead_registries,
        "iptables": [r for r in _labkit_iptables_rules() if stale(r[2])],
    }


def clean(include_live: bool = False, log=print) -> dict:
    """Remove what crashed labkit runs left behind, found by the labkit prefix only.

    Runs whose process is still alive are left alone unless ``include_live``.
    Returns what was removed, by kind."""
    require_root("labkit clean")
    from pyroute2 import netns

    from labkit.testbed.hosts import netlink

    found = leftovers(include_live)
    removed = {"namespaces": [], "links": [], "foreign": [], "iptables": [], "processes": []}
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
        reg.unlink(missing_ok=True)
    for binary, table, _prefix, rule in found["iptables"]:
        subprocess.run([binary, "-t", table, "-D", *_split_rule(rule)], capture_output=True)
        removed["iptables"].append(f"{binary} -t {table} -A {rule}")
    for ns in found["namespaces"]:
        pids = pids_in_netns(ns)
        kill_pids(pids)
        removed["processes"].extend(pids)
        try:
            netns.remove(ns)
            removed["namespaces"].append(ns)
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
    from labkit.dpdk import runtime

    removed["dpdk"] = runtime.clean_runtime_dirs(log=lambda *a: None)
    stale = [p for p in runtime.dpdk_processes() if _dpdk_prefix_dead(p, include_live)]
    kill_pids(stale)
    removed["processes"].extend(stale)
    for kind, items in removed.items():
        for item in items:
            log(f"removed {kind[:-1] if kind.endswith('s') else kind}: {item}")
    return removed


def _dpdk_prefix_dead(pid: int, include_live: bool) -> bool:
    """Whether the DPDK process PID belongs to a labkit run that is gone."""
    try:
        args = open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:
        return False
    for i, a in enumerate(args):
        if a == "--file-prefix" and i + 1 < len(args):
            prefix = args[i + 1][:6]
        elif a.startswith("--file-prefix="):
            prefix = a.split("=", 1)[1][:6]
        else:
            continue
        return bool(PREFIX_RE.match(prefix)) and (include_live or prefix not in live_prefixes())
    return False


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _undo_foreign(rec: dict) -> None:
    """Undo one recorded change on an interface labkit does not own."""
    from labkit.testbed.hosts import netlink

    kind = rec.get("kind")
    with netlink() as ipr:
        idx = ipr.link_lookup(ifname=rec["ifname"])
        if not idx:
            return
        if kind == "xdp":
            ipr.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", rec.get("flags", 0))]})
        elif kind == "clsact":
            try:
                ipr.tc("del", "clsact", idx[0])
            except Exception:
                pass
        elif kind == "address":
            try:
                ipr.addr("del", index=idx[0], address=rec["address"], prefixlen=rec["prefixlen"])
            except Exception:
                pass
