"""Why the kernel refused a program: the compiler's and the verifier's own words, made visible.

bcc prints clang's diagnostics and the verifier's log to the process's C-level stderr
(file descriptor 2), not to Python: in a notebook a refused program shows only "Failed to
load BPF program". `labkit.bpf` loads through the two functions here, which hold fd 2 in a
temporary file for the length of the call and, when the call fails, raise an error that
carries the log, the failing instructions and a hint:

    try:
        prog = bpf.load("my_program")
        fn = prog.function("xdp_main")
    except LabkitError as exc:
        err = verifier.error_of(exc)        # VerifierError or CompileError, or None
        print(err.explain())

`explain()` reads like this:

    the verifier refused xdp_main (cell.c): invalid access to packet, off=12 size=2, R2(id=0,off=12,r=0)
      the last instructions it checked:
        ; if (eth->h_proto == bpf_htons(0x0800)) @ cell.c:9
        3: (69) r1 = *(u16 *)(r2 +12)
      hint: the program reads packet bytes it has not proven are there ...

`HINTS` maps a pattern of the verifier's message to a sentence about the usual cause.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager, suppress
from types import SimpleNamespace

from labkit.errors import LabkitError

#: (pattern of the verifier's or compiler's message, what usually causes it and the fix).
#: The first match wins, so the specific ones come first.
HINTS = [
    (
        r"refused it with E2BIG",
        "either the program is longer than the kernel allows (split it, e.g. with tail calls), or the verifier "
        "walked more instructions than it will: usually a loop it cannot prove ends. If there is a loop, bound your "
        "loop with a constant (`for (int i = 0; i < 8; i++)`).",
    ),
    (
        r"invalid access to packet|outside of the packet|invalid access to packet, off",
        "the program reads packet bytes it has not proven are there. Before touching a header, "
        "compare its end with data_end, `if ((void *)(eth + 1) > data_end) return ...;`, returning the verdict "
        "your exercise asks for frames too short for that header. The check must be on the same pointer "
        "(or one derived from it) that you then read.",
    ),
    (
        r"map_value_or_null|_or_null",
        "a map lookup can return NULL (no such key) and the program used the result without "
        "checking. Right after the lookup, test it (`if (!value) { ... }`) and in that branch do what a missing "
        "entry means in your exercise (create it with update(), or leave without touching *value); "
        "use *value only after the test.",
    ),
    (
        r"back-edge|infinite loop|loop is not bounded|too large\. Processed|BPF program is too large|"
        r"jump out of range|The sequence of \d+ jumps is too complex|the verifier gave up",
        "the verifier could not prove a loop ends: bound your loop. Give it a constant bound "
        "(`for (int i = 0; i < 8; i++)`), break out early inside it, or unroll it (`#pragma unroll`).",
    ),
    (
        r"unbounded min value|unbounded memory access|min value is negative|value is outside of the allowed memory range",
        "an offset the program adds to a pointer has no proven bounds. Clamp it first (`if (off > 64) return ...;` "
        "with your exercise's verdict, or `off &= 0x3f;`) so the verifier knows its range, then bounds-check the result against data_end.",
    ),
    (r"R0 !read_ok", "the function can end without a return value: every path needs `return XDP_...;`."),
    (
        r"invalid (indirect )?read from stack|invalid indirect access to stack",
        "a stack variable (often a map key or value struct) is used before every byte is set: "
        "initialise it, e.g. `struct key k = {};` or __builtin_memset(&k, 0, sizeof(k)).",
    ),
    (
        r"invalid mem access 'scalar'|invalid mem access 'inv'",
        "the program dereferences a plain number, not a pointer the verifier knows: cast ctx->data and "
        "ctx->data_end with `(void *)(long)` and read through pointers derived from them.",
    ),
    (
        r"unknown func|program of this type cannot use helper",
        "this helper cannot be called from this kind of program (XDP and tc allow different helpers).",
    ),
    (r"misaligned", "a read is not aligned to its size: read the field byte by byte or with __builtin_memcpy."),
    (r"unreachable insn", "some code can never run; usually a return or a loop the compiler laid out oddly."),
    (
        r"invalid stack off|stack limit",
        "the program uses more than the 512 bytes of stack eBPF allows: move big buffers into a map.",
    ),
    (
        r"error: use of undeclared identifier|error: unknown type name",
        "a name is not declared: check its spelling, or #include the header that declares it.",
    ),
    (
        r"error: expected",
        "a syntax error: look at the line and column the compiler names (a missing ';' or brace is common).",
    ),
]

#: lines of the verifier log that are instructions (`12: (bf) r1 = r2`) or the source line
#: they come from (`; if (x) @ file.c:9`)
_INSN = re.compile(r"^\d+: \(|^; ")
_NOISE = re.compile(
    r"^(processed \d+ insns|verification time|stack depth|HINT:|bpf: Failed to load|"
    r"bpf: log_buf size|bpf: .*too large \(\d+ insns\)|libbpf:|Failed to load|\s*$)"
)
#: a verifier log is there: instructions, or the statistics line every log ends with
_HAS_LOG = re.compile(r"^\d+: \(|^processed \d+ insns|too large\. Processed \d+ insn", re.M)
#: the verifier stopped because the program took too many steps to check, not because a step was wrong
_GAVE_UP = re.compile(r"too large\. Processed \d+ insn|The sequence of \d+ jumps is too complex")
_PROCESSED = re.compile(r"[Pp]rocessed (\d+) insn")
#: log levels of a second load that keeps the log: instructions and the refusal; the refusal and
#: statistics alone (a kernel before 6.4 keeps a log's head, so a long walk can push the refusal out)
_RETRY_LEVELS = (1, 4)
_LOG_SIZE = 1 << 20


def hint_for(text: str) -> str | None:
    for pattern, hint in HINTS:
        if re.search(pattern, text):
            return hint
    return None


_capture_lock = threading.Lock()


@contextmanager
def captured_stderr():
    """Holds the process's fd 2 in a temporary file while in a `with`; `.text` after."""
    cap = SimpleNamespace(text="")
    with _capture_lock, tempfile.TemporaryFile() as file:
        with suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        try:
            yield cap
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            cap.text = file.read().decode(errors="replace")


