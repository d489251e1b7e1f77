/* L2 forwarding in XDP: what DPDK's l2fwd does, as an XDP program on each port.
 * Control plane: labkit/dataplanes/xdp_fwd.py (XdpForwarder fills the maps for a port pair).
 *
 * A frame arriving on a port leaves by the port paired with it (port_of: ingress ifindex
 * -> its port entry; tx_ports: a devmap, out port number -> egress ifindex), redirected
 * with bpf_redirect_map. With MAC_UPDATING (the default, as in l2fwd) the destination
 * MAC becomes 02:00:00:00:00:<out port> and the source MAC the egress port's own.
 *
 * Defines: MAX_PORTS (devmap size, default 64), MAC_UPDATING (1/0).
 * Counters (per-CPU packets, index: enum xdp_fwd_counter of bpf/include/xdp_fwd.h):
 * redirected, no entry for the ingress port (passed to the stack), too short for
 * Ethernet (dropped), redirect refused (aborted).
 *
 * tc_l2fwd is the same forwarding as a tc clsact ingress program (bpf_redirect to the
 * egress ifindex), after the kernel has built an skb: the "tc redirect" variant.
 *
 * On veths, a redirected frame is only delivered when the egress veth's peer has an XDP
 * program attached (labkit attaches xdp_pass_bare or a drop sink there).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "parsing_helpers.h"
#include "counters.h"
#include "xdp_fwd.h"

#ifndef MAX_PORTS
#define MAX_PORTS 64
#endif
#ifndef MAC_UPDATING
#define MAC_UPDATING 1
#endif

struct port_entry {
    u32 out_port;      /* index into tx_ports */
    u32 out_ifindex;   /* the egress interface (tc_l2fwd redirects to it directly) */
    u8 out_mac[6];     /* the egress port's MAC: the new source MAC */
    u8 pad[2];
};

BPF_HASH(port_of, u32, struct port_entry, MAX_PORTS);
BPF_DEVMAP(tx_ports, MAX_PORTS);
BPF_PERCPU_ARRAY(counters, u64, FWD_COUNTER_MAX);

static __always_inline void count(u32 idx)
{
    count_inc(counters.lookup(&idx));
}

static __always_inline void rewrite(struct ethhdr *eth, struct port_entry *pe)
{
#if MAC_UPDATING
    /* 02:00:00:00:00:<out port>, as l2fwd_mac_updating() writes it */
    eth->h_dest[0] = 0x02;
    eth->h_dest[1] = 0;
    eth->h_dest[2] = 0;
    eth->h_dest[3] = 0;
    eth->h_dest[4] = 0;
    eth->h_dest[5] = pe->out_port & 0xff;
    __builtin_memcpy(eth->h_source, pe->out_mac, ETH_ALEN);
#endif
}

int xdp_l2fwd(struct xdp_md *ctx)
{
    void *data_end = (void *)(long)ctx->data_end;
    struct hdr_cursor nh = {.pos = (void *)(long)ctx->data};
    struct ethhdr *eth;
    u32 in = ctx->ingress_ifindex;

    if (parse_ethhdr(&nh, data_end, &eth) < 0) {
        count(FWD_SHORT);
        return XDP_DROP;
    }
    struct port_entry *pe = port_of.lookup(&in);
    if (!pe) {
        count(FWD_NO_ENTRY);
        return XDP_PASS;
    }
    rewrite(eth, pe);
    int action = tx_ports.redirect_map(pe->out_port, 0);
    count(action == XDP_REDIRECT ? FWD_REDIRECTED : FWD_REFUSED);
    return action;
}

int tc_l2fwd(struct __sk_buff *skb)
{
    void *data_end = (void *)(long)skb->data_end;
    struct hdr_cursor nh = {.pos = (void *)(long)skb->data};
    struct ethhdr *eth;
    u32 in = skb->ingress_ifindex;

    if (parse_ethhdr(&nh, data_end, &eth) < 0) {
        count(FWD_SHORT);
        return TC_ACT_SHOT;
    }
    struct port_entry *pe = port_of.lookup(&in);
    if (!pe) {
        count(FWD_NO_ENTRY);
        return TC_ACT_OK;
    }
    rewrite(eth, pe);
    int action = bpf_redirect(pe->out_ifindex, 0);
    count(action == TC_ACT_REDIRECT ? FWD_REDIRECTED : FWD_REFUSED);
    return action;
}
