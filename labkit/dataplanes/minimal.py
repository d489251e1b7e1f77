"""The control plane of bpf/xdp_minimal.c: the bare programs, nothing to configure.

- `xdp_drop_bare`: XDP_DROP and nothing else, the baseline that program costs are
  compared against (what a program costs beyond being run at all);
- `xdp_pass_bare`: XDP_PASS, the one-line program a veth peer needs so that XDP frames
  sent towards it are delivered (it switches the peer to NAPI mode).

    with Minimal() as m, bpf.attach_xdp(rcv, m.drop(), "native"):
        ...
"""

from __future__ import annotations

from labkit import bpf
from labkit.dataplanes import ControlPlane

SOURCE = "xdp_minimal"


class Minimal(ControlPlane):
    """bpf/xdp_minimal.c loaded. Context manager: exit unloads it."""

    def __init__(self):
        self.program = bpf.load(SOURCE)

    def drop(self):
        """The bare XDP_DROP program (the cost baseline, a sink)."""
        return self.program.function("xdp_drop_bare", "xdp")

    def pass_(self):
        """The bare XDP_PASS program (puts a veth peer in NAPI mode)."""
        return self.program.function("xdp_pass_bare", "xdp")
