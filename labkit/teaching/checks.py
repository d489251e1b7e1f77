"""Exercise checks a student can read: each runs the student's work and shows expected against
actual. On success they print the table and return nothing, so nbgrader gives the cell its
full points. On failure they raise `CheckFailed` (an AssertionError, so nbgrader counts the
test cell as failed) whose message is the table and a hint; in a notebook it shows as that
verdict alone, once, with no traceback.

    checks.xdp(prog, [
        checks.Case("UDP to port 9", frames.udp(dport=9), "XDP_DROP"),
        checks.Case("TCP to port 80", frames.tcp(dport=80), "XDP_PASS"),
    ], hint="compare the UDP destination port, in network byte order (bpf_htons)")

prints

    check: 2 frames through xdp_main
      UDP to port 9     expected XDP_DROP   got XDP_PASS   WRONG
      TCP to port 80    expected XDP_PASS   got XDP_PASS   ok
      hint: compare the UDP destination port, in network byte order (bpf_htons)

Programs are judged with BPF_PROG_TEST_RUN on crafted frames (`labkit.teaching.frames`):
no interface, no traffic, milliseconds, and nothing another student does can change the
outcome. Where a frame's bytes are expected (rewriting), a difference is shown field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from labkit import bpf
from labkit.errors import LabkitError
from labkit.teaching import frames as _frames


class CheckFailed(LabkitError, AssertionError):
    """An exercise's check failed; the message says what was expected, what came, and a hint.
    IPython shows what `_render_traceback_` returns instead of a traceback: a wrong answer
    reads as a verdict, not as a crash of labkit, and the cell still fails."""

    def _render_traceback_(self) -> list[str]:
        return str(self).split("\n")


@dataclass
class Case:
    """One crafted frame and what the student's program should do with it: ACTION
    ('XDP_DROP', 'TC_ACT_SHOT', ...) and/or the frame it should leave (FRAME_OUT)."""

    name: str
    frame: bytes
    action: str | None = None
    frame_out: bytes | None = None
    hint: str | None = None


def _function(prog):
    """The loaded function of a `%%bpf` program, a bcc function, or a fd; CheckFailed when
    the program was refused."""
    if hasattr(prog, "refused"):
        if prog.refused is not None:
            raise CheckFailed(f"the program did not load, so nothing could be checked:\n{prog.explain()}")
        return prog.fn, prog.kind
    return prog, "xdp"


def action_name(retval: int, kind: str) -> str:
    if kind == "tc":
        return bpf.TC_ACTIONS.get(retval if retval < 2**31 else retval - 2**32, str(retval))
    return bpf.XDP_ACTIONS.get(retval, str(retval))


def _table(rows: list[tuple[str, str, str, bool]]) -> list[str]:
    w0 = max([len(r[0]) for r in rows] + [4])
    w1 = max([len(r[1]) for r in rows] + [8])
    w2 = max([len(r[2]) for r in rows] + [6])
    return [f"  {n:<{w0}}  expected {e:<{w1}}  got {a:<{w2}}  {'ok' if ok else 'WRONG'}" for n, e, a, ok in rows]


def report(title: str, rows: list[tuple[str, str, str, bool]], hints: list[str], details: list[str] = ()) -> None:
    """Print a check's table, or raise CheckFailed with it when a row is wrong."""
    lines = [f"check: {title}"] + _table(rows) + [f"    {d}" for d in details]
    failed = [r for r in rows if not r[3]]
    if failed:
        lines += [f"  hint: {h}" for h in dict.fromkeys(h for h in hints if h)]  # each once, in order
        lines.append(f"  {len(failed)} of {len(rows)} wrong")
    else:
        lines.append(f"  all {len(rows)} right")
    text = "\n".join(lines)
    if failed:
        raise CheckFailed(text)
    print(text)
    # Nothing returned on success: a value would show as the test cell's result, which
    # nbgrader would read as partial credit.


