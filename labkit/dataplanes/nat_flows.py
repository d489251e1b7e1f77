"""The eBPF NAT's SNAT flow table (bpf/nat.c's snat_out and snat_in maps), read and aged
from userspace: live flows with their counters, how full the table is, and the sweep that
removes idle flows. `labkit.dataplanes.nat.Nat` holds it (the maps are its own)."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass

from labkit.dataplanes.jiffies import jiffies_now, kernel_hz
from labkit.dataplanes.nat_encoding import from_be16 as _from_be16
from labkit.dataplanes.nat_encoding import from_be32 as _from_be32
from labkit.errors import InputError

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}


@dataclass
class Flow:
    proto: str
    inside: str
    inside_port: int  # ICMP: the echo identifier
    remote: str
    remote_port: int  # ICMP: 0
    nat_address: str
    nat_port: int
    out_packets: int
    out_bytes: int
    in_packets: int
    in_bytes: int
    age_s: float
    idle_s: float
    state: str = "active"  # "closing": TCP after a FIN or RST (the shorter timeout applies)
    timeout_s: float = 0.0  # the timeout that applies to it now


class FlowTable:
    """The flow-table half of the NAT's control plane: the class that mixes it in has
    `_maps`, `program`, `timeouts`, `max_flows`, `swept`, `stats()` and `_flows_created_cleared`."""

    def _pairs(self):
        """(out key, out entry, in key, in entry or None) of every SNAT flow."""
        t_in = self._maps["snat_in"]
        for k, v in self._maps["snat_out"].items():
            icmp = k.proto == socket.IPPROTO_ICMP
            rk = t_in.Key(k.dst, v.addr, 0 if icmp else k.dport, v.port, k.proto)
            try:
                rv = t_in[rk]
            except KeyError:
                rv = None
            yield k, v, rk, rv

    @staticmethod
    def _timing(k, v, rv) -> tuple[int, bool, str]:
        """(its last packet either way, in jiffies; closing; the name of the timeout that
        applies) of the flow of out key K, out entry V and in entry RV (or None)."""
        last = max(v.last, rv.last) if rv is not None else v.last
        closing = bool(v.closing or (rv is not None and rv.closing))
        return last, closing, {6: "tcp_closing" if closing else "tcp_established", 17: "udp"}.get(k.proto, "icmp")

    def _drop_flows(self, which) -> int:
        """Delete the SNAT flows (both entries) for which WHICH(out key, out entry, in entry) holds."""
        t_out, t_in = self._maps["snat_out"], self._maps["snat_in"]
        n = 0
        for k, v, rk, rv in list(self._pairs()):
            if which(k, v, rv):
                for t, key in ((t_in, rk), (t_out, k)):
                    with suppress(KeyError):
                        del t[key]
                n += 1
        return n

    def flows(self) -> list[Flow]:
        """Live SNAT flows, each with its packet and byte counters in both directions;
        ages and idle times in seconds (idle: since the last packet either way)."""
        now, hz = jiffies_now(), kernel_hz()
        out = []
        for k, v, _, rv in self._pairs():
            icmp = k.proto == socket.IPPROTO_ICMP
            last, closing, name = self._timing(k, v, rv)
            out.append(
                Flow(
                    PROTOCOLS.get(k.proto, str(k.proto)),
                    _from_be32(k.src),
                    _from_be16(k.sport),
                    _from_be32(k.dst),
                    0 if icmp else _from_be16(k.dport),
                    _from_be32(v.addr),
                    _from_be16(v.port),
                    v.packets,
                    v.bytes,
                    rv.packets if rv else 0,
                    rv.bytes if rv else 0,
                    max(0.0, (now - v.created) / hz),
                    max(0.0, (now - last) / hz),
                    "closing" if closing else "active",
                    self.timeouts[name],
                )
            )
        return sorted(out, key=lambda f: (f.inside, f.proto, f.inside_port, f.remote, f.remote_port))

    def sweep(self) -> int:
        """Remove every flow idle in both directions past its timeout (what the program
        does lazily when a packet meets one); returns how many. Call it periodically."""
        now, hz = jiffies_now(), kernel_hz()

        def idle(k, v, rv):
            last, _, name = self._timing(k, v, rv)
            return now - last > self.timeouts[name] * hz

        n = self._drop_flows(idle)
        # an inbound entry whose outbound partner is gone (never left by the program)
        t_in, t_out = self._maps["snat_in"], self._maps["snat_out"]
        partners = {
            (k.dst, v.addr, 0 if k.proto == socket.IPPROTO_ICMP else k.dport, v.port, k.proto) for k, v in t_out.items()
        }
        for rk, _ in list(t_in.items()):
            if (rk.src, rk.dst, rk.sport, rk.dport, rk.proto) not in partners:
                with suppress(KeyError):
                    del t_in[rk]
        self.swept += n
        return n

    def flows_table(self):
        """flows() as a pandas DataFrame (one row per flow)."""
        import pandas as pd

        cols = list(Flow.__dataclass_fields__)
        return pd.DataFrame([asdict(f) for f in self.flows()], columns=cols)

    def table_use(self) -> dict:
        """How full the SNAT flow table is, how many flows were created and have ended
        (expired, swept or removed), and how many new flows found no port or no room."""
        live = len(self._maps["snat_out"].items())
        stats = self.stats()
        created = stats["out_snat_new"]["packets"] - self._flows_created_cleared
        return {
            "entries": live,
            "capacity": self.max_flows,
            "full": live >= self.max_flows,
            "created": created,
            "evicted_or_stale": max(0, created - live),
            "swept": self.swept,
            "no_port_drops": stats["drop_no_port"]["packets"],
            "table_full_drops": stats["drop_table_full"]["packets"],
        }

    @contextmanager
    def sweeping(self, every_s: float = 1.0):
        """Sweep expired flows every EVERY_S seconds in a background thread while in the
        `with` (the program expires flows lazily only when a packet meets them)."""
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not 0.01 <= every_s <= 3600:
            raise InputError(f"every_s {every_s!r}: seconds 0.01..3600 between sweeps")
        stop = threading.Event()

        def loop():
            while not stop.wait(every_s):
                try:
                    self.sweep()
                except Exception:  # the program was unloaded under us: nothing left to sweep
                    return

        t = threading.Thread(target=loop, name="nat-sweeper", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(5)

    def clear_flows(self) -> None:
        """Forget every SNAT flow (both directions): new packets start new flows."""
        self._flows_created_cleared = self.stats()["out_snat_new"]["packets"]
        self._maps["snat_out"].clear()
        self._maps["snat_in"].clear()
        self.program.map("frags").clear()  # fragments in flight belong to the flows
