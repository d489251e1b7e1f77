"""`%%bpf`: a notebook cell of eBPF C, compiled with bcc and kept in a Python name.

    %load_ext labkit.teaching

    %%bpf prog
    int xdp_main(struct xdp_md *ctx) { return XDP_DROP; }

Then `prog` is a `CellProgram`: `prog.fn` (the loaded function, with `.fd`),
`prog.map("counters")`, `prog.run(frame)` (one BPF_PROG_TEST_RUN). Every function taking a
`struct xdp_md *` is loaded as XDP, one taking a `struct __sk_buff *` as tc. Options:
``-D NAME=VALUE`` (a define, repeatable), ``--fn NAME`` (the function `prog.fn` names when
there are several).

A cell the compiler or verifier refuses raises nothing: the cell prints why (the
verifier's message, the instructions it checked with your source lines numbered as the
editor numbers them, the `%%bpf` line being line 1, and a hint) and the name holds a
`CellProgram` whose `refused` says why, which the checks report.

Compiling takes a second or more (several with kernel headers); loading takes a millisecond.
So each compiled program is kept for the kernel's lifetime, by cell name, source, defines and
kernel release: re-running an unchanged cell reuses it, its maps emptied as a fresh load has
them, and so does a refusal (the same source is refused the same way).

A starter cell made by `make labs` has its solution replaced by ``/* YOUR CODE HERE */``
(`labkit.teaching.release`); should it hold nbgrader's Python stub instead, the magic reads
those two lines as that comment, so a starter compiles and runs (and fails its checks)
until the student writes the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
from collections import OrderedDict
from pathlib import Path

from labkit import bpf, verifier
from labkit.errors import InputError, LabkitError
from labkit.teaching import students

_FN = re.compile(r"\b(?:int|__u32|u32|__s32|long)\s+(\w+)\s*\(\s*struct\s+(xdp_md|__sk_buff)\s*\*")
_KIND = {"xdp_md": "xdp", "__sk_buff": "tc"}
_STUB = {"# YOUR CODE HERE": "/* YOUR CODE HERE */", "raise NotImplementedError()": ""}
#: compiled programs no cell holds that are kept for a re-run (the oldest are unloaded beyond this)
IDLE_KEPT = 16
#: arrays with more entries than this are compiled again rather than emptied entry by entry
RESET_ENTRIES = 65536


def from_stub(source: str) -> str:
    """SOURCE with nbgrader's Python stub lines turned into a C comment."""
    out = []
    for line in source.split("\n"):
        key = line.strip()
        if key in _STUB:  # replaced, never dropped: the lines below keep the editor's numbers
            out.append(line.replace(key, _STUB[key]) if _STUB[key] else "")
        else:
            out.append(line)
    return "\n".join(out)


def functions(source: str) -> dict[str, str]:
    """{function name: 'xdp' | 'tc'} of the program functions in SOURCE, in order."""
    return {m.group(1): _KIND[m.group(2)] for m in _FN.finditer(source)}


