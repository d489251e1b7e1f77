/* Time spent in each softirq vector, per CPU, in nanoseconds, from the softirq_entry and
 * softirq_exit raw tracepoints (no tracefs needed). The receive path of every variant (NAPI, XDP, tc,
 * netfilter, the stack) runs in NET_RX softirq, so this is what receiving costs, measured
 * exactly rather than sampled at timer ticks. Two tracepoint hits per softirq run (a
 * batch of packets), not per packet. Control plane: labkit/dataplanes/softirq_clock.py.
 *
 * The generator's own polls (GEN_LOOP, -D define, where tracefs is mounted): the xdp_loop
 * generator's frames circulate between two veths (`lkXXXX-xl<n>a` and `b`) whose NAPI polls
 * run in the same NET_RX softirq as the receiver's. The napi:napi_poll tracepoint fires as
 * each poll ends, naming its device: the time since the previous poll ended (or the
 * softirq began) on that CPU is that poll's, and a loop device's goes into gen_ns, which
 * the control plane takes off NET_RX, so NET_RX stays the receiver's cost alone. */
#define NR_VEC 10
#define NET_RX_VEC 3

BPF_PERCPU_ARRAY(started, u64, 1);
BPF_PERCPU_ARRAY(ns, u64, NR_VEC);
BPF_PERCPU_ARRAY(runs, u64, NR_VEC);
#ifdef GEN_LOOP
BPF_PERCPU_ARRAY(poll_mark, u64, 1); /* end of the last poll in this NET_RX run; 0 outside one */
BPF_PERCPU_ARRAY(gen_ns, u64, 1);

static __always_inline void mark_polls(u64 now)
{
    u32 zero = 0;
    u64 *m = poll_mark.lookup(&zero);
    if (m)
        *m = now;
}

TRACEPOINT_PROBE(napi, napi_poll)
{
    u32 zero = 0;
    u64 *m = poll_mark.lookup(&zero);
    if (!m || !*m)
        return 0; /* a threaded NAPI poll: not softirq time */
    u64 now = bpf_ktime_get_ns(), d = now - *m;
    *m = now;
    char name[16] = {};
    TP_DATA_LOC_READ_STR(name, dev_name, sizeof(name));
    if (name[0] == 'l' && name[1] == 'k' && name[6] == '-' && name[7] == 'x' && name[8] == 'l') {
        u64 *sum = gen_ns.lookup(&zero);
        if (sum)
            *sum += d;
    }
    return 0;
}
#else
static __always_inline void mark_polls(u64 now) {}
#endif

RAW_TRACEPOINT_PROBE(softirq_entry)
{
    u32 zero = 0;
    u64 now = bpf_ktime_get_ns();
    u64 *t = started.lookup(&zero);
    if (t)
        *t = now;
    mark_polls((u32)ctx->args[0] == NET_RX_VEC ? now : 0);
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
    mark_polls(0);
    u64 *sum = ns.lookup(&vec);
    if (sum)
        *sum += d;
    u64 *n = runs.lookup(&vec);
    if (n)
        *n += 1;
    return 0;
}
