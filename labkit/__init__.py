"""labkit: measure fast packet processing on Linux (XDP, eBPF, DPDK, the kernel stack).

Its layers, bottom first; imports point down, never up (docs/architecture.md says what
each owns, tests/test_architecture.py checks it):
  paths (here), errors, capabilities, addresses, packets -> testbed.runs, testbed.signals
  -> testbed.hosts and remote hosts, bpf, bpf_enums, verifier -> testbed (topology,
  netfilter, bridge, livelab, inventory) -> dataplanes, dpdk, probes, ovs -> traffic
  -> measure -> results -> experiments -> widgets, teaching, cleanup -> reporting, bench,
  doctor, watchdog, provision -> cli.
Experiments compose the core; reporting and the command line read what experiments declare.
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
