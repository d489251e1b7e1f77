"""One control plane per program in bpf/: whoever opens ``bpf/X.c`` finds the Python that
loads it, fills its maps and reads its counters here.

- `drop_filter` (bpf/drop_filter.c): the XDP/tc drop filter with rules in maps;
- `nat` (bpf/nat.c) and its reference model `nat_model`, its input checks `nat_checks`,
  map encodings `nat_encoding` and the kernel's clock its flows age by, `jiffies`: the
  eBPF NAT at tc; `xdp_nat`: its XDP fast path over the same maps;
- `xdp_fwd` (bpf/xdp_fwd.c): a port pair forwarded at XDP or tc, l2fwd's MAC rewrite;
- `xdp_gen` (bpf/xdp_gen.c): the in-kernel generator's program and template;
- `xdp_loop` (bpf/xdp_loop.c): the loop of XDP programs that generates without live frames;
- `softirq_clock` (bpf/softirq_time.c): exact softirq time per vector;
- `minimal` (bpf/xdp_minimal.c): bare programs, the baselines of program costs;
- `latency_probe` (bpf/latency.c): one-way latency probes stamped at the sender, histogrammed at the sink.
A module's names from a header of bpf/include/ are read on first use, not at import
(`read_when_needed`): from the include folder in effect then (`bpf.include_dir()`).
"""

import functools
from types import SimpleNamespace


def read_when_needed(read):
    """`header, __getattr__ = read_when_needed(read)` in a module: READ() returns the names
    a header gives ({name: value}); `header()` calls it once, on first use, and they are the
    module's attributes too (`drop_filter.VERDICTS`)."""
    header = functools.cache(lambda: SimpleNamespace(**read()))

    def __getattr__(name: str):
        if name.startswith("__"):  # the import machinery's and tools' probes read no header
            raise AttributeError(name)
        return getattr(header(), name)

    return header, __getattr__


class ControlPlane:
    """What every control plane here shares: it owns one loaded program
    (`self.program`, from `labkit.bpf.load`); `close()` unloads it with its maps, and the
    control plane is a context manager that closes on exit."""

    program = None

    def close(self) -> None:
        if self.program is not None:
            self.program.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
