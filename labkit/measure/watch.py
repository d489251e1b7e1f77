"""A live rate view: per-second packets, bits and drops of interfaces, and the counters of
the XDP programs attached to them, like nicstat or xdp-bench's per-second lines.

    $ labkit watch lk3f2a                 # every interface of a live run (its namespaces)
    $ labkit watch lk3f2a-dut:lk3f2a-dut0 # one interface in a namespace
    $ labkit watch eth0 -n 5              # an interface of the root namespace, five lines

    from labkit.measure import watch
    for rows in watch.rates(watch.resolve(["lk3f2a"]), interval=1.0, count=3):
        print(watch.format_rows(rows))

Each line is one interface over one interval: rx and tx packets per second and bits per
second (from the kernel's 64-bit link counters), receive and transmit drops per second,
the driver's own drop counters from `ethtool -S` (a veth's: frames its ring or an XDP
redirect could not take, `ring`, apart from frames an XDP program dropped on purpose,
`xdp_drop`; these never reach the link counters), and the XDP program attached (name and id) with the rates of its counters. A program's
counters are its small per-CPU arrays (`BPF_PERCPU_ARRAY`, at most MAX_SLOTS slots of one
or two 64-bit numbers, as bpf/include/counters.h makes them), summed over CPUs and read
through the kernel's map ids, so any program labkit attached shows its counters without
knowing which program it is. A slot of two numbers (packets, bytes) shows its packets.
Nothing is changed anywhere: watching is reading.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import bpf
from labkit.errors import InputError
from labkit.testbed import runs
from labkit.testbed.hosts import Host

NETNS_DIR = Path("/run/netns")
MAX_SLOTS = 16  # larger arrays are tables, not counters
PERCPU_ARRAY = 6  # BPF_MAP_TYPE_PERCPU_ARRAY


@dataclass(frozen=True)
class Target:
    """An interface to watch: its name and the namespace it lives in (None: the root one)."""

    netns: str | None
    name: str

    def __str__(self):
        return f"{self.netns}:{self.name}" if self.netns else self.name


def _links(netns: str | None) -> list[str]:
    """The interface names of NETNS (None: the root namespace); [] for a namespace removed
    meanwhile (another run's, finishing while it is listed)."""
    try:
        with Host("watch", netns).ipr() as ipr:
            return [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]
    except Exception:
        if netns is not None and not (NETNS_DIR / netns).exists():
            return []
        raise


def _namespaces() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def resolve(specs: list[str]) -> list[Target]:
    """The interfaces SPECS name: a run prefix (lkXXXX: every interface of its namespaces and
    its root links), NETNS:IFACE, or IFACE (the root namespace's, else the one namespace
    that has it). No SPECS: the interfaces of every live labkit run. Unknown names are an
    InputError saying what exists."""
    specs = list(specs or [])
    if not specs:
        specs = sorted(runs.live_prefixes())
        if not specs:
            raise InputError(
                "no labkit run is live: name an interface (`labkit watch eth0`, "
                "`labkit watch NETNS:IFACE`) or a run prefix (lkXXXX)"
            )
    out: list[Target] = []
    for spec in specs:
        if runs.PREFIX_RE.fullmatch(spec) and len(spec) == 6:
            found = [
                Target(ns, n) for ns in _namespaces() if ns.startswith(spec + "-") for n in _links(ns) if n != "lo"
            ]
            found += [Target(None, n) for n in _links(None) if n.startswith(spec + "-")]
            if not found:
                raise InputError(
                    f"run {spec} has no namespace or interface (finished, or not a labkit run); "
                    f"live runs: {', '.join(sorted(runs.live_prefixes())) or 'none'}"
                )
            out += found
        elif ":" in spec:
            ns, name = spec.split(":", 1)
            if ns not in _namespaces():
                raise InputError(f"namespace {ns!r} does not exist; namespaces: {', '.join(_namespaces()) or 'none'}")
            if name not in _links(ns):
                raise InputError(f"interface {name!r} does not exist in {ns}; there: {', '.join(_links(ns))}")
            out.append(Target(ns, name))
        elif spec in _links(None):
            out.append(Target(None, spec))
        else:
            where = [ns for ns in _namespaces() if spec in _links(ns)]
            if len(where) != 1:
                raise InputError(
                    f"interface {spec!r} is not in the root namespace"
                    + (
                        f" and is in several namespaces ({', '.join(where)}): write NETNS:{spec}"
                        if where
                        else f" nor in any namespace; root interfaces: {', '.join(_links(None))}"
                    )
                )
            out.append(Target(where[0], spec))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- a program's counters, by map id
def _info(get_info, fd: int, size: int, setup=None) -> bytes:
    buf = ctypes.create_string_buffer(size)
    if setup:
        setup(buf)
    n = ctypes.c_uint32(size)
    if get_info(fd, buf, ctypes.byref(n)) != 0:
        raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd")
    return buf.raw


def program_counters(prog_id: int) -> tuple[str, dict]:
    """(program name, {'map[slot]': value summed over CPUs}) of the program with PROG_ID;
    ('?', {}) where the program is gone."""
    lib = bpf.libbpf()
    get_prog, get_map = lib.bpf_prog_get_fd_by_id, lib.bpf_map_get_fd_by_id
    info = lib.bpf_obj_get_info_by_fd
    fd = get_prog(prog_id)
    if fd < 0:
        return "?", {}
    try:
        raw = _info(info, fd, 256)
        name = raw[64:80].split(b"\0")[0].decode(errors="replace")
        nmaps = int.from_bytes(raw[52:56], "little")
        ids = (ctypes.c_uint32 * max(1, nmaps))()

        def want_ids(buf):
            ctypes.memmove(ctypes.addressof(buf) + 52, ctypes.byref(ctypes.c_uint32(nmaps)), 4)
            ctypes.memmove(ctypes.addressof(buf) + 56, ctypes.byref(ctypes.c_uint64(ctypes.addressof(ids))), 8)

        if nmaps:
            _info(info, fd, 256, want_ids)
    finally:
        os.close(fd)
    counters = {}
    ncpu = os.cpu_count() or 1
    for map_id in list(ids)[:nmaps]:
        mfd = get_map(map_id)
        if mfd < 0:
            continue
        try:
            m = _info(info, mfd, 96)
            kind, key_size, value_size, entries = (int.from_bytes(m[o : o + 4], "little") for o in (0, 8, 12, 16))
            mname = m[24:40].split(b"\0")[0].decode(errors="replace")
            if kind != PERCPU_ARRAY or key_size != 4 or value_size not in (8, 16) or entries > MAX_SLOTS:
                continue
            stride = (value_size + 7) // 8 * 8
            value = ctypes.create_string_buffer(stride * ncpu)
            for slot in range(entries):
                key = ctypes.c_uint32(slot)
                if lib.bpf_map_lookup_elem(mfd, ctypes.byref(key), value) != 0:
                    continue
                counters[f"{mname}[{slot}]"] = sum(
                    int.from_bytes(value.raw[c * stride : c * stride + 8], "little") for c in range(ncpu)
                )
        finally:
            os.close(mfd)
    return name, counters


# ---------------------------------------------------------------- samples and rates
@dataclass
class Sample:
    target: Target
    t: float
    stats: dict
    prog_id: int | None = None
    prog_name: str = ""
    counters: dict = field(default_factory=dict)
    driver: dict = field(default_factory=dict)  # ring_drops, xdp_drops summed over queues (ethtool -S)


def driver_drops(target: Target) -> dict:
    """{'ring_drops': n, 'xdp_drops': n} from the driver's `ethtool -S` counters (summed over
    queues; {} where ethtool or the counters are missing)."""
    cp = Host("watch", target.netns).run(["ethtool", "-S", target.name], check=False, timeout=10)
    if cp.returncode != 0:
        return {}
    out = {"ring_drops": 0, "xdp_drops": 0}
    for line in cp.stdout.splitlines()[1:]:
        name, _, value = line.rpartition(":")
        name = name.strip()
        if "drop" not in name or not value.strip().isdigit():
            continue
        out["xdp_drops" if "xdp" in name else "ring_drops"] += int(value)
    return out


def sample(target: Target) -> Sample | None:
    """The counters of TARGET now; None where the interface is gone."""
    with Host("watch", target.netns).ipr() as ipr:
        idx = ipr.link_lookup(ifname=target.name)
        if not idx:
            return None
        link = ipr.link("get", index=idx[0])[0]
    stats = dict(link.get_attr("IFLA_STATS64") or {})
    xdp = dict((link.get_attr("IFLA_XDP") or {}).get("attrs", []))
    s = Sample(target, time.monotonic(), stats, driver=driver_drops(target))
    if xdp.get("IFLA_XDP_ATTACHED"):
        s.prog_id = xdp.get("IFLA_XDP_PROG_ID")
        if s.prog_id:
            s.prog_name, s.counters = program_counters(s.prog_id)
    return s


def rate_row(a: Sample, b: Sample) -> dict:
    """Per-second rates between two samples of one interface."""
    dt = max(1e-9, b.t - a.t)

    def r(key):
        return max(0, b.stats.get(key, 0) - a.stats.get(key, 0)) / dt

    row = {
        "iface": str(b.target),
        "seconds": dt,
        "rx_pps": r("rx_packets"),
        "tx_pps": r("tx_packets"),
        "rx_bps": r("rx_bytes") * 8,
        "tx_bps": r("tx_bytes") * 8,
        "rx_drop_ps": r("rx_dropped") + r("rx_missed_errors"),
        "tx_drop_ps": r("tx_dropped"),
        **{f"{k[:-1]}_ps": max(0, v - a.driver.get(k, 0)) / dt for k, v in b.driver.items()},
        "xdp": f"{b.prog_name}#{b.prog_id}" if b.prog_id else "",
        "counters": {},
    }
    if b.prog_id and b.prog_id == a.prog_id:
        row["counters"] = {k: max(0, v - a.counters.get(k, 0)) / dt for k, v in b.counters.items()}
    return row


class Sampler:
    """Rates of TARGETS from one step to the next: each `step()` samples every interface
    and returns one row per interface (see `rate_row`) over the time since the previous
    step. `rates()` (`labkit watch`) and the labs' live plot (labkit.widgets.rateplot) both
    step one, so a rate is computed in one place. An interface that disappears is left out
    from then on."""

    def __init__(self, targets: list[Target]):
        self.targets = list(targets)
        self.prev = {t: sample(t) for t in self.targets}

    def step(self) -> list[dict]:
        rows = []
        for t in self.targets:
            if self.prev.get(t) is None:
                continue
            cur = sample(t)
            if cur is not None:
                rows.append(rate_row(self.prev[t], cur))
            self.prev[t] = cur
        return rows


def check_interval(interval: float) -> None:
    if not 0.05 <= interval <= 3600:
        raise InputError(f"interval {interval!r}: 0.05..3600 seconds")


def rates(targets: list[Target], interval: float = 1.0, count: int | None = None):
    """Yield, every INTERVAL seconds, one row per interface (see `rate_row`); COUNT lines
    (None: until interrupted). An interface that disappears is left out from then on."""
    check_interval(interval)
    if count is not None and count < 1:
        raise InputError(f"count {count!r}: at least 1 line")
    sampler = Sampler(targets)
    done = 0
    next_t = time.monotonic() + interval
    while count is None or done < count:
        time.sleep(max(0.0, next_t - time.monotonic()))
        next_t += interval
        done += 1
        yield sampler.step()


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:6.2f} {prefix}{unit}"
    return f"{v:6.0f} {unit}"