class CompileError(LabkitError):
    """clang refused the C source; `log` holds its diagnostics."""

    def __init__(self, where: str, log: str, cause: str = ""):
        self.where, self.log, self.cause = where, log, cause
        self.errors = [l for l in log.splitlines() if "error:" in l]
        self.hint = hint_for("\n".join(self.errors) or log)
        super().__init__(self.explain())

    def explain(self) -> str:
        lines = [f"the compiler refused {self.where}:"]
        shown = self.errors[:5] or [l for l in self.log.splitlines() if l.strip()][-5:] or [self.cause]
        lines += [f"  {l.strip()}" for l in shown]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class VerifierError(LabkitError):
    """The verifier refused a program. `log` is its whole log, `message` the line that says
    why, `instructions` the last instructions it checked before giving up, `hint` a
    sentence about the usual cause (None when no hint matches), `errno` what the kernel
    returned (E2BIG: the verifier gave up after `processed` instructions)."""

    def __init__(self, function: str, where: str, log: str, cause: str = "", errno: int | None = None):
        self.function, self.where, self.log, self.cause, self.errno = function, where, log, cause, errno
        lines = [l.rstrip() for l in log.splitlines()]
        last = max((i for i, l in enumerate(lines) if _INSN.match(l)), default=-1)
        said = "; ".join([l for l in lines[last + 1 :] if not _NOISE.match(l)][:3])
        self.processed = _processed(log)
        self.message = said or cause or "no verifier log was printed"
        if _GAVE_UP.search(log):  # the log says so: the verifier stopped walking the program
            self.message = gave_up(self.processed) + (f" ({said})" if said else "")
        elif errno == errno_mod.E2BIG:  # E2BIG alone: too large a program, or too long a walk
            self.message = (
                "the kernel refused it with E2BIG, too many instructions: a program longer than "
                "the kernel allows, or more than the verifier walks; its log did not say which"
                + (f" ({said})" if said else "")
            )
        self.instructions = [l for l in lines[: last + 1] if _INSN.match(l)][-6:]
        self.hint = hint_for(self.message) or hint_for(log)
        super().__init__(self.explain())

    def explain(self) -> str:
        out = [f"the verifier refused {self.function} ({self.where}): {self.message}"]
        if self.instructions:
            out.append("  the last instructions it checked (';' lines are your source):")
            out += [f"    {l}" for l in self.instructions]
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def gave_up(processed: int | None) -> str:
    """What E2BIG from a load means: the verifier stopped walking the program, on every kernel
    (bcc calls it "Program too large (N insns)", counting the program's own instructions)."""
    steps = f"{processed:,} instructions" if processed else "too many instructions (E2BIG)"
    return f"the verifier gave up after processing {steps}"


def _processed(log: str) -> int | None:
    counts = [int(n) for n in _PROCESSED.findall(log)]
    return max(counts) if counts else None


def compile(factory, where: str, **kwargs):
    """FACTORY(**KWARGS) (bcc.BPF) with fd 2 captured; CompileError with clang's words on failure."""
    with captured_stderr() as cap:
        try:
            return factory(**kwargs)
        except Exception as exc:
            failure = exc
    raise CompileError(where, cap.text, str(failure)) from failure


def load_func(bpf, name: str, prog_type, where: str):
    """bpf.load_func(NAME, PROG_TYPE) with fd 2 captured; VerifierError with the log on failure.
    Where bcc printed no verifier log (it prints its own "Program too large" for E2BIG), the
    program is loaded once more with a log buffer, so the refusal carries the verifier's words."""
    with captured_stderr() as cap:
        try:
            return bpf.load_func(name, prog_type)
        except Exception as exc:
            failure, err = exc, _errno_of(exc)
    log = cap.text
    if not _HAS_LOG.search(log):
        log = "\n".join(t for t in (log.rstrip(), kernel_log(bpf, name, prog_type)) if t)
    raise VerifierError(name, where, log, str(failure), err) from failure


