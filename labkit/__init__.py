"""labkit: measure fast packet processing on Linux (XDP, eBPF, DPDK, the kernel stack).

The core, in the order imports point (never upwards):
hosts -> topology -> bpf -> traffic -> measure -> results; experiments compose them,
plots draws them, report and cli drive notebooks.
"""
import os
from pathlib import Path

__version__ = "0.1.0"

#: The repository root (labkit is installed editable from it).
ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "bpf"
#: measured tables; LABKIT_DATA_DIR points a run (and the comparison) elsewhere
DATA_DIR = Path(os.environ.get("LABKIT_DATA_DIR") or ROOT / "data")
#: executed notebooks, HTML and the index; LABKIT_REPORTS_DIR points a batch elsewhere
#: (the test suite points both at temporary folders, so it never touches a person's own)
REPORTS_DIR = Path(os.environ.get("LABKIT_REPORTS_DIR") or ROOT / "reports")
NOTEBOOKS_DIR = ROOT / "notebooks"
BUILD_DIR = ROOT / "build"
