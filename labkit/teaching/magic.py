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
verifier's message, the instructions it checked with your source lines, a hint) and the
name holds a `CellProgram` whose `refused` says why, which the checks report.

A starter cell made by `make labs` has its solution replaced by ``/* YOUR CODE HERE */``
(`labkit.teaching.release`); should it hold nbgrader's Python stub instead, the magic reads
those two lines as that comment, so a starter compiles and runs (and fails its checks)
until the student writes the code.
"""
from __future__ import annotations

import re
import shlex
import tempfile
from pathlib import Path

from labkit import bpf, verifier
from labkit.errors import InputError, LabkitError
from labkit.teaching import students

_FN = re.compile(r"\b(?:int|__u32|u32|__s32|long)\s+(\w+)\s*\(\s*struct\s+(xdp_md|__sk_buff)\s*\*")
_KIND = {"xdp_md": "xdp", "__sk_buff": "tc"}
_STUB = {"# YOUR CODE HERE": "/* YOUR CODE HERE */", "raise NotImplementedError()": ""}
_WORKDIR: Path | None = None


def from_stub(source: str) -> str:
    """SOURCE with nbgrader's Python stub lines turned into a C comment."""
    out = []
    for line in source.split("\n"):
        key = line.strip()
        if key in _STUB:
            if _STUB[key]:
                out.append(line.replace(key, _STUB[key]))
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
            self.refused = InputError("the cell defines no program function: write "
                                      "`int NAME(struct xdp_md *ctx)` (XDP) or `int NAME(struct __sk_buff *skb)` (tc)")
            return
        if main is not None and main not in kinds:
            self.refused = InputError(f"--fn {main}: the cell's functions are {', '.join(kinds)}")
            return
        self.main = main or next(iter(kinds))
        path = _workdir() / f"{name}.c"
        path.write_text(source)
        try:
            self.program = bpf.Program(str(path), self.defines)
            for fn, kind in kinds.items():
                self.functions[fn] = self.program.function(fn, kind)
        except LabkitError as exc:
            self.refused = verifier.error_of(exc) or exc
            self.close()

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
        prog, self.program = self.program, None
        self.functions = {}
        if prog is not None:
            prog.close()

    def explain(self) -> str:
        if self.refused is None:
            return f"{self.name}: loaded " + ", ".join(f"{f} ({k})" for f, k in functions(self.source).items())
        text = self.refused.explain() if hasattr(self.refused, "explain") else str(self.refused)
        return self.name + ": " + _cell_lines(text, self.source)

    def __repr__(self):
        return f"<CellProgram {self.explain().splitlines()[0]}>"


def _cell_lines(text: str, source: str) -> str:
    """Verifier source lines (`; code @ main.c:N`, numbered in bcc's own file) with the
    number of the cell line they come from."""
    lines = source.split("\n")

    def where(m):
        code = m.group(1).strip()
        for i, line in enumerate(lines, 1):
            if code and code in line:
                return f"; {code}    <- cell line {i}"
        return m.group(0)

    return re.sub(r"; (.*?) @ \S+:\d+", where, text)


def _workdir() -> Path:
    global _WORKDIR
    if _WORKDIR is None or not _WORKDIR.is_dir():
        _WORKDIR = Path(tempfile.mkdtemp(prefix=f"labkit-{students.slot()}-cells-"))
    return _WORKDIR


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
