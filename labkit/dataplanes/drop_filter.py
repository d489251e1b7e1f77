"""The control plane of the drop filter (bpf/drop_filter.c): rules in BPF maps, changed
from userspace while the program runs, and its per-verdict counters.

    with DropFilter() as f:                      # compiles and loads the program
        with f.attach_xdp(iface, "generic"):     # or f.attach_tc(iface)
            f.drop_port(9)                       # takes effect at once, no reload
            ...
        f.counters()  # {'pass': {...}, 'drop_port': {'packets': n, 'bytes': b}, ...}
"""

from __future__ import annotations

import ctypes
import ipaddress

from labkit import bpf, bpf_enums
from labkit.dataplanes import ControlPlane, read_when_needed
from labkit.errors import InputError

HEADER = "drop_filter.h"  # bpf/include/drop_filter.h: the program's enums, the one source of these names


def _header() -> dict:
    """VERDICTS, the index of the `counters` map ("pass", "drop_all", "drop_proto", ...),
    and the rule bits RULE_ALL, RULE_PROTO, RULE_PORT, RULE_SRC."""
    rules = bpf_enums.enum_values(HEADER, "drop_filter_rule")
    return {
        "VERDICTS": bpf_enums.enum_names(HEADER, "drop_filter_verdict", "DF_"),
        **{f"RULE_{k}": rules[f"DF_RULE_{k}"] for k in ("ALL", "PROTO", "PORT", "SRC")},
    }


header, __getattr__ = read_when_needed(_header)
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58, "sctp": 132}


class DropFilter(ControlPlane):
    SOURCE = "drop_filter"

    def __init__(self):
        self.program = bpf.load(self.SOURCE)
        self._maps = {n: self.program.map(n) for n in ("active", "proto_rules", "port_rules", "src_rules", "counters")}
        # the array entries this filter set: clearing and listing touch only these
        self._protos: set[int] = set()
        self._ports: set[int] = set()

    # ---- lifecycle

    def xdp_function(self):
        return self.program.function("xdp_filter", "xdp")

    def tc_function(self):
        return self.program.function("tc_filter", "tc")

    def attach_xdp(self, iface, mode: str = "native") -> bpf.XdpAttachment:
        return bpf.attach_xdp(iface, self.xdp_function(), mode)

    def attach_tc(self, iface, direction: str = "ingress") -> bpf.TcAttachment:
        return bpf.attach_tc(iface, self.tc_function(), direction)

    # ---- rules
    def _active(self) -> int:
        return int(self._maps["active"][ctypes.c_int(0)].value)

    def _set_bit(self, bit: int, on: bool) -> None:
        cur = self._active()
        self._maps["active"][ctypes.c_int(0)] = ctypes.c_uint32((cur | bit) if on else (cur & ~bit))

    def drop_all(self, on: bool = True) -> None:
        """Drop every packet (the XDP fast-drop of the experiment)."""
        self._set_bit(header().RULE_ALL, on)

    def drop_proto(self, proto) -> None:
        """Drop an IP protocol, by name ('udp') or number (17)."""
        num = self._proto(proto)
        t = self._maps["proto_rules"]
        t[t.Key(num)] = t.Leaf(1)
        self._protos.add(num)
        self._set_bit(header().RULE_PROTO, True)

    def drop_port(self, port: int) -> None:
        """Drop UDP and TCP packets to destination port PORT."""
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise InputError(f"port {port!r} is out of range 0..65535")
        t = self._maps["port_rules"]
        t[t.Key(port)] = t.Leaf(1)
        self._ports.add(port)
        self._set_bit(header().RULE_PORT, True)

    def drop_src(self, prefix: str) -> None:
        """Drop IPv4 packets from source PREFIX, e.g. '10.11.0.0/24'."""
        try:
            net = ipaddress.IPv4Network(prefix, strict=False)
        except ValueError:
            raise InputError(f"source prefix {prefix!r} is not an IPv4 prefix like '10.11.0.0/24'") from None
        t = self._maps["src_rules"]
        key = t.Key(net.prefixlen, int.from_bytes(net.network_address.packed, "little"))
        t[key] = t.Leaf(1)
        self._set_bit(header().RULE_SRC, True)

    def clear(self) -> None:
        """Remove every rule: everything passes."""
        for name, keys in (("proto_rules", self._protos), ("port_rules", self._ports)):
            t = self._maps[name]
            for k in keys:
                t[t.Key(k)] = t.Leaf(0)
            keys.clear()
        self._maps["src_rules"].clear()
        self._maps["active"][ctypes.c_int(0)] = ctypes.c_uint32(0)

    def rules(self) -> dict:
        """The rules as the maps hold them (protocols and ports: the entries set to 1 among
        those this filter wrote; sources: the trie's prefixes)."""
        out = {"drop_all": bool(self._active() & header().RULE_ALL)}
        out["protocols"] = sorted(k for k in self._protos if self._maps["proto_rules"][ctypes.c_int(k)].value)
        out["ports"] = sorted(k for k in self._ports if self._maps["port_rules"][ctypes.c_int(k)].value)
        out["sources"] = sorted(
            f"{ipaddress.IPv4Address(k.addr.to_bytes(4, 'little'))}/{k.prefixlen}"
            for k in self._maps["src_rules"].keys()
        )
        return out

    @staticmethod
    def _proto(proto) -> int:
        if isinstance(proto, str):
            if proto.lower() not in PROTOCOLS:
                raise InputError(f"protocol {proto!r}: use a number 0..255 or one of {sorted(PROTOCOLS)}")
            return PROTOCOLS[proto.lower()]
        if not isinstance(proto, int) or not 0 <= proto <= 255:
            raise InputError(f"protocol {proto!r} is out of range 0..255")
        return proto

    # ---- counters
    def counters(self) -> dict:
        """{verdict: {'packets': n, 'bytes': b}} summed over CPUs."""
        raw = bpf.percpu_sum(self._maps["counters"])
        return {header().VERDICTS[k]: v for k, v in sorted(raw.items())}

    def total(self) -> int:
        """Packets the program has seen, all verdicts."""
        return sum(v["packets"] for v in self.counters().values())

    def dropped(self) -> int:
        return sum(v["packets"] for k, v in self.counters().items() if k != "pass")
