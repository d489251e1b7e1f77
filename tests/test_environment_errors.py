"""Missing bcc or kernel headers give a clear error that says what to install, before any
program is loaded."""

import subprocess
import sys
import textwrap

import pytest
from conftest import needs_root

from labkit import bpf
from labkit.errors import MissingDependency


@needs_root
def test_missing_kernel_headers(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_KERNEL_HEADERS", str(tmp_path / "no-headers"))
    with pytest.raises(MissingDependency, match="kernel headers not found.*make setup"):
        bpf.load("xdp_minimal")


def test_missing_bcc_says_which_package():
    code = textwrap.dedent("""
        import sys
        sys.modules["bcc"] = None  # what an environment without Debian's python3-bpfcc sees
        from labkit import bpf
        from labkit.errors import MissingDependency
        try:
            bpf.check_bcc()
        except MissingDependency as e:
            print("MISSING", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "MISSING" in out.stdout and "python3-bpfcc" in out.stdout and "never PyPI" in out.stdout, out.stderr


def test_unknown_program_lists_the_sources():
    with pytest.raises(Exception, match="drop_filter"):
        bpf.Program("no_such_program")
