"""labkit.teaching and labkit.verifier on real programs: the verifier's and the compiler's
words reach Python with a hint, the %%bpf cell reads an nbgrader starter as C, checks say
expected against actual and fail when they should, and students on one machine keep to
their own names, pinned maps, clean-up and measurement turns."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from labkit import bpf, cleanup, verifier
from labkit.errors import InputError, LabkitError
from labkit.teaching import checks, frames, live, magic, students

UNSAFE = """#include <linux/if_ether.h>
int xdp_main(struct xdp_md *ctx) {
    struct ethhdr *eth = (void *)(long)ctx->data;
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return XDP_DROP;
    return XDP_PASS;
}"""

SAFE = """#include <linux/if_ether.h>
int xdp_main(struct xdp_md *ctx) {
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = (void *)(long)ctx->data;
    if ((void *)(eth + 1) > data_end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return XDP_DROP;
    return XDP_PASS;
}"""


def test_verifier_refusal_carries_log_instructions_and_hint(tmp_path):
    src = tmp_path / "unsafe.c"
    src.write_text(UNSAFE)
    with bpf.Program(str(src)) as prog:
        with pytest.raises(LabkitError) as info:
            prog.function("xdp_main")
    err = verifier.error_of(info.value)
    assert isinstance(err, verifier.VerifierError)
    assert "invalid access to packet" in err.message
    assert "processed" in err.log and any(l.startswith("; ") for l in err.instructions)
    assert "data_end" in err.hint
    assert err.message in str(info.value)


def test_compile_error_names_the_line(tmp_path):
    src = tmp_path / "typo.c"
    src.write_text("int xdp_main(struct xdp_md *ctx) { return XDP_DROPP; }")
    with pytest.raises(LabkitError) as info:
        bpf.Program(str(src))
    err = verifier.error_of(info.value)
    assert isinstance(err, verifier.CompileError)
    assert any("XDP_DROPP" in e for e in err.errors)
    assert err.hint and "not declared" in err.hint


def test_hints_keyed_on_common_messages():
    assert "NULL" in verifier.hint_for("R0 invalid mem access 'map_value_or_null'")
    assert "loop" in verifier.hint_for("back-edge from insn 12 to 9")
    assert verifier.hint_for("something nobody has seen") is None


#: how kernels refuse a loop they cannot bound, in the verifier's log
LOOP_REFUSALS = r"back-edge|infinite loop|too large\. Processed \d+ insn|The sequence of \d+ jumps is too complex"


def test_a_loop_without_a_bound_gets_the_loop_hint():
    ns = {}
    prog = magic.bpf_cell(
        "scan",
        """int xdp_main(struct xdp_md *ctx) {
    unsigned char *p = (void *)(long)ctx->data;
    unsigned char *end = (void *)(long)ctx->data_end;
    #pragma nounroll
    for (;;) {
        if (p + 1 > end || *p == 0xff)
            break;
        p++;
    }
    return p == end ? XDP_PASS : XDP_DROP;
}""",
        ns,
    )
    try:
        err = prog.refused
        assert isinstance(err, verifier.VerifierError)
        assert err.hint and "bound your loop" in err.hint, err.explain()
        # the verifier's own reason is kept, however this kernel refuses the loop
        assert re.search(LOOP_REFUSALS, err.log), err.log[-2000:]
        if err.errno == errno.E2BIG:  # bcc calls this "Program too large (11 insns)"
            assert err.message.startswith("the verifier gave up after processing "), err.message
            assert "too large (" not in err.message
    finally:
        prog.close()


def test_bpf_cell_keeps_program_and_reads_the_nbgrader_stub():
    ns = {}
    starter = SAFE.replace(
        "    if (eth->h_proto == bpf_htons(ETH_P_IP))\n        return XDP_DROP;\n",
        "    # YOUR CODE HERE\n    raise NotImplementedError()\n",
    )
    prog = magic.bpf_cell("prog", starter, ns)
    try:
        assert ns["prog"] is prog and prog.ok and prog.kind == "xdp"
        assert "/* YOUR CODE HERE */" in prog.source
        with pytest.raises(checks.CheckFailed) as info:
            checks.xdp(
                prog,
                [checks.Case("IPv4", frames.udp(), "XDP_DROP"), checks.Case("ARP", frames.arp(), "XDP_PASS")],
                hint="the hint",
            )
        text = str(info.value)
        assert (
            "expected XDP_DROP" in text
            and "got XDP_PASS" in text
            and "hint: the hint" in text
            and "1 of 2 wrong" in text
        )
        solved = magic.bpf_cell("prog", SAFE, ns)
        checks.xdp(
            solved, [checks.Case("IPv4", frames.udp(), "XDP_DROP"), checks.Case("ARP", frames.arp(), "XDP_PASS")]
        )
        assert prog.program is None  # the replaced program was unloaded
    finally:
        for p in ns.values():
            p.close()


def test_refused_cell_reports_instead_of_raising(capsys):
    ns = {}
    prog = magic.bpf_cell("bad", UNSAFE, ns)
    try:
        assert not prog.ok
        out = capsys.readouterr().out
        # the line as the editor numbers it: `%%bpf bad` is line 1, the read of h_proto line 5
        assert "the verifier refused xdp_main" in out and "<- cell line 5" in out
        with pytest.raises(checks.CheckFailed, match="did not load"):
            checks.xdp(prog, [checks.Case("IPv4", frames.udp(), "XDP_DROP")])
    finally:
        prog.close()


def _lesson_cell(lesson: str, first_line: str) -> str:
    """The source of the cell of LESSON (labs/source) that starts with FIRST_LINE."""
    nb = nbformat.read(LABS / lesson, as_version=4)
    return next(c.source for c in nb.cells if c.source.startswith(first_line))


def _without_solution(source: str) -> str:
    return re.sub(r"\n *// BEGIN SOLUTION.*?// END SOLUTION", "", source, flags=re.S)


def _editor_line(cell: str, text: str) -> int:
    """The line of CELL (magic line included, as the editor numbers it) holding TEXT."""
    return next(i for i, line in enumerate(cell.split("\n"), 1) if text in line)


def test_a_refusal_shows_the_students_own_lines_with_the_editors_numbers():
    cell = _without_solution(_lesson_cell("02-first-xdp/02-first-xdp.ipynb", "%%bpf counter"))
    line, _, body = cell.partition("\n")
    ns = {}
    prog = magic.bpf_cell(line.split()[1], body, ns)
    try:
        text = prog.explain()
        assert "map_value_or_null" in text and "bpf_pseudo_fd" not in text, text
        assert f"; u64 *value = seen.lookup(&key);    <- cell line {_editor_line(cell, 'seen.lookup')}" in text, text
        assert "@ main.c" not in text and "return XDP_PASS;`" not in prog.refused.hint
    finally:
        prog.close()
    typo = "%%bpf typo\n#include <linux/if_ether.h>\nint xdp_main(struct xdp_md *ctx) {\n    return XDP_DROPP;\n}"
    prog = magic.bpf_cell("typo", typo.partition("\n")[2], ns)
    assert "cell line 4, column 12: error: use of undeclared identifier 'XDP_DROPP'" in prog.explain(), prog.explain()


def test_the_stub_keeps_the_editors_line_numbers():
    starter = "int xdp_main(struct xdp_md *ctx) {\n    # YOUR CODE HERE\n    raise NotImplementedError()\n    return XDP_PASS;\n}"
    assert magic.from_stub(starter).split("\n")[3] == "    return XDP_PASS;"


def test_hints_name_the_check_and_leave_the_verdict_to_the_exercise():
    """Lesson 02 passes frames too short for a header, lesson 04 drops them; a missing map
    entry is created in lesson 02's counter: no hint may prescribe one verdict."""
    for message in (
        "invalid access to packet, off=12 size=2",
        "R0 invalid mem access 'map_value_or_null'",
        "R2 unbounded memory access, make sure to bounds check any such access",
    ):
        hint = verifier.hint_for(message)
        assert hint and not re.search(r"return XDP_(PASS|DROP)", hint), (message, hint)
    assert "data_end" in verifier.hint_for("invalid access to packet") and "NULL" in verifier.hint_for(
        "map_value_or_null"
    )


def test_rerunning_an_unchanged_cell_reuses_its_program_with_fresh_maps():
    cell = _lesson_cell("02-first-xdp/02-first-xdp.ipynb", "%%bpf counter")
    body = cell.partition("\n")[2]
    ns = {}
    try:
        first = magic.bpf_cell("counter", body, ns)
        fd = first.fn.fd
        for _ in range(3):
            first.run(frames.udp())
        again = magic.bpf_cell("counter", body, ns)
        assert first.program is None and again.fn.fd == fd  # not compiled again
        assert len(again.map("seen")) == 0  # the maps as a fresh load has them
        for _ in range(2):
            again.run(frames.udp())
        assert {k.value: v.value for k, v in again.map("seen").items()} == {0: 2}
        other = magic.bpf_cell("other", body, ns)  # never share a map with a cell that holds it
        twin = magic.CellProgram("counter", body)
        try:
            assert twin.fn.fd != fd and other.fn.fd != fd
        finally:
            twin.close()
        changed = magic.bpf_cell("counter", body.replace("XDP_PASS", "XDP_DROP"), ns)
        assert changed.fn.fd != fd and changed.run(frames.udp()).action == "XDP_DROP"
        refused = magic.bpf_cell("counter", _without_solution(cell).partition("\n")[2], ns)
        assert refused.refused is magic.bpf_cell("counter", _without_solution(cell).partition("\n")[2], ns).refused
    finally:
        for p in ns.values():
            p.close()


def _notebook_outputs(cells: list[str], workdir: Path) -> list[list[dict]]:
    """Run CELLS in a labkit kernel; the outputs of each."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        nb, kernel_name="labkit", timeout=300, allow_errors=True, resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return [c.outputs for c in nb.cells]


def test_in_a_notebook_a_wrong_answer_reads_as_a_verdict_and_the_loop_example_as_a_refusal(tmp_path):
    loop = _lesson_cell("04-parsing/04-parsing.ipynb", "%%bpf scan_unbounded")
    outputs = _notebook_outputs(
        [
            "%load_ext labkit.teaching\nfrom labkit.teaching import checks, frames",
            "%%bpf ipv4_drop\nint xdp_main(struct xdp_md *ctx) {\n    return XDP_PASS;\n}",
            'checks.xdp(ipv4_drop, [checks.Case("IPv4 / UDP", frames.udp(), "XDP_DROP"),\n'
            '                       checks.Case("ARP", frames.arp(), "XDP_PASS")], hint="compare eth->h_proto")',
            loop,
        ],
        tmp_path,
    )
    check = outputs[2]
    # the cell fails (nbgrader grades on the error) and shows the verdict alone, once
    assert [o["output_type"] for o in check] == ["error"] and check[0]["ename"] == "CheckFailed", check
    shown = "\n".join(check[0]["traceback"])
    assert shown.count("expected XDP_DROP") == 1 and shown.count("hint: compare eth->h_proto") == 1, shown
    assert "1 of 2 wrong" in shown and "Traceback" not in shown and "checks.py" not in shown, shown
    # lesson 04's unbounded loop: the verifier's reason, the loop hint, the editor's line
    refusal = "".join(o.get("text", "") for o in outputs[3])
    assert (
        "bound your loop" in refusal
        and "the verifier gave up after processing" in refusal
        or re.search(r"back-edge|infinite loop", refusal)
    ), refusal
    assert "too large (" not in refusal, refusal
    assert f"<- cell line {_editor_line(loop, 'return p == end')}" in refusal, refusal


def test_rewritten_bytes_are_shown_field_by_field():
    a, b = frames.udp(), bytearray(frames.udp())
    b[22] -= 1
    assert frames.describe_diff(a, bytes(b)) == ["IPv4 TTL (bytes 22..22): expected 40, got 3f"]


def test_names_carry_the_slot_within_the_limit():
    with students.as_student("s42"):
        assert live.host_name("snd") == "s42snd"
        with live.testbed() as topo:
            names = [i.name for pair in topo.links for i in pair]
            assert all("-s42" in n and len(n) <= 15 for n in names), names
    with pytest.raises(InputError):
        students.check_slot("student7")


def test_pinned_maps_are_per_student(tmp_path):
    ns = {}
    prog = magic.bpf_cell("pins", "BPF_ARRAY(m, u64, 1);\nint xdp_main(struct xdp_md *ctx) { return XDP_PASS; }", ns)
    try:
        paths = []
        for s in ("s61", "s62"):
            paths.append(students.pin_map(prog.map("m"), "m", student=s))
            assert paths[-1].parent.name == s
        assert all(p.exists() for p in paths)
        students.clear_pins("s61")
        assert not paths[0].exists() and paths[1].exists()
    finally:
        students.clear_pins("s61"), students.clear_pins("s62")
        prog.close()


def test_measurement_lock_is_machine_wide_and_functional_checks_do_not_wait(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from labkit.teaching import students\n"
                "with students.measurement_turn(log=None):\n"
                "    print('held', flush=True); sys.stdin.readline()\n"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LABKIT_STUDENT": "s71"},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        told = []
        with pytest.raises(InputError, match="busy"):
            with students.measurement_turn(timeout_s=0.5, log=told.append):
                pass
        assert told and "s71" in told[0]
        # a functional check needs no lock
        ns = {}
        prog = magic.bpf_cell("p", SAFE, ns)
        try:
            checks.xdp(prog, [checks.Case("IPv4", frames.udp(), "XDP_DROP")])
        finally:
            prog.close()
    finally:
        holder.communicate("go\n", timeout=30)
    with students.measurement_turn(timeout_s=30, log=None) as turn:
        assert turn.waited_s >= 0


def _testbed_process(student: str) -> subprocess.Popen:
    code = (
        "import sys; from labkit.teaching import live\n"
        "with live.testbed():\n    print('up', flush=True); sys.stdin.readline()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LABKIT_STUDENT": student},
    )
    assert p.stdout.readline().strip() == "up"
    return p


def _namespaces(student: str) -> list[str]:
    return sorted(n for n in os.listdir("/run/netns") if f"-{student}" in n) if os.path.isdir("/run/netns") else []


def test_clean_touches_only_the_callers_runs(monkeypatch):
    one, two = _testbed_process("s81"), _testbed_process("s82")
    try:
        assert len(_namespaces("s81")) == 2 and len(_namespaces("s82")) == 2
        monkeypatch.setenv("LABKIT_STUDENT", "s81")
        removed = cleanup.clean(include_live=True, log=lambda m: None)
        assert sorted(removed["namespaces"]) == _namespaces("s81") or not _namespaces("s81")
        assert _namespaces("s81") == [] and len(_namespaces("s82")) == 2
    finally:
        for p in (one, two):
            try:
                p.communicate("go\n", timeout=60)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    assert _namespaces("s82") == []


LABS = Path(__file__).resolve().parents[1] / "labs" / "source"


def _run_as(student: str, notebook: Path, workdir: Path, out: dict):
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, kernel_name="labkit", timeout=600, allow_errors=True, resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute(env={**os.environ, "LABKIT_STUDENT": student, "LABKIT_SMOKE": "1"})
    except Exception as exc:  # reported by the test below with the student's name
        out[student] = [f"{type(exc).__name__}: {exc}"]
        return
    out[student] = [
        f"cell {i}: {o['ename']}: {o['evalue'][:300]}"
        for i, c in enumerate(nb.cells)
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


@pytest.mark.parametrize(
    "lesson", ["01-testbed/01-testbed.ipynb", "03-maps/03-maps.ipynb", "09-measuring/09-measuring.ipynb"]
)
def test_two_students_run_a_lesson_at_once(lesson, tmp_path):
    """Both pass: lesson 1 checks that each sees only their own namespaces while the other's
    testbed may be up; lesson 3 sends traffic on both testbeds at once; lesson 9 measures,
    each trial waiting for the machine-wide measurement lock."""
    out, threads = {}, []
    for s in ("s11", "s12"):
        (tmp_path / s).mkdir()
        threads.append(threading.Thread(target=_run_as, args=(s, LABS / lesson, tmp_path / s, out)))
    for t in threads:
        t.start()
        time.sleep(0.5)
    for t in threads:
        t.join(900)
    assert set(out) == {"s11", "s12"}
    assert out == {"s11": [], "s12": []}, out