class CellProgram:
    """The program of one `%%bpf` cell: loaded functions and maps, or why it was refused."""

    def __init__(self, name: str, source: str, defines: dict | None = None, main: str | None = None):
        self.name, self.source, self.defines = name, source, dict(defines or {})
        self.program: bpf.Program | None = None
        self.functions: dict = {}
        self.refused: LabkitError | None = None
        self.main = main
        kinds = functions(source)
        if not kinds:
            self.refused = InputError(
                "the cell defines no program function: write "
                "`int NAME(struct xdp_md *ctx)` (XDP) or `int NAME(struct __sk_buff *skb)` (tc)"
            )
            return
        if main is not None and main not in kinds:
            self.refused = InputError(f"--fn {main}: the cell's functions are {', '.join(kinds)}")
            return
        self.main = main or next(iter(kinds))
        compiled = self._compiled = _compiled(name, source, self.defines, kinds)
        self.program, self.functions, self.refused = compiled.program, dict(compiled.functions), compiled.refused

    # ---- what the checks use
    @property
    def ok(self) -> bool:
        return self.refused is None

    @property
    def fn(self):
        """The main function, loaded (`.fd`); raises the reason when the cell was refused."""
        if self.refused is not None:
            raise self.refused
        return self.functions[self.main]

    @property
    def kind(self) -> str:
        return functions(self.source).get(self.main, "xdp")

    def map(self, name: str):
        if self.refused is not None:
            raise self.refused
        try:
            return self.program.map(name)
        except KeyError:
            raise InputError(f"the program {self.name} has no map {name!r}") from None

    def run(self, frame: bytes, **kw) -> bpf.TestRunResult:
        """One BPF_PROG_TEST_RUN of the main function on FRAME."""
        return bpf.test_run(self.fn, frame, **kw)

    def close(self) -> None:
        """Give the program back to the kept ones (unloaded when it is not kept)."""
        compiled, self._compiled = getattr(self, "_compiled", None), None
        self.program, self.functions = None, {}
        if compiled is not None:
            compiled.release()

    def explain(self) -> str:
        if self.refused is None:
            return f"{self.name}: loaded " + ", ".join(f"{f} ({k})" for f, k in functions(self.source).items())
        text = self.refused.explain() if hasattr(self.refused, "explain") else str(self.refused)
        log = getattr(self.refused, "log", "")
        return f"{self.name}: " + verifier.source_lines(text, self.source, log, before=1, label="cell line")

    def __repr__(self):
        return f"<CellProgram {self.explain().splitlines()[0]}>"


class _Compiled:
    """One compile's outcome, the loaded functions or why they were refused, kept for re-runs.
    One cell holds it at a time: a map is never shared between two cells."""

    def __init__(
        self,
        key: str,
        program: bpf.Program | None = None,
        functions: dict | None = None,
        refused: LabkitError | None = None,
    ):
        self.key, self.program, self.functions, self.refused = key, program, functions or {}, refused
        self.in_use = True

    @property
    def certain(self) -> bool:
        """The same source would come out the same: loaded, or refused by the verifier or for an error
        in the source (not for a header missing from this machine, which its set-up can add)."""
        err = self.refused
        if isinstance(err, verifier.CompileError):
            return bool(err.errors) and not any("file not found" in e for e in err.errors)
        return err is None or isinstance(err, verifier.VerifierError)

    def take(self) -> bool:
        """Hand this to a cell, its maps emptied; False when a cell holds it or a map cannot be emptied."""
        if self.in_use or (self.program is not None and not _empty_maps(self.program)):
            return False
        self.in_use = True
        return True

    def release(self) -> None:
        self.in_use = False
        if _KEPT.get(self.key) is not self:
            self.unload()
        _trim()

    def unload(self) -> None:
        program, self.program, self.functions = self.program, None, {}
        if program is not None:
            program.close()


#: compiled programs by `_key`, least recently used first
_KEPT: "OrderedDict[str, _Compiled]" = OrderedDict()
#: maps that other programs or processes share: emptying them would touch someone else's data
_SHARED_MAPS = re.compile(r"BPF_TABLE_PINNED|BPF_TABLE_SHARED|BPF_TABLE_PUBLIC|\"extern\"")


def _compiled(name: str, source: str, defines: dict, kinds: dict) -> _Compiled:
    """The compiled program of a cell: a kept one when the same cell was compiled before, else a new one."""
    key = _key(name, source, defines)
    kept = _KEPT.get(key)
    if kept is not None:
        if kept.take():
            _KEPT.move_to_end(key)
            return kept
        if not kept.in_use:  # a map that cannot be emptied: compile afresh instead
            del _KEPT[key]
            kept.unload()
    compiled = _compile(key, name, source, defines, kinds)
    if key not in _KEPT and compiled.certain and not _SHARED_MAPS.search(source):
        _KEPT[key] = compiled
    return compiled


