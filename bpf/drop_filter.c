/* The drop filter: one rule set, two hooks (XDP and tc clsact ingress).
 *
 * The rules live in BPF maps that userspace changes while the program runs
 * (labkit/filter.py): drop everything; drop an IP protocol; drop a UDP/TCP
 * destination port; drop a source prefix (IPv4). Per-CPU counters count
 * packets and bytes per verdict. `active` says which rule kinds hold any rule,
 * so a packet only pays for the lookups that can match. Protocol and port rules are
 * arrays indexed by the protocol number and the port (the verifier inlines array
 * lookups: a few instructions, no hashing); source prefixes need a trie.
 *
 * IPv4 is parsed; other EtherTypes and IPv6 match only "drop everything".
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

/* Verdicts, the index of `counters`. Keep in step with labkit/filter.py. */
#define V_PASS 0
#define V_DROP_ALL 1
#define V_DROP_PROTO 2
#define V_DROP_PORT 3
#define V_DROP_SRC 4
#define V_MAX 5

/* Bits of active[0]. */
#define RULE_ALL 1
#define RULE_PROTO 2
#define RULE_PORT 4
#define RULE_SRC 8

struct counter {
    u64 packets;
    u64 bytes;
};

struct src_key {
    u32 prefixlen;
    u32 addr; /* network byte order */
};

BPF_PERCPU_ARRAY(counters, struct counter, V_MAX);
BPF_ARRAY(active, u32, 1);
BPF_ARRAY(proto_rules, u8, 256);    /* index: IP protocol; 1 = drop */
BPF_ARRAY(port_rules, u8, 65536);   /* index: destination port, host byte order; 1 = drop */
BPF_LPM_TRIE(src_rules, struct src_key, u8, 1024);

static __always_inline u32 decide(void *data, void *data_end)
{
    u32 zero = 0;
    u32 *act = active.lookup(&zero);
    u32 rules = act ? *act : 0;

    if (!rules)
        return V_PASS;
    if (rules & RULE_ALL)
        return V_DROP_ALL;

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
        return V_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return V_PASS;

    if (rules & RULE_SRC) {
        struct src_key key = {.prefixlen = 32, .addr = ip->saddr};
        if (src_rules.lookup(&key))
            return V_DROP_SRC;
    }
    if (rules & RULE_PROTO) {
        u32 proto = ip->protocol;
        u8 *drop = proto_rules.lookup(&proto);
        if (drop && *drop)
            return V_DROP_PROTO;
    }
    if ((rules & RULE_PORT) && (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)) {
        u32 ihl = ip->ihl * 4;
        if (ihl < sizeof(*ip))
            return V_PASS;
        /* udp and tcp both start with source port, destination port */
        struct udphdr *l4 = (void *)ip + ihl;
        if ((void *)(l4 + 1) > data_end)
            return V_PASS;
        u32 dport = ntohs(l4->dest);
        u8 *drop = port_rules.lookup(&dport);
        if (drop && *drop)
            return V_DROP_PORT;
    }
    return V_PASS;
}

static __always_inline void count(u32 verdict, u64 len)
{
    struct counter *c = counters.lookup(&verdict);
    if (c) {
        c->packets++;
        c->bytes += len;
    }
}

int xdp_filter(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 v = decide(data, data_end);
    count(v, data_end - data);
    return v == V_PASS ? XDP_PASS : XDP_DROP;
}

/* Headers the rules read: Ethernet, IPv4 with options, the ports of UDP/TCP. */
#define PARSE_LEN (14 + 60 + 4)

int tc_filter(struct __sk_buff *skb)
{
    /* An skb's linear part may hold only the Ethernet header (packet-mmap senders put the
     * rest in page fragments): pull the headers in before reading them. */
    if ((long)skb->data_end - (long)skb->data < PARSE_LEN && skb->len > skb->data_end - skb->data)
        bpf_skb_pull_data(skb, skb->len < PARSE_LEN ? skb->len : PARSE_LEN);
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    u32 v = decide(data, data_end);
    count(v, skb->len);
    return v == V_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}
