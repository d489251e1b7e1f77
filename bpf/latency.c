/* One-way latency probes. Control plane: labkit/dataplanes/latency_probe.py (loads it, fills
 * lat_template, sends probes with BPF_PROG_RUN in live-frames mode, or with AF_PACKET where
 * live frames are refused, and reads every probe's delay).
 *
 * All hosts of the testbed share one kernel and so one clock: the sender stamps each
 * probe with bpf_ktime_get_ns() as it goes out, the sink reads the same clock as the
 * probe arrives, and the difference is the one-way delay through whatever forwards in
 * between (generator's transmit, the device under test, delivery to the sink's XDP hook).
 *
 * lat_probe (sender): run with BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES and a context
 * whose ingress_ifindex is PROBE_IFINDEX (-D define): restores the frame's first
 * LAT_TEMPLATE bytes from lat_template (a forwarder may have rewritten the recycled page),
 * writes a sequence number and the send time after LAT_MAGIC, and returns XDP_TX. Any
 * other packet passes.
 *
 * lat_stamp (sender, tc clsact egress of the sending interface): the path where live frames
 * are refused. The control plane sends the probe frame itself with AF_PACKET; as a probe
 * (the same test as the sink's) leaves, it gets the sequence number and send time that
 * lat_probe would write, and is counted as LAT_SENT. Every packet goes on (TC_ACT_OK).
 *
 * lat_sink (receiver, attached with XDP): a UDP frame to LAT_PORT whose payload starts
 * with LAT_MAGIC is a probe: its delay is kept in lat_samples, the n-th probe since the
 * control plane last cleared the maps in slot n (n from lat_kept, taken atomically, as
 * probes may arrive on any CPU; beyond LAT_SAMPLES probes a delay is counted, not kept),
 * and the largest delay goes into lat_counts[LAT_MAX_NS]. The control plane reads the
 * delays into an HDR histogram. Everything else is counted as LAT_OTHER. Every frame is
 * then dropped (SINK_VERDICT, -D define, default XDP_DROP): the sink is the end of the path.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "parsing_helpers.h"
#include "latency.h"

#ifndef PROBE_IFINDEX
#define PROBE_IFINDEX 0
#endif
#ifndef SINK_VERDICT
#define SINK_VERDICT XDP_DROP
#endif

struct lat_template {
    u8 bytes[LAT_TEMPLATE];
};

struct lat_probe_hdr {
    u32 magic;   /* LAT_MAGIC */
    u32 seq;     /* per-CPU sequence of the sender */
    u64 sent_ns; /* bpf_ktime_get_ns() at send */
};

BPF_ARRAY(lat_template, struct lat_template, 1);
BPF_PERCPU_ARRAY(lat_seq, u32, 1);
BPF_PERCPU_ARRAY(lat_counts, u64, LAT_COUNTS);
struct lat_samples {
    u64 ns[LAT_SAMPLES];
};

BPF_ARRAY(lat_kept, u64, 1); /* probes whose delay was taken since the last clear (all CPUs) */
BPF_ARRAY(lat_samples, struct lat_samples, 1);

/* The sequence number and the send time into probe header H; one more probe sent. */
static __always_inline void lat_stamp_hdr(struct lat_probe_hdr *h)
{
    u32 zero = 0, sent = LAT_SENT;
    u32 *seq = lat_seq.lookup(&zero);
    if (seq) {
        h->seq = *seq;
        *seq += 1;
    }
    u64 *n = lat_counts.lookup(&sent);
    if (n)
        *n += 1;
    h->sent_ns = bpf_ktime_get_ns(); /* last: as close to the transmit as the program gets */
}

/* The probe header of the frame [DATA, DATA_END): UDP to LAT_PORT whose payload opens with
 * LAT_MAGIC; 0 for any other frame. */
static __always_inline struct lat_probe_hdr *lat_probe_of(void *data, void *data_end)
{
    struct hdr_cursor nh = {.pos = data};
    struct ethhdr *eth;
    struct iphdr *ip;
    struct udphdr *udp;
    if (parse_ethhdr(&nh, data_end, &eth) != htons(ETH_P_IP) || parse_iphdr(&nh, data_end, &ip) != IPPROTO_UDP
        || parse_udphdr(&nh, data_end, &udp) < (int)sizeof(struct lat_probe_hdr) || udp->dest != htons(LAT_PORT))
        return 0;
    struct lat_probe_hdr *h = CURSOR_TAKE(&nh, data_end, struct lat_probe_hdr);
    if (!h || h->magic != LAT_MAGIC)
        return 0;
    return h;
}

int lat_probe(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    if (ctx->ingress_ifindex != PROBE_IFINDEX)
        return XDP_PASS;
    struct lat_template *tpl = lat_template.lookup(&zero);
    if (!tpl || data + LAT_TEMPLATE > data_end)
        return XDP_ABORTED;
    __builtin_memcpy(data, tpl->bytes, LAT_TEMPLATE);
    lat_stamp_hdr(data + LAT_PAYLOAD);
    return XDP_TX;
}

/* Headers up to the end of the probe header: what lat_stamp reads and writes. */
#define LAT_HEADERS (LAT_STAMP + 8)

int lat_stamp(struct __sk_buff *skb)
{
    /* a sender may leave all but the Ethernet header in page fragments: pull the rest in */
    if ((long)skb->data_end - (long)skb->data < LAT_HEADERS && skb->len >= LAT_HEADERS)
        bpf_skb_pull_data(skb, LAT_HEADERS);
    struct lat_probe_hdr *h = lat_probe_of((void *)(long)skb->data, (void *)(long)skb->data_end);
    if (h)
        lat_stamp_hdr(h);
    return TC_ACT_OK;
}

static __always_inline void lat_inc(u32 slot)
{
    u64 *n = lat_counts.lookup(&slot);
    if (n)
        *n += 1;
}

int lat_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u64 now = bpf_ktime_get_ns();
    struct lat_probe_hdr *h = lat_probe_of(data, data_end);
    if (!h)
        goto other;
    u64 sent = h->sent_ns;
    if (sent > now) {
        lat_inc(LAT_CLOCK_BACK);
        return SINK_VERDICT;
    }
    u64 d = now - sent;
    u32 zero = 0;
    u64 *kept = lat_kept.lookup(&zero);
    struct lat_samples *s = lat_samples.lookup(&zero);
    if (kept && s) {
        u64 n = __sync_fetch_and_add(kept, 1);
        if (n < LAT_SAMPLES)
            s->ns[n & (LAT_SAMPLES - 1)] = d;
    }
    lat_inc(LAT_PROBES);
    u32 slot = LAT_MAX_NS;
    u64 *mx = lat_counts.lookup(&slot);
    if (mx && d > *mx)
        *mx = d;
    return SINK_VERDICT;
other:
    lat_inc(LAT_OTHER);
    return SINK_VERDICT;
}
