"""The `labkit` command as a person types it: every mistake in a request is one line on
stderr that says what is wrong and what to write, exit code 2, and nothing has run (no
notebook executed, no kernel started, no namespace, link or run registered). A notebook
that fails while it runs is shown as its one-line error and the executed notebook's path;
--verbose adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cleanup
from labkit.testbed import runs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

#: (arguments, what the one-line message must say)
MISTAKES = [
    (
        ["run", "01-xdp-drop", "-p", "nosuch", "1"],
        "notebook 01-xdp-drop has no parameter 'nosuch'; it declares: smoke, sizes, trials",
    ),
    (["run", "01-xdp-drop", "-p", "trails", "2"], "no parameter 'trails' (did you mean 'trials'?)"),
    (["report", "-p", "trial", "2"], "no notebook has a parameter 'trial' (did you mean 'trials'?)"),
    (
        ["run", "01-xdp-drop", "-p", "01-xdp-dorp:trials", "2"],
        "notebook '01-xdp-dorp', which does not exist (did you mean '01-xdp-drop'?)",
    ),
    (
        ["run", "01-xdp-drop", "-p", "01-xdp-drop:xdp_mode", "generic"],
        "notebook 01-xdp-drop has no parameter 'xdp_mode'",
    ),
    (["run", "01-xdp-dorp"], "no notebook '01-xdp-dorp' (did you mean '01-xdp-drop'?)"),
    (["run", "01-xdp-drop", "-p", "trials", "abc", "--smoke"], "trials 'abc': expected a whole number"),
    (["run", "01-xdp-drop", "-p", "trials", "0", "--smoke"], "trials 0: at least 1"),
    (["run", "01-xdp-drop", "-p", "trials", "2.5"], "trials 2.5: expected a whole number"),
    (["run", "01-xdp-drop", "-p", "count", "-5"], "count -5: send at least one packet"),
    (["run", "01-xdp-drop", "-p", "sizes", "[10]"], "packet size 10 is below 60 bytes"),
    (["run", "01-xdp-drop", "-p", "sizes", "10", "--smoke"], "packet size 10 is below 60 bytes"),
    (["run", "01-xdp-drop", "-p", "sizes", "[]"], "sizes is empty"),
    (["run", "01-xdp-drop", "-p", "variants", "[xdp_nativ]"], "choose from"),
    (["run", "01-xdp-drop", "-p", "generator", "trafgn"], "did you mean 'trafgen'?"),
    (["run", "01-xdp-drop", "-p", "rule", "tcp"], "rule 'tcp': choose one of"),
    (["run", "01-xdp-drop", "-p", "smoke", "maybe"], "smoke 'maybe': expected true or false"),
    (["run", "01-xdp-drop", "-p", "rate_pps", "fast"], "rate_pps 'fast': expected a number"),
    (["run", "01-xdp-drop", "-p", "receiver_if", "nosuch0"], "receiver_if 'nosuch0': no such interface here"),
    (["run", "01-xdp-drop", "-p", "receiver_if", "lo"], "receiver_if without sender_if"),
    (["run", "02-l2-forwarding", "-p", "dpdk_lcores", "99"], "lcore(s) [99] do not exist"),
    (["run", "02-l2-forwarding", "-p", "xdp_mode", "turbo"], "xdp_mode 'turbo'"),
    (["run", "03-ebpf-nat", "-p", "port_range", "nonsense"], "give two ports"),
    (["run", "03-ebpf-nat", "-p", "port_range", "[30000, 20000]"], "inverted"),
    (["run", "03-ebpf-nat", "-p", "clients", "99"], "clients 99"),
    (["run", "04-comparison", "-p", "cost_repeat", "lots"], "cost_repeat 'lots': expected a whole number"),
    (["run", "01-xdp-drop", "-p", "sizes", "[64"], "is read as YAML and is not valid"),
    (["run", "01-xdp-drop", "-p", "trials"], "expected 2 arguments"),
    (["run"], "name at least one notebook (01-xdp-drop, "),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "01-xdp-drop", "--smoek"], "unrecognized arguments: --smoek"),
]

FILES = {
    "broken.yaml": ("trials: [1\n", "is not valid YAML"),
    "section.yaml": ("01-xdp-drp:\n  trials: 2\n", "did you mean '01-xdp-drop'?"),
    "unknown.yaml": ("nosuch: 1\n", "has no parameter 'nosuch'"),
    "list.yaml": ("- 1\n- 2\n", "holds a mapping of NAME: VALUE"),
    "value.yaml": ("01-xdp-drop:\n  count: many\n", "count 'many': expected a whole number"),
    "latin1.yaml": (b"trials: 3\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8"),
}


def labkit(args, tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`labkit ARGS` as a user runs it, its reports, tables and run registry in TMP."""
    env = dict(
        os.environ,
        LABKIT_REPORTS_DIR=str(tmp / "reports"),
        LABKIT_DATA_DIR=str(tmp / "data"),
        LABKIT_RUNTIME_DIR=str(tmp / "run"),
    )
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _files(folder: Path) -> list:
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


