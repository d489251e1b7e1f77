/* The in-kernel traffic generator and the sink that checks it. Control plane:
 * labkit/dataplanes/xdp_gen.py (loads it, fills gen_config and gen_template, parks it
 * in the XDP dispatcher); the traffic backend on top is labkit/traffic/xdpgen.py.
 *
 * Generator: userspace builds one valid frame (labkit.packets) and runs xdp_gen on it
 * with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): each repetition
 * is one frame, and XDP_TX sends it out of the interface named by the context's
 * ingress_ifindex, which must be GEN_IFINDEX (-D define). Any other packet passes:
 * labkit keeps the program attached (generic mode) to the sending host's loopback so
 * that it stays in the kernel's XDP dispatcher between runs (DispatcherPin).
 * The kernel recycles frame pages without copying the frame in again, and a receiver
 * that rewrites a frame in place (a router's TTL and MACs, a NAT's addresses and ports)
 * rewrites the page that the next run sends. So every run first restores the headers
 * from `gen_template` (the first HDR_COPY bytes of the frame as built), then:
 *   gen_config.flows <= 1: the frame goes out as built (one flow), the fastest path.
 *   flows > 1: the program rewrites, per frame, the fields named in `gen_config.vary` to
 *                  base + f, where f = 0, 1, .., flows-1, 0, .. comes from a per-CPU
 *                  sequence, and updates the IPv4 header and L4 checksums incrementally
 *                  (bpf/include/gen_flows.h, shared with bpf/xdp_loop.c) from the restored
 *                  template values. The vary bits, L4 kinds and template sizes are the
 *                  enums of bpf/include/xdp_gen.h, which Python reads.
 * Frames are laid out as labkit.packets builds them: Ethernet, then IPv4 without
 * options or IPv6 without extension headers, then UDP, TCP or ICMP (ICMP: the echo
 * identifier stands in for the source port).
 *
 * Sink (a receiver used by tests and checks): xdp_gen_sink counts frames and bytes
 * per CPU and frames per flow (addresses and ports) in `sink_flows`, then returns
 * SINK_VERDICT (default XDP_DROP; -DSINK_VERDICT=2 passes frames on to the stack).
 */
#include <uapi/linux/bpf.h>
#include "parsing_helpers.h"
#include "counters.h"
#include "csum_helpers.h"
#include "xdp_gen.h"
#include "gen_flows.h"

#ifndef SINK_VERDICT
#define SINK_VERDICT XDP_DROP
#endif
#ifndef SINK_MAX_FLOWS
#define SINK_MAX_FLOWS 65536
#endif

struct gen_template {
    u8 bytes[HDR_COPY];
};

BPF_ARRAY(gen_config, struct gen_config, 1);
BPF_ARRAY(gen_template, struct gen_template, 1);
BPF_PERCPU_ARRAY(gen_seq, u32, 1);

#ifndef GEN_IFINDEX
#define GEN_IFINDEX 0
#endif

int xdp_gen(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    if (ctx->ingress_ifindex != GEN_IFINDEX)
        return XDP_PASS; /* a packet received where the program is only parked */
    struct gen_template *tpl = gen_template.lookup(&zero);
    if (!tpl || data + HDR_MIN > data_end)
        return XDP_ABORTED;
    __builtin_memcpy(data, tpl->bytes, HDR_MIN);
    if (data + HDR_COPY <= data_end)
        __builtin_memcpy(data + HDR_MIN, tpl->bytes + HDR_MIN, HDR_COPY - HDR_MIN);
    struct gen_config *cfg = gen_config.lookup(&zero);
    if (!cfg || cfg->flows <= 1)
        return XDP_TX;
    u32 *seq = gen_seq.lookup(&zero);
    if (!seq)
        return XDP_ABORTED;

    u32 f = *seq;
    u32 next = f + 1;
    if (next >= cfg->flows)
        next = 0;
    *seq = next;
    if (f >= cfg->flows)
        f = 0;

    if (gen_rewrite_flow(data, data_end, cfg, f) < 0)
        return XDP_ABORTED;
    return XDP_TX;
}

/* ---------------------------------------------------------------- the sink */
/* A flow as the sink counts it (distinct from the NAT's nat_flow_key). */
struct sink_flow_key {
    u8 src[16]; /* IPv4: first 4 bytes */
    u8 dst[16];
    u16 sport;  /* network byte order; ICMP: echo identifier */
    u16 dport;
    u8 proto;
    u8 pad[3];
};

PKT_COUNTERS(sink_counters, 1);
BPF_HASH(sink_flows, struct sink_flow_key, u64, SINK_MAX_FLOWS);

int xdp_gen_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    pkt_count(sink_counters.lookup(&zero), data_end - data);

    struct hdr_cursor nh = {.pos = data};
    struct ethhdr *eth;
    struct sink_flow_key key = {};
    int eth_proto = parse_ethhdr(&nh, data_end, &eth);
    if (eth_proto == htons(ETH_P_IP)) {
        struct iphdr *ip;
        if (parse_iphdr(&nh, data_end, &ip) < 0)
            return SINK_VERDICT;
        __builtin_memcpy(key.src, &ip->saddr, 4);
        __builtin_memcpy(key.dst, &ip->daddr, 4);
        key.proto = ip->protocol;
    } else if (eth_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6;
        if (parse_ip6hdr(&nh, data_end, &ip6) < 0)
            return SINK_VERDICT;
        __builtin_memcpy(key.src, &ip6->saddr, 16);
        __builtin_memcpy(key.dst, &ip6->daddr, 16);
        key.proto = ip6->nexthdr;
    } else
        return SINK_VERDICT;
    if (key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6) {
        struct icmphdr *ih;
        if (parse_icmphdr(&nh, data_end, &ih) < 0)
            return SINK_VERDICT;
        key.sport = ih->un.echo.id;
    } else {
        struct l4_ports *ports = peek_ports(&nh, data_end);
        if (!ports)
            return SINK_VERDICT;
        key.sport = ports->source;
        key.dport = ports->dest;
    }
    u64 one = 1;
    u64 *n = sink_flows.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else if (sink_flows.insert(&key, &one) != 0) {
        n = sink_flows.lookup(&key); /* another CPU inserted it first */
        if (n)
            __sync_fetch_and_add(n, 1);
    }
    return SINK_VERDICT;
}
