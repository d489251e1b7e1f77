/* Flows of generated frames: the flow configuration and the per-frame rewrite shared by
 * the generators bpf/xdp_gen.c (live frames) and bpf/xdp_loop.c (a loop of XDP programs).
 *
 *     struct gen_config *cfg = gen_config.lookup(&zero);   // filled by the control plane
 *     if (cfg->flows > 1 && gen_rewrite_flow(data, data_end, cfg, f) < 0)
 *         return XDP_ABORTED;
 *
 * Frames are laid out as labkit.packets builds them: Ethernet, then IPv4 without options
 * or IPv6 without extension headers, then UDP, TCP or ICMP (ICMP: the echo identifier
 * stands in for the source port). gen_rewrite_flow sets the fields named in cfg->vary
 * (VARY_* of xdp_gen.h) to base + F and updates the IPv4 header and L4 checksums
 * incrementally (RFC 1624) from the values the frame carries now, so it may be applied
 * to a frame again and again (the loop rewrites the same frame on every pass).
 */
#ifndef LABKIT_GEN_FLOWS_H
#define LABKIT_GEN_FLOWS_H

#include "parsing_helpers.h"
#include "csum_helpers.h"
#include "xdp_gen.h"

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

/* The frame at DATA rewritten into flow F (0 <= F < cfg->flows); -1 if it is too short. */
static __always_inline int gen_rewrite_flow(void *data, void *data_end, struct gen_config *cfg, u32 f)
{
    struct hdr_cursor nh = {.pos = data};
    u32 *saddr, *daddr;
    u16 *ipcsum = 0;
    if (!CURSOR_TAKE(&nh, data_end, struct ethhdr))
        return -1;
    if (cfg->ipv6) {
        struct ipv6hdr *ip6 = CURSOR_TAKE(&nh, data_end, struct ipv6hdr);
        if (!ip6)
            return -1;
        saddr = (u32 *)&ip6->saddr + 3;
        daddr = (u32 *)&ip6->daddr + 3;
    } else {
        struct iphdr *ip = CURSOR_TAKE(&nh, data_end, struct iphdr);
        if (!ip)
            return -1;
        saddr = &ip->saddr;
        daddr = &ip->daddr;
        ipcsum = &ip->check;
    }
    u16 *l4 = nh.pos;
    /* the L4 checksum: UDP word 3, TCP word 8, ICMP word 1 */
    if ((void *)(l4 + 4) > data_end)
        return -1;
    u16 *l4csum;
    if (cfg->l4 == L4_UDP)
        l4csum = l4 + 3;
    else if (cfg->l4 == L4_TCP) {
        if ((void *)(l4 + 9) > data_end)
            return -1;
        l4csum = l4 + 8;
    } else
        l4csum = l4 + 1;
    u32 pseudo = cfg->l4 != L4_ICMP;
    /* UDP over IPv4 may carry no checksum (0): then there is nothing to update */
    u32 has_l4csum = !(cfg->l4 == L4_UDP && !cfg->ipv6 && *l4csum == 0);

    if (cfg->vary & VARY_SRC_IP) {
        u32 old = *saddr, new = htonl(cfg->src + f);
        *saddr = new;
        if (ipcsum)
            csum_replace4(ipcsum, old, new);
        if (pseudo && has_l4csum)
            csum_replace4(l4csum, old, new);
    }
    if (cfg->vary & VARY_DST_IP) {
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
    return 0;
}

#endif /* LABKIT_GEN_FLOWS_H */
