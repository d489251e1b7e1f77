/* The in-kernel traffic generator (labkit/traffic/xdpgen.py) and the sink that checks it.
 *
 * Generator: userspace builds one valid frame (labkit.packets) and runs xdp_gen on it
 * with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): each repetition
 * is one frame, and XDP_TX sends it out of the interface named by the context's
 * ingress_ifindex, which must be GEN_IFINDEX (-D define). Any other packet passes:
 * labkit keeps the program attached (generic mode) to the sending host's loopback so
 * that it stays in the kernel's XDP dispatcher between runs (see xdpgen.py).
 * The kernel recycles frame pages without copying the frame in again, and a receiver
 * that rewrites a frame in place (a router's TTL and MACs, a NAT's addresses and ports)
 * rewrites the page that the next run sends. So every run first restores the headers
 * from `gen_template` (the first HDR_COPY bytes of the frame as built), then:
 *   gen_config.flows <= 1: the frame goes out as built (one flow), the fastest path.
 *   flows > 1: the program rewrites, per frame, the fields named in `gen_config.vary` to
 *                  base + f, where f = 0, 1, .., flows-1, 0, .. comes from a per-CPU
 *                  sequence, and updates the IPv4 header and L4 checksums incrementally
 *                  (RFC 1624) from the restored template values.
 * Frames are laid out as labkit.packets builds them: Ethernet, then IPv4 without
 * options or IPv6 without extension headers, then UDP, TCP or ICMP (ICMP: the echo
 * identifier stands in for the source port).
 *
 * Sink (a receiver used by tests and checks): xdp_gen_sink counts frames and bytes
 * per CPU and frames per flow (addresses and ports) in `sink_flows`, then returns
 * SINK_VERDICT (default XDP_DROP; -DSINK_VERDICT=2 passes frames on to the stack).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>

#ifndef SINK_VERDICT
#define SINK_VERDICT XDP_DROP
#endif
#ifndef SINK_MAX_FLOWS
#define SINK_MAX_FLOWS 65536
#endif

/* Bits of gen_config.vary. Keep in step with labkit/traffic/xdpgen.py. */
#define VARY_SPORT 1
#define VARY_DPORT 2
#define VARY_SRC 4 /* IPv4 address, or the last 32 bits of an IPv6 address */
#define VARY_DST 8

/* L4 kinds of gen_config.l4 */
#define L4_UDP 0
#define L4_TCP 1
#define L4_ICMP 2   /* ICMPv4 echo: checksum without pseudo-header */
#define L4_ICMPV6 3 /* ICMPv6 echo: checksum with pseudo-header */

struct gen_config {
    u32 flows;  /* distinct flows, >= 1 */
    u32 vary;   /* VARY_* bits */
    u32 ipv6;   /* 0: IPv4, 1: IPv6 */
    u32 l4;     /* L4_* */
    u32 sport;  /* base values, host byte order */
    u32 dport;
    u32 src;    /* IPv4 address or last 32 bits of the IPv6 address */
    u32 dst;
};

/* Headers restored on every run: Ethernet + IPv6 + TCP (74) fit; frames are >= 60 bytes,
 * so the first 60 are always copied and the rest where the frame is that long. */
#define HDR_MIN 60
#define HDR_COPY 76
struct gen_template {
    u8 bytes[HDR_COPY];
};

BPF_ARRAY(gen_config, struct gen_config, 1);
BPF_ARRAY(gen_template, struct gen_template, 1);
BPF_PERCPU_ARRAY(gen_seq, u32, 1);

