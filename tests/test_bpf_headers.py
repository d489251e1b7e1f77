"""The C headers of bpf/include/ and what Python reads from them, for real: the enum
reader on written headers, each control plane's names equal to its program's enum (and to
the results format that depends on them), the counter maps sized by the same enums, and
the shared parsing helpers doing what they say on frames run through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import re
import struct

import pytest
from conftest import needs_root

from labkit import BPF_DIR, bpf, bpf_enums, packets
from labkit.dataplanes import drop_filter, nat_model, xdp_fwd, xdp_gen
from labkit.errors import InputError


# ---------------------------------------------------------------- the enum reader
def test_enum_reader_handles_explicit_values_expressions_and_comments(tmp_path):
    h = tmp_path / "t.h"
    h.write_text("""
        /* an enum { in a comment } is not the enum */
        enum other { O_A = 7 };
        enum things {
            T_ZERO,            /* 0 */
            T_ONE,             // 1
            T_TEN = 0xa,       /* explicit, hex */
            T_ELEVEN,          /* counts on: 11 */
            T_BIT = 1 << 4,
            T_BOTH = T_TEN | T_BIT, T_LAST = 100u,
        };
    """)
    assert bpf_enums.enum_values(h, "things") == {
        "T_ZERO": 0,
        "T_ONE": 1,
        "T_TEN": 10,
        "T_ELEVEN": 11,
        "T_BIT": 16,
        "T_BOTH": 26,
        "T_LAST": 100,
    }
    assert bpf_enums.enum_values(h, "other") == {"O_A": 7}


def test_enum_names_are_dense_lower_case_without_prefix_or_count(tmp_path):
    h = tmp_path / "c.h"
    h.write_text("enum c { C_FIRST_ONE = 0, C_SECOND, /* comment, with a comma */ C_THIRD, C_MAX };")
    assert bpf_enums.enum_names(h, "c", "C_") == ["first_one", "second", "third"]
    h.write_text("enum c { C_A = 1, C_B = 2 };")
    with pytest.raises(InputError, match="not 0, 1, 2"):
        bpf_enums.enum_names(h, "c", "C_")
    with pytest.raises(InputError, match="no `enum nosuch"):
        bpf_enums.enum_values(h, "nosuch")
    with pytest.raises(InputError, match="no C header"):
        bpf_enums.enum_values("nosuch.h", "c")
    h.write_text("enum c { C_A = sizeof(int) };")
    with pytest.raises(InputError, match="cannot read the value"):
        bpf_enums.enum_values(h, "c")


# ---------------------------------------------------------------- each program's names
def test_python_names_equal_the_headers_enums():
    """The names results and counters carry: the header's enums, exactly (a change in the
    header that renames one changes the results format, and must show up here)."""
    assert (
        drop_filter.VERDICTS
        == bpf_enums.enum_names("drop_filter.h", "drop_filter_verdict", "DF_")
        == ["pass", "drop_all", "drop_proto", "drop_port", "drop_src"]
    )
    rules = bpf_enums.enum_values("drop_filter.h", "drop_filter_rule")
    assert (
        (drop_filter.RULE_ALL, drop_filter.RULE_PROTO, drop_filter.RULE_PORT, drop_filter.RULE_SRC)
        == (rules["DF_RULE_ALL"], rules["DF_RULE_PROTO"], rules["DF_RULE_PORT"], rules["DF_RULE_SRC"])
        == (1, 2, 4, 8)
    )
    assert (
        xdp_fwd.COUNTERS
        == bpf_enums.enum_names("xdp_fwd.h", "xdp_fwd_counter", "FWD_")
        == ["redirected", "no_entry", "short", "refused"]
    )
    assert (
        nat_model.OUTCOMES
        == bpf_enums.enum_names("nat.h", "nat_outcome", "NAT_")
        == [
            "out_static",
            "out_snat_new",
            "out_snat",
            "in_static",
            "in_snat",
            "pass_not_ipv4",
            "pass_malformed",
            "pass_no_rule",
            "pass_no_flow",
            "pass_stale_flow",
            "pass_fragment",
            "drop_fragment",
            "drop_protocol",
            "drop_no_port",
            "drop_table_full",
            "drop_rewrite_failed",
            "in_icmp_error",
            "out_fragment",
            "in_fragment",
            "out_icmp_error",
            "drop_hairpin",
        ]
    )
    assert xdp_gen.VARY == {"sport": 1, "dport": 2, "src_ip": 4, "dst_ip": 8}
    l4 = bpf_enums.enum_values("xdp_gen.h", "xdp_gen_l4")
    assert set(xdp_gen.L4.values()) == set(l4.values())
    assert xdp_gen.TEMPLATE_BYTES == bpf_enums.enum_values("xdp_gen.h", "xdp_gen_template")["HDR_COPY"]


def test_programs_share_the_headers_and_repeat_none_of_them():
    """Parsing, counters and checksums live in bpf/include/; each program includes its own
    enum header; no program keeps a private copy of the names or helpers."""
    for name, own in (
        ("drop_filter", "drop_filter.h"),
        ("nat", "nat.h"),
        ("xdp_fwd", "xdp_fwd.h"),
        ("xdp_gen", "xdp_gen.h"),
    ):
        text = (BPF_DIR / f"{name}.c").read_text()
        assert f'#include "{own}"' in text and '#include "parsing_helpers.h"' in text, name
        assert '#include "counters.h"' in text, name
        assert not re.search(r"^\s*#define\s+(V|S|C)_[A-Z_]+\s+\d+", text, re.M), f"{name}.c defines its own enum"
        assert "csum_fold(u32" not in text and "struct counter {" not in text, name
        assert not re.search(r"\bstruct flow_key\b", text), f"{name}.c: give its flow key a name of its own"
    assert "csum_helpers.h" in (BPF_DIR / "xdp_gen.c").read_text()


@needs_root
def test_counter_maps_are_sized_by_the_same_enums():
    from labkit.dataplanes.nat import Nat

    with drop_filter.DropFilter() as f:
        assert f.program.map("counters").max_entries == len(drop_filter.VERDICTS)
    with bpf.load("xdp_fwd") as p:
        assert p.map("counters").max_entries == len(xdp_fwd.COUNTERS)
    with Nat("10.20.0.0/16", "198.51.100.0/24", "198.51.100.1") as n:
        assert n.program.map("stats").max_entries == len(nat_model.OUTCOMES)
        assert set(n.stats()) == set(nat_model.OUTCOMES)


# ---------------------------------------------------------------- the parsing helpers, run
def with_options(frame: bytes, ihl: int) -> bytes:
    """FRAME (Ethernet + IPv4 without options) with IHL set to IHL and (IHL-5)*4 bytes of
    NOP options inserted after the fixed header; total length adjusted, checksum redone."""
    eth, ip, rest = frame[:14], bytearray(frame[14:34]), frame[34:]
    opts = b"\x01" * max(0, (ihl - 5) * 4)
    ip[0] = 0x40 | ihl
    struct.pack_into("!H", ip, 2, 20 + len(opts) + len(rest))
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, packets.checksum(bytes(ip) + opts))
    return eth + bytes(ip) + opts + rest


@needs_root
def test_the_port_rule_reads_past_ip_options_and_passes_a_bad_ihl():
    frame = packets.build(
        packets.FrameSpec(
            "02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", proto="udp", sport=1024, dport=9, size=64
        )
    )
    with drop_filter.DropFilter() as f:
        f.drop_port(9)
        fn = f.xdp_function()
        assert bpf.test_run(fn, frame).action == "XDP_DROP"
        assert bpf.test_run(fn, with_options(frame, 6)).action == "XDP_DROP"  # port found after 4 option bytes
        assert bpf.test_run(fn, with_options(frame, 15)).action == "XDP_DROP"  # the longest header
        assert bpf.test_run(fn, with_options(frame, 4)).action == "XDP_PASS"  # IHL < 5: not IPv4 we can read
        short = with_options(frame, 15)[: 14 + 60]  # the options end where the frame does: no ports
        assert bpf.test_run(fn, short).action == "XDP_PASS"
        assert f.counters()["drop_port"]["packets"] == 3


@needs_root
def test_the_sink_counts_flows_by_the_ports_after_ip_options():
    frame = packets.build(
        packets.FrameSpec(
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
            "10.0.0.1",
            "10.0.0.2",
            proto="udp",
            sport=1111,
            dport=2222,
            size=64,
        )
    )
    with xdp_gen.GenSink() as s:
        fn = s.function()
        for f in (frame, with_options(frame, 7)):
            assert bpf.test_run(fn, f).action == "XDP_DROP"
        assert s.flows() == {("10.0.0.1", "10.0.0.2", 1111, 2222, 17): 2}
        assert s.total()["packets"] == 2