def _key(name: str, source: str, defines: dict) -> str:
    """What decides a compile's outcome: the cell, its defines and the running kernel."""
    what = [name, source, sorted((str(k), str(v)) for k, v in defines.items()), os.uname().release]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _compile(key: str, name: str, source: str, defines: dict, kinds: dict) -> _Compiled:
    """Compile and load SOURCE (as NAME.c, in a folder removed right after: bcc reads it once)."""
    with tempfile.TemporaryDirectory(prefix=f"labkit-{students.slot()}-cell-") as folder:
        path = Path(folder) / f"{name}.c"
        path.write_text(source)
        program = None
        try:
            program = bpf.Program(str(path), defines)
            return _Compiled(key, program, {fn: program.function(fn, kind) for fn, kind in kinds.items()})
        except LabkitError as exc:
            if program is not None:
                program.close()
            return _Compiled(key, refused=verifier.error_of(exc) or exc)


def _empty_maps(program: bpf.Program) -> bool:
    """Empty every map of PROGRAM as a fresh load has them; False where one cannot be emptied."""
    maps = [program.bpf[name] for name in _map_names(program.bpf.module)]
    if not all(_emptiable(m) for m in maps):
        return False
    for table in maps:
        for key in list(table.keys()):
            try:
                del table[key]  # an array's entry is set to zeros
            except KeyError:
                pass  # an empty slot of a program or device array
    return True


def _map_names(module) -> list[bytes]:
    """The names of every map of bcc MODULE (bcc's Python declares no prototypes for these two)."""
    import ctypes

    from bcc.libbcc import lib

    lib.bpf_num_tables.argtypes, lib.bpf_num_tables.restype = [ctypes.c_void_p], ctypes.c_size_t
    lib.bpf_table_name.argtypes, lib.bpf_table_name.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_char_p
    return [lib.bpf_table_name(module, i) for i in range(lib.bpf_num_tables(module))]


def _emptiable(table) -> bool:
    from bcc import table as tables

    if isinstance(table, tables.ArrayBase):
        kinds = (tables.Array, tables.PerCpuArray, tables.ProgArray, tables.DevMap, tables.CpuMap, tables.XskMap)
        return isinstance(table, kinds) and table.max_entries <= RESET_ENTRIES
    return isinstance(table, (tables.HashTable, tables.LpmTrie))


def _trim() -> None:
    """Unload the least recently used programs no cell holds, beyond IDLE_KEPT."""
    idle = [key for key, c in _KEPT.items() if not c.in_use]
    for key in idle[: max(0, len(idle) - IDLE_KEPT)]:
        _KEPT.pop(key).unload()


def parse_line(line: str) -> tuple[str, dict, str | None]:
    """`NAME [-D X=1 ...] [--fn F]` -> (name, defines, fn)."""
    words = shlex.split(line)
    if not words or not words[0].isidentifier():
        raise InputError("write `%%bpf NAME` (a Python name to keep the program in), e.g. `%%bpf prog`")
    name, defines, main = words[0], {}, None
    rest = iter(words[1:])
    for w in rest:
        if w.startswith("-D"):
            item = w[2:] or next(rest, "")
            key, _, value = item.partition("=")
            defines[key] = value or "1"
        elif w == "--fn":
            main = next(rest, None)
        else:
            raise InputError(f"%%bpf: unknown option {w!r}; options: -D NAME=VALUE, --fn FUNCTION")
    return name, defines, main


def bpf_cell(line: str, cell: str, namespace: dict) -> CellProgram:
    """What the magic does: compile CELL, replace NAME in NAMESPACE, print the outcome."""
    name, defines, main = parse_line(line)
    old = namespace.get(name)
    if isinstance(old, CellProgram):
        old.close()
    prog = CellProgram(name, from_stub(cell), defines, main)
    namespace[name] = prog
    print(prog.explain())
    return prog


def register(ipython) -> None:
    def bpf_magic(line, cell):
        bpf_cell(line, cell, ipython.user_ns)

    ipython.register_magic_function(bpf_magic, magic_kind="cell", magic_name="bpf")