static __always_inline u16 csum_fold(u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (u16)s;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on 16-bit words in network order. */
static __always_inline void csum_replace2(u16 *sum, u16 old, u16 new)
{
    u32 s = (u16)~*sum;
    s += (u16)~old;
    s += new;
    *sum = ~csum_fold(s);
}

static __always_inline void csum_replace4(u16 *sum, u32 old, u32 new)
{
    csum_replace2(sum, (u16)(old >> 16), (u16)(new >> 16));
    csum_replace2(sum, (u16)old, (u16)new);
}

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

    u32 *saddr, *daddr;
    u16 *ipcsum = 0;
    u16 *l4;
    if (cfg->ipv6) {
        struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
        if ((void *)(ip6 + 1) > data_end)
            return XDP_ABORTED;
        saddr = (u32 *)&ip6->saddr + 3;
        daddr = (u32 *)&ip6->daddr + 3;
        l4 = (u16 *)(ip6 + 1);
    } else {
        struct iphdr *ip = data + sizeof(struct ethhdr);
        if ((void *)(ip + 1) > data_end)
            return XDP_ABORTED;
        saddr = &ip->saddr;
        daddr = &ip->daddr;
        ipcsum = &ip->check;
        l4 = (u16 *)(ip + 1);
    }
    /* the L4 checksum: UDP word 3, TCP word 8, ICMP word 1 */
    if ((void *)(l4 + 4) > data_end)
        return XDP_ABORTED;
    u16 *l4csum;
    if (cfg->l4 == L4_UDP)
        l4csum = l4 + 3;
    else if (cfg->l4 == L4_TCP) {
        if ((void *)(l4 + 9) > data_end)
            return XDP_ABORTED;
        l4csum = l4 + 8;
    } else
        l4csum = l4 + 1;
    u32 pseudo = cfg->l4 != L4_ICMP;
    /* UDP over IPv4 may carry no checksum (0): then there is nothing to update */
    u32 has_l4csum = !(cfg->l4 == L4_UDP && !cfg->ipv6 && *l4csum == 0);

    if (cfg->vary & VARY_SRC) {
        u32 old = *saddr, new = htonl(cfg->src + f);
        *saddr = new;
        if (ipcsum)
            csum_replace4(ipcsum, old, new);
        if (pseudo && has_l4csum)
            csum_replace4(l4csum, old, new);
    }
    if (cfg->vary & VARY_DST) {
        u32 old = *daddr, new = htonl(cfg->dst + f);
        *daddr = new;
        if (ipcsum)
            csum_replace4(ipcsum, old, new);
        if (pseudo && has_l4csum)
            csum_replace4(l4csum, old, new);
    }
    if (cfg->vary & VARY_SPORT) {
        /* UDP/TCP source port; ICMP echo identifier (word 2) */
        u16 *port = (cfg->l4 >= L4_ICMP) ? l4 + 2 : l4;
        u16 old = *port, new = htons((u16)(cfg->sport + f));
        *port = new;
        if (has_l4csum)
            csum_replace2(l4csum, old, new);
    }
    if ((cfg->vary & VARY_DPORT) && cfg->l4 < L4_ICMP) {
        u16 old = l4[1], new = htons((u16)(cfg->dport + f));
        l4[1] = new;
        if (has_l4csum)
            csum_replace2(l4csum, old, new);
    }
    if (cfg->l4 == L4_UDP && has_l4csum && *l4csum == 0)
        *l4csum = 0xffff; /* a computed UDP checksum of 0 is sent as all ones */
    return XDP_TX;
}

/* ---------------------------------------------------------------- the sink */
struct sink_counter {
    u64 packets;
    u64 bytes;
};

struct flow_key {
    u8 src[16]; /* IPv4: first 4 bytes */
    u8 dst[16];
    u16 sport;  /* network byte order; ICMP: echo identifier */
    u16 dport;
    u8 proto;
    u8 pad[3];
};

BPF_PERCPU_ARRAY(sink_counters, struct sink_counter, 1);
BPF_HASH(sink_flows, struct flow_key, u64, SINK_MAX_FLOWS);

int xdp_gen_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    struct sink_counter *c = sink_counters.lookup(&zero);
    if (c) {
        c->packets++;
        c->bytes += data_end - data;
    }
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return SINK_VERDICT;
    struct flow_key key = {};
    u16 *l4;
    if (eth->h_proto == htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return SINK_VERDICT;
        __builtin_memcpy(key.src, &ip->saddr, 4);
        __builtin_memcpy(key.dst, &ip->daddr, 4);
        key.proto = ip->protocol;
        l4 = (void *)ip + ip->ihl * 4;
    } else if (eth->h_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return SINK_VERDICT;
        __builtin_memcpy(key.src, &ip6->saddr, 16);
        __builtin_memcpy(key.dst, &ip6->daddr, 16);
        key.proto = ip6->nexthdr;
        l4 = (void *)(ip6 + 1);
    } else
        return SINK_VERDICT;
    if ((void *)(l4 + 4) > data_end)
        return SINK_VERDICT;
    if (key.proto == IPPROTO_ICMP || key.proto == 58) {
        key.sport = l4[2];
    } else {
        key.sport = l4[0];
        key.dport = l4[1];
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
