"""One control plane per program in bpf/: whoever opens ``bpf/X.c`` finds the Python that
loads it, fills its maps and reads its counters here.

- `drop_filter` (bpf/drop_filter.c): the XDP/tc drop filter with rules in maps;
- `nat` (bpf/nat.c) and its reference model `nat_model`, its input checks and clock
  `nat_input`: the eBPF NAT at tc; `xdp_nat`: its XDP fast path over the same maps;
- `xdp_fwd` (bpf/xdp_fwd.c): a port pair forwarded at XDP or tc, l2fwd's MAC rewrite;
- `xdp_gen` (bpf/xdp_gen.c): the in-kernel generator's program and template;
- `xdp_loop` (bpf/xdp_loop.c): the loop of XDP programs that generates without live frames;
- `softirq_clock` (bpf/softirq_time.c): exact softirq time per vector;
- `minimal` (bpf/xdp_minimal.c): bare programs, the baselines of program costs;
- `latency` (bpf/latency.c): one-way latency probes stamped at the sender, histogrammed at the sink.
"""


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
