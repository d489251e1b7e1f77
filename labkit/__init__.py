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
REPORTS_DIR = ROOT / "reports"
NOTEBOOKS_DIR = ROOT / "notebooks"
BUILD_DIR = ROOT / "build"