def per_s(v: float) -> str:
    """A count per second, compact: 0/s, 812/s, 46.8k/s, 1.25M/s."""
    for scale, prefix in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{prefix}/s"
    return f"{v:.0f}/s"


def format_rows(rows: list[dict], clock: str | None = None) -> str:
    """One line per interface, as `labkit watch` prints them."""
    clock = clock or time.strftime("%H:%M:%S")
    lines = []
    width = max((len(r["iface"]) for r in rows), default=10)
    for r in rows:
        line = (
            f"{clock} {r['iface']:<{width}}  rx {_si(r['rx_pps'], 'pps')} {_si(r['rx_bps'], 'b/s')}"
            f"  tx {_si(r['tx_pps'], 'pps')} {_si(r['tx_bps'], 'b/s')}"
            f"  drop rx {per_s(r['rx_drop_ps'])} tx {per_s(r['tx_drop_ps'])}"
        )
        if "ring_drop_ps" in r:
            line += f" ring {per_s(r['ring_drop_ps'])} xdp_drop {per_s(r['xdp_drop_ps'])}"
        if r["xdp"]:
            busy = {k: v for k, v in r["counters"].items() if v}
            line += f"  xdp {r['xdp']}" + "".join(f" {k} {per_s(v)}" for k, v in busy.items())
        lines.append(line)
    return "\n".join(lines)


def main(specs: list[str], interval: float = 1.0, count: int | None = None, out=print) -> int:
    """`labkit watch`: resolve SPECS, then print the rates until COUNT lines or Ctrl-C."""
    targets = resolve(specs)
    out(f"watching {len(targets)} interface(s): {', '.join(map(str, targets))} (every {interval:g} s; Ctrl-C stops)")
    try:
        for rows in rates(targets, interval, count):
            out(format_rows(rows))
    except KeyboardInterrupt:
        pass
    return 0