def assert_refused(cp: subprocess.CompletedProcess, hint: str, tmp: Path, before_ns: set) -> None:
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 2, f"exit {cp.returncode}: {cp.stderr[-2000:]}"
    assert len(lines) == 1, f"not one line:\n{cp.stderr}"
    assert lines[0].startswith("labkit"), lines[0]
    assert hint in lines[0], f"{hint!r} not in {lines[0]!r}"
    assert "Traceback" not in cp.stderr and not cp.stdout.strip(), cp.stdout
    # nothing ran: no notebook executed (reports, tables), no run registered (every change
    # labkit makes to the kernel registers its run first), no kernel started
    assert not _files(tmp / "reports") and not _files(tmp / "data") and not _files(tmp / "run")
    assert "Kernel" not in cp.stderr
    new = set(cleanup.labkit_namespaces()) - before_ns
    theirs = runs.live_prefixes()  # other work on this machine may build testbeds meanwhile
    assert not [n for n in new if n[:6] not in theirs], f"namespaces made: {new}"


@pytest.mark.parametrize("args,hint", MISTAKES, ids=[" ".join(a) or "(none)" for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2_before_anything_runs(args, hint, tmp_path):
    before = set(cleanup.labkit_namespaces())
    assert_refused(labkit(args, tmp_path), hint, tmp_path, before)


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_bad_parameters_file_is_one_line_and_exit_2(name, tmp_path):
    text, hint = FILES[name]
    f = tmp_path / "in" / name
    f.parent.mkdir()
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = set(cleanup.labkit_namespaces())
    assert_refused(labkit(["run", "01-xdp-drop", "-f", str(f)], tmp_path), hint, tmp_path, before)
    assert_refused(
        labkit(["run", "01-xdp-drop", "-f", str(tmp_path / "none.yaml")], tmp_path),
        "none.yaml does not exist",
        tmp_path,
        before,
    )


def test_help_lists_the_commands_and_exits_0(tmp_path):
    cp = labkit(["--help"], tmp_path)
    assert cp.returncode == 0 and "labkit report" in cp.stdout and "labkit clean" in cp.stdout
    cp = labkit(["run", "--help"], tmp_path)
    assert cp.returncode == 0 and "--verbose" in cp.stdout and "-p NAME VALUE" in cp.stdout
    assert not _files(tmp_path / "reports")


def test_a_notebook_that_fails_is_one_line_and_its_executed_copy(tmp_path):
    """A value only the notebook itself refuses (the comparison has no Params): the batch
    runs, fails, and says why in one line plus where the executed notebook is; the
    papermill traceback only with --verbose."""
    args = ["run", "04-comparison", "--no-progress", "-p", "measure_costs", "true", "-p", "cost_repeat", "-1"]
    cp = labkit(args, tmp_path, timeout=300)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out[-3000:]
    executed = tmp_path / "reports" / "04-comparison.ipynb"
    assert "04-comparison: FAILED" in out and "InputError: repeat -1" in out, out[-3000:]
    assert f"the executed notebook, with the traceback: {executed}" in out and executed.exists()
    assert "PapermillExecutionError" not in out and "in measure(" not in out and "--> " not in out, out[-3000:]
    cp = labkit([*args, "--verbose"], tmp_path, timeout=300)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1 and "InputError: repeat -1" in out
    assert "in measure(" in out and "--> " in out, out[-3000:]  # the traceback's end: where it was raised
