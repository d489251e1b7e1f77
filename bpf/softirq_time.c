/* Time spent in each softirq vector, per CPU, in nanoseconds, from the softirq_entry and
 * softirq_exit raw tracepoints (no tracefs needed). The receive path of every variant (NAPI, XDP, tc,
 * netfilter, the stack) runs in NET_RX softirq, so this is what receiving costs, measured
 * exactly rather than sampled at timer ticks. Two tracepoint hits per softirq run (a
 * batch of packets), not per packet. Control plane: labkit/dataplanes/softirq_clock.py. */
#define NR_VEC 10

BPF_PERCPU_ARRAY(started, u64, 1);
BPF_PERCPU_ARRAY(ns, u64, NR_VEC);
BPF_PERCPU_ARRAY(runs, u64, NR_VEC);

RAW_TRACEPOINT_PROBE(softirq_entry)
{
    u32 zero = 0;
    u64 *t = started.lookup(&zero);
    if (t)
        *t = bpf_ktime_get_ns();
    return 0;
}

RAW_TRACEPOINT_PROBE(softirq_exit)
{
    u32 zero = 0, vec = (u32)ctx->args[0]; /* TP_PROTO(unsigned int vec_nr) */
    u64 *t = started.lookup(&zero);
    if (!t || !*t || vec >= NR_VEC)
        return 0;
    u64 d = bpf_ktime_get_ns() - *t;
    *t = 0;
    u64 *sum = ns.lookup(&vec);
    if (sum)
        *sum += d;
    u64 *n = runs.lookup(&vec);
    if (n)
        *n += 1;
    return 0;
}