def xdp(prog, cases: list[Case], hint: str | None = None, title: str | None = None, ctx=None) -> None:
    """Run PROG (a `%%bpf` program; XDP or tc) on each case's frame; compare the action and,
    where given, the frame it leaves. CTX: an XDP context (`bpf.XdpMd(ingress_ifindex=...)`)
    for programs that look at where the frame came in (bpf_fib_lookup)."""
    fn, kind = _function(prog)
    rows, hints, details = [], [], []
    for case in cases:
        try:
            res = bpf.test_run(fn, case.frame, ctx=_fresh(ctx))
        except LabkitError as exc:
            rows.append((case.name, case.action or "a verdict", f"error: {exc}", False))
            hints.append(case.hint or hint)
            continue
        got = action_name(res.retval, kind)
        if case.action is not None:
            ok = got == case.action
            rows.append((case.name, case.action, got, ok))
            if not ok:
                hints.append(case.hint or hint)
        if case.frame_out is not None:
            out = res.data_out
            ok = out == case.frame_out
            diff = _frames.describe_diff(case.frame_out, out)
            expected = "rewritten" if case.frame_out != case.frame else "unchanged"
            rows.append(
                (case.name + " (bytes out)", expected, "as expected" if ok else f"{len(diff)} field(s) differ", ok)
            )
            if not ok:
                details += [f"{case.name}: {d}" for d in diff]
                hints.append(case.hint or hint)
    name = str(getattr(fn, "name", b"program")).replace("b'", "").replace("'", "")
    return report(title or f"{len(cases)} frames through {name}", rows, hints, details)


def _fresh(ctx):
    """A copy of CTX for one frame (the test run fills in data_end from the frame)."""
    if ctx is None:
        return None
    copy = type(ctx).from_buffer_copy(ctx)
    if hasattr(copy, "data_end"):
        copy.data_end = 0
    return copy


def values(title: str, expected: dict, actual: dict, hint: str | None = None) -> None:
    """Compare named values (counters, fields): every key of EXPECTED must be in ACTUAL and equal."""
    rows = [(str(k), str(v), str(actual.get(k, "missing")), actual.get(k, object()) == v) for k, v in expected.items()]
    return report(title, rows, [hint])


def function(title: str, fn: Callable, cases: list[tuple[str, tuple, object]], hint: str | None = None) -> None:
    """Call a student's Python function FN on each case's arguments and compare its result:
    CASES are (name, args, expected)."""
    rows, hints = [], []
    for name, args, expected in cases:
        try:
            got = fn(*args)
        except Exception as exc:  # a student's function may fail in any way: show it as the result
            failed = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, NotImplementedError):
                failed = "not written yet (NotImplementedError)"
            rows.append((name, _show(expected), failed, False))
            hints.append(hint)
            continue
        ok = got == expected
        rows.append((name, _show(expected), _show(got), ok))
        if not ok:
            hints.append(hint)
    return report(title, rows, hints)


def within(title: str, value: float, low: float, high: float, unit: str = "", hint: str | None = None) -> None:
    """A measured or computed VALUE must lie in [LOW, HIGH] (a range, never a timing to the ns)."""
    ok = value is not None and low <= value <= high
    got = f"{value:g} {unit}".strip() if isinstance(value, (int, float)) else repr(value)
    return report(title, [(title, f"{low:g}..{high:g} {unit}".strip(), got, ok)], [hint])


def true(title: str, condition: bool, expected: str, actual: str, hint: str | None = None) -> None:
    """A yes/no check with words for what was expected and what was seen."""
    return report(title, [(title, expected, actual, bool(condition))], [hint])


def loaded(prog, title: str = "the program loads") -> None:
    """The `%%bpf` program was accepted by the compiler and the verifier."""
    if getattr(prog, "refused", None) is not None:
        raise CheckFailed(f"check: {title}: no\n  " + prog.explain().replace("\n", "\n  "))
    return report(title, [(title, "accepted", "accepted", True)], [])


def _show(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and 255 < v <= 0xFFFF:  # checksums, ports
        return f"{v} (0x{v:x})"
    if isinstance(v, (bytes, bytearray)):
        return v.hex(" ")
    return repr(v) if isinstance(v, str) else str(v)