def kernel_log(bpf, name: str, prog_type) -> str:
    """The verifier's log of loading NAME of bcc module BPF again, with a log buffer
    (its tail where long); "" where the log says nothing or the load now succeeds."""
    from bcc import libbcc

    lib, mod, fn = libbcc.lib, bpf.module, name.encode() if isinstance(name, str) else name
    text = ""
    if not lib.bpf_function_start(mod, fn):
        return text
    code = (lib.bpf_function_start(mod, fn), lib.bpf_function_size(mod, fn))
    module = (lib.bpf_module_license(mod), lib.bpf_module_kern_version(mod))
    for level in _RETRY_LEVELS:
        buf = ctypes.create_string_buffer(_LOG_SIZE)
        with captured_stderr():  # bcc prints the log too: the refusal carries it once
            fd = lib.bcc_func_load(mod, prog_type, fn, *code, *module, level, buf, _LOG_SIZE, None, -1)
        if fd >= 0:
            os.close(fd)
            return ""
        text = buf.value.decode(errors="replace")
        if _refusal(text):
            return text
    return text


def _refusal(log: str) -> bool:
    """LOG has a line after its last instruction that says why (not only statistics)."""
    lines = log.splitlines()
    last = max((i for i, l in enumerate(lines) if _INSN.match(l)), default=-1)
    return any(not _NOISE.match(l) for l in lines[last + 1 :])


def _errno_of(exc: BaseException) -> int | None:
    """The errno of bcc's failed load: its ctypes errno, or the one its message names."""
    err = ctypes.get_errno()
    text = str(exc)
    if err and (os.strerror(err) in text or "super-user" in text):
        return err
    return next((code for code in sorted(errno_mod.errorcode) if os.strerror(code) in text), None)


#: a source line in the verifier's log, placed in bcc's rewritten copy of the source: `; CODE @ main.c:N`
_SOURCE_REF = re.compile(r"^(\s*); (.*?) @ \S+:(\d+)$")
#: a compiler diagnostic's place: `/virtual/main.c:4:12: error: ...` (the source as written)
_DIAGNOSTIC_REF = re.compile(r"\S*/main\.c:(\d+):(\d+): ")


def source_lines(text: str, source: str, log: str = "", before: int = 0, label: str = "line") -> str:
    """TEXT (an `explain()`) with each place bcc names turned into the user's own line of SOURCE
    and its number as the user's editor shows it (BEFORE: lines the editor shows above SOURCE,
    1 for a `%%bpf` cell). The verifier's `; CODE @ main.c:N` lines come from bcc's rewrite of
    the source (`seen.lookup(&key)` reads `bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, -1), &key)`,
    and the numbers are shifted): lines found as written in LOG (the whole log) anchor the shift."""
    lines = source.split("\n")
    anchors = _anchors(log or text, lines)
    out = []
    for row in text.split("\n"):
        m = _SOURCE_REF.match(row)
        if m is None:
            out.append(_DIAGNOSTIC_REF.sub(lambda d: f"{label} {int(d.group(1)) + before}, column {d.group(2)}: ", row))
            continue
        if not m.group(2).strip():
            continue  # bcc's own code, no line of the source
        i = _source_line(m.group(2).strip(), int(m.group(3)), lines, anchors)
        out.append(f"{m.group(1)}; {lines[i - 1].strip()}    <- {label} {i + before}" if i else row)
    return "\n".join(out)


def _anchors(log: str, lines: list[str]) -> dict[int, int]:
    """{line in bcc's copy: its shift} for the log's source lines that are one line of the source as written."""
    out = {}
    for row in log.split("\n"):
        m = _SOURCE_REF.match(row)
        if m and m.group(2).strip():
            hits = [i for i, l in enumerate(lines, 1) if l.strip() == m.group(2).strip()]
            if len(hits) == 1:
                out[int(m.group(3))] = int(m.group(3)) - hits[0]
    return out


def _source_line(code: str, n: int, lines: list[str], anchors: dict[int, int]) -> int | None:
    """The number (from 1) of the source line that line N of bcc's copy (reading CODE) comes from."""
    near = [anchors[k] for k in sorted(anchors, key=lambda k: (k > n, abs(k - n)))]
    guess = n - near[0] if near else None
    hits = [i for i, l in enumerate(lines, 1) if l.strip() == code]
    if hits:
        return min(hits, key=lambda i: abs(i - guess)) if guess else hits[0]
    if guess is None:
        return None
    # a line bcc rewrote: the nearby line that starts most like it (`u64 *value = ...`)
    around = [i for i in range(guess - 2, guess + 3) if 1 <= i <= len(lines) and lines[i - 1].strip()]
    return max(
        around, key=lambda i: (len(os.path.commonprefix([lines[i - 1].strip(), code])), -abs(i - guess)), default=None
    )


def error_of(exc: BaseException) -> "VerifierError | CompileError | None":
    """The VerifierError or CompileError behind EXC (itself, or its cause chain), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (VerifierError, CompileError)):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
