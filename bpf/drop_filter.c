/* The drop filter: one rule set, two hooks (XDP and tc clsact ingress).
 *
 * The rules live in BPF maps that userspace changes while the program runs (its
 * control plane: labkit/dataplanes/drop_filter.py): drop everything; drop an IP
 * protocol; drop a UDP/TCP destination port; drop a source prefix (IPv4). Per-CPU counters count
 * packets and bytes per verdict. `active` says which rule kinds hold any rule,
 * so a packet only pays for the lookups that can match. Protocol and port rules are
 * arrays indexed by the protocol number and the port (the verifier inlines array
 * lookups: a few instructions, no hashing); source prefixes need a trie.
 *
 * IPv4 is parsed (bpf/include/parsing_helpers.h; the port rule reads L4 after the real
 * header length, and a packet whose IHL is below 5 or beyond its end passes it); other
 * EtherTypes and IPv6 match only "drop everything". Verdicts
 * and rule bits are the enums of bpf/include/drop_filter.h, which Python reads.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "parsing_helpers.h"
#include "counters.h"
#include "drop_filter.h"

struct src_key {
    u32 prefixlen;
    u32 addr; /* network byte order */
};

PKT_COUNTERS(counters, DF_VERDICT_MAX);
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
        return DF_PASS;
    if (rules & DF_RULE_ALL)
        return DF_DROP_ALL;

    struct hdr_cursor nh = {.pos = data};
    struct ethhdr *eth;
    if (parse_ethhdr(&nh, data_end, &eth) != htons(ETH_P_IP))
        return DF_PASS;
    /* the fixed header serves the source and protocol rules; only the port rule needs
     * the real header length (IHL), so only it pays for reading past the options */
    struct iphdr *ip = CURSOR_TAKE(&nh, data_end, struct iphdr);
    if (!ip)
        return DF_PASS;

    if (rules & DF_RULE_SRC) {
        struct src_key key = {.prefixlen = 32, .addr = ip->saddr};
        if (src_rules.lookup(&key))
            return DF_DROP_SRC;
    }
    if (rules & DF_RULE_PROTO) {
        u32 proto = ip->protocol;
        u8 *drop = proto_rules.lookup(&proto);
        if (drop && *drop)
            return DF_DROP_PROTO;
    }
    if ((rules & DF_RULE_PORT) && (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)) {
        if (skip_ip_options(&nh, data_end, ip) < 0)
            return DF_PASS;
        struct l4_ports *ports = peek_ports(&nh, data_end);
        if (!ports)
            return DF_PASS;
        u32 dport = ntohs(ports->dest);
        u8 *drop = port_rules.lookup(&dport);
        if (drop && *drop)
            return DF_DROP_PORT;
    }
    return DF_PASS;
}

int xdp_filter(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 v = decide(data, data_end);
    pkt_count(counters.lookup(&v), data_end - data);
    return v == DF_PASS ? XDP_PASS : XDP_DROP;
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
    pkt_count(counters.lookup(&v), skb->len);
    return v == DF_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}
