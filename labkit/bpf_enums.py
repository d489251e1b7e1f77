"""The enums of bpf/include/ headers, read from the C source: a counter's or a flag's name
and value exist in one place only, the header its program includes.

    bpf_enums.enum_values("xdp_gen.h", "xdp_gen_l4")      # {'L4_UDP': 0, 'L4_TCP': 1, ...}
    bpf_enums.enum_names("nat.h", "nat_outcome", "NAT_")  # ['out_static', 'out_snat_new', ...]

enum_names gives the names of an enum that indexes a counter map (values 0, 1, 2, ...,
a last `..._MAX` the count); enum_values any enum's values, bit sets and sparse ones too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from labkit.bpf import include_dir
from labkit.errors import InputError

_ENUM_OPS = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.LShift,
    ast.RShift,
    ast.BitOr,
    ast.BitAnd,
    ast.USub,
    ast.Invert,
)


def _enum_value(expr: str, known: dict, where: str) -> int:
    """An enumerator's explicit value: integer literals (decimal, hex, with u/l suffixes),
    earlier enumerators and + - * << >> | & ~ between them."""
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise InputError(f"{where}: cannot read the value {expr!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ENUM_OPS) or (isinstance(node, ast.Name) and node.id not in known):
            raise InputError(
                f"{where}: cannot read the value {expr!r} (only integers, earlier enumerators and + - * << >> | & ~)"
            )
    return int(eval(compile(tree, where, "eval"), {"__builtins__": {}}, dict(known)))


def enum_values(header, enum: str) -> dict[str, int]:
    """{enumerator: value} of `enum ENUM {...}` in HEADER (a path, or a name in
    bpf/include/ such as "nat.h"), in the order written: implicit values count on from the
    previous one as in C; comments are ignored."""
    path = Path(header)
    if not path.is_absolute() and not path.exists():
        path = include_dir() / header
    if not path.is_file():
        raise InputError(
            f"no C header {path}: headers in {include_dir()}: "
            f"{', '.join(sorted(p.name for p in include_dir().glob('*.h')))}"
        )
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", path.read_text(), flags=re.S)
    m = re.search(r"\benum\s+" + re.escape(enum) + r"\s*\{(.*?)\}", text, re.S)
    if not m:
        raise InputError(f"{path.name} has no `enum {enum} {{...}}`")
    values, nxt = {}, 0
    for item in (i.strip() for i in m.group(1).split(",")):
        if not item:
            continue
        name, _, expr = (part.strip() for part in item.partition("="))
        if not name.isidentifier():
            raise InputError(f"{path.name}, enum {enum}: cannot read the enumerator {item!r}")
        value = _enum_value(expr, values, f"{path.name}, enum {enum}, {name}") if expr else nxt
        values[name] = value
        nxt = value + 1
    return values


def enum_names(header, enum: str, prefix: str = "") -> list[str]:
    """The enumerators of ENUM, which index a counter map, as Python names: PREFIX
    stripped, lower case, in value order (list index == value). A last enumerator ending
    in `_MAX` is the count, not a name. The values must run 0, 1, 2, ...

        enum_names("nat.h", "nat_outcome", "NAT_")  # ['out_static', 'out_snat_new', ...]
    """
    values = enum_values(header, enum)
    items = list(values.items())
    if items and items[-1][0].endswith("_MAX"):
        items.pop()
    items.sort(key=lambda kv: kv[1])
    if [v for _, v in items] != list(range(len(items))):
        raise InputError(
            f"enum {enum} in {header}: values {[v for _, v in items]} are not 0, 1, 2, ..: "
            "use enum_values() for bit sets and sparse values"
        )
    wrong = [n for n, _ in items if not n.startswith(prefix)]
    if wrong:
        raise InputError(f"enum {enum} in {header}: {wrong} do not start with {prefix!r}")
    return [n[len(prefix) :].lower() for n, _ in items]
