/* Per-CPU counters, as every program in bpf/ keeps them: a BPF_PERCPU_ARRAY indexed by
 * an enum of the program's header (bpf/include/<program>.h), which the Python control
 * plane reads for the names. Per-CPU slots need no atomics: each CPU adds to its own.
 *
 *     PKT_COUNTERS(counters, DROP_FILTER_VERDICTS);   // packets and bytes per index
 *     pkt_count(counters.lookup(&idx), len);
 *
 *     BPF_PERCPU_ARRAY(events, u64, N);               // packets only
 *     count_inc(events.lookup(&idx));
 *
 * (The map lookup stays in the program's own file: bcc rewrites map calls there.)
 */
#ifndef LABKIT_COUNTERS_H
#define LABKIT_COUNTERS_H

struct pkt_counter {
    u64 packets;
    u64 bytes;
};

#define PKT_COUNTERS(name, entries) BPF_PERCPU_ARRAY(name, struct pkt_counter, entries)

/* One packet of LEN bytes into the slot C (a per-CPU lookup's result; 0 is ignored). */
static __always_inline void pkt_count(struct pkt_counter *c, u64 len)
{
    if (c) {
        c->packets++;
        c->bytes += len;
    }
}

static __always_inline void count_inc(u64 *c)
{
    if (c)
        *c += 1;
}

#endif /* LABKIT_COUNTERS_H */
