/* The eBPF NAT: IPv4 static 1:1 mappings and source NAT with port translation,
 * at tc clsact on the NAT host's OUTSIDE port (labkit/dataplanes/nat.py is the control
 * plane, labkit/dataplanes/nat_model.py the reference model the fuzz test compares
 * against; the outcome names of both come from bpf/include/nat.h).
 *
 *   nat_egress  (outside port, egress; after routing, like netfilter POSTROUTING):
 *       source rewritten: a static mapping's inside address -> its outside address;
 *       else, a source inside the inside network -> the SNAT address and a port from
 *       the SNAT port range (TCP, UDP; the identifier of an ICMP echo request).
 *   nat_ingress (outside port, ingress; before routing, like netfilter PREROUTING):
 *       destination rewritten: a static mapping's outside address -> its inside address;
 *       the SNAT address + a translated port -> the inside host and port found in the
 *       flow state (TCP, UDP, ICMP echo reply).
 *
 * Rewriting after routing on the way out and before routing on the way in means the
 * kernel never sees an inside packet carrying one of its own addresses as source.
 *
 * State: `snat_out` (inside 5-tuple -> translated port, counters) and `snat_in`
 * (remote, SNAT address, remote port, translated port -> inside address and port) are
 * LRU hashes, so the flow table is bounded; a new flow claims its translated port by
 * inserting its `snat_in` entry with BPF_NOEXIST, so two inside hosts never share one.
 * An `snat_in` entry whose `snat_out` partner was evicted is deleted when met.
 *
 * Checksums are updated incrementally with bpf_l3_csum_replace/bpf_l4_csum_replace;
 * address changes pass BPF_F_PSEUDO_HDR, so packets with a partial checksum
 * (CHECKSUM_PARTIAL, veth checksum offload) get their pseudo-header seed updated and
 * packets with a full checksum get it updated; a UDP checksum of 0 ("none") stays 0
 * (BPF_F_MARK_MANGLED_0).
 *
 * What is not translated, by rule (each outcome, enum nat_outcome, counted in `stats`):
 *   - not IPv4 (ARP, IPv6, ...):                                  passed unchanged
 *   - malformed IPv4 (truncated, version != 4, IHL < 5, total
 *     length beyond the frame or too short for its L4 header):   passed unchanged
 *     (the kernel's own IPv4 checks drop it)
 *   - no rule concerns the packet's address:                      passed unchanged
 *   - a packet a rule concerns that carries IP options or is a
 *     fragment:                                                   dropped
 *     (except inbound to the SNAT address, which is passed: it may be the NAT host's own)
 *   - a protocol a rule cannot translate (static: other than TCP/UDP/ICMP; SNAT
 *     outbound: other than TCP/UDP/ICMP echo request):           dropped
 *   - inbound to the SNAT address with no flow state:             passed unchanged
 *     (it is addressed to the NAT host itself)
 *   - SNAT with no free port after PORT_PROBES tries, or a full flow table: dropped
 *   - a checksum or store helper failing (never expected):         dropped
 * ICMP error messages are translated in their outer header only (a static mapping).
 *
 * Defines: MAX_STATIC (static mappings), MAX_FLOWS (SNAT flow table entries),
 * PORT_PROBES (ports tried for a new flow).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "parsing_helpers.h"
#include "counters.h"
#include "nat.h"

#ifndef MAX_STATIC
#define MAX_STATIC 256
#endif
#ifndef MAX_FLOWS
#define MAX_FLOWS 65536
#endif
#ifndef PORT_PROBES
#define PORT_PROBES 32
#endif

#define ETH_LEN 14
#define IP_LEN 20
#define L4_OFF (ETH_LEN + IP_LEN) /* options are never translated: L4 is at a fixed offset */
#define IP_CSUM_OFF (ETH_LEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_LEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_LEN + offsetof(struct iphdr, daddr))
#define TCP_CSUM_OFF (L4_OFF + offsetof(struct tcphdr, check))
#define UDP_CSUM_OFF (L4_OFF + offsetof(struct udphdr, check))
#define ICMP_CSUM_OFF (L4_OFF + offsetof(struct icmphdr, checksum))
#define ICMP_ID_OFF (L4_OFF + offsetof(struct icmphdr, un.echo.id))
#define SPORT_OFF (L4_OFF + 0)
#define DPORT_OFF (L4_OFF + 2)
#define PULL_LEN (L4_OFF + sizeof(struct tcphdr))

struct nat_config {
    u32 snat_addr;   /* network byte order; 0: source NAT off */
    u32 inside_net;  /* network byte order */
    u32 inside_mask; /* network byte order */
    u16 port_min;    /* host byte order, inclusive */
    u16 port_max;
};

struct static_value {
    u32 addr; /* the other side's address, network byte order */
    u32 slot; /* index into mapping_counters */
};

/* A flow as one side sees it; ports in network byte order. ICMP echo: sport = identifier,
 * dport = 0 (outbound key) / sport = 0, dport = translated identifier (inbound key). */
struct nat_flow_key {
    u32 src;
    u32 dst;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 pad[3];
};

struct flow_value {
    u32 nat_addr;
    u16 nat_port; /* network byte order */
    u16 pad;
    u64 created_ns;
    u64 last_ns;
    u64 out_packets;
    u64 out_bytes;
    u64 in_packets;
    u64 in_bytes;
};

struct reverse_value {
    u32 addr;  /* inside address */
    u16 port;  /* inside port / echo identifier, network byte order */
    u16 pad;
};

struct mapping_counter {
    u64 out_packets;
    u64 out_bytes;
    u64 in_packets;
    u64 in_bytes;
};

BPF_ARRAY(config, struct nat_config, 1);
BPF_HASH(static_out, u32, struct static_value, MAX_STATIC); /* inside -> outside */
BPF_HASH(static_in, u32, struct static_value, MAX_STATIC);  /* outside -> inside */
BPF_PERCPU_ARRAY(mapping_counters, struct mapping_counter, MAX_STATIC);
BPF_TABLE("lru_hash", struct nat_flow_key, struct flow_value, snat_out, MAX_FLOWS);
BPF_TABLE("lru_hash", struct nat_flow_key, struct reverse_value, snat_in, MAX_FLOWS);
PKT_COUNTERS(stats, NAT_OUTCOME_MAX);

static __always_inline int outcome(u32 which, u64 len, int verdict)
{
    pkt_count(stats.lookup(&which), len);
    return verdict;
}

/* What a parsed IPv4 packet looks like to the NAT. */
struct pkt {
    u32 saddr;
    u32 daddr;
    u16 sport;   /* TCP/UDP ports; ICMP: identifier in sport */
    u16 dport;
    u8 proto;
    u8 icmp_type;
    u8 has_l4;   /* the L4 header the protocol needs is within the packet */
    u8 options;  /* IHL > 5 */
    u8 fragment; /* MF set or a non-zero offset */
};

/* 0: an IPv4 packet to consider; else the outcome to count and pass. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
    if (skb->len < ETH_LEN)
        return NAT_PASS_MALFORMED + 1;
    if ((void *)(long)skb->data + PULL_LEN > (void *)(long)skb->data_end && skb->len > skb->data_end - skb->data)
        bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN);

    void *data_end = (void *)(long)skb->data_end;
    struct hdr_cursor nh = {.pos = (void *)(long)skb->data};
    struct ethhdr *eth;
    int eth_proto = parse_ethhdr(&nh, data_end, &eth);
    if (eth_proto < 0)
        return NAT_PASS_MALFORMED + 1;
    if (eth_proto != htons(ETH_P_IP))
        return NAT_PASS_NOT_IPV4 + 1;
    /* the fixed header only: a packet with options is never translated, so its L4
     * header is not needed (and IHL, total length are checked against the rules here) */
    struct iphdr *ip = CURSOR_TAKE(&nh, data_end, struct iphdr);
    if (!ip)
        return NAT_PASS_MALFORMED + 1;
    u32 ihl = ip->ihl;
    u32 tot = ntohs(ip->tot_len);
    if (ip->version != 4 || ihl < 5 || tot < ihl * 4 || tot + ETH_LEN > skb->len)
        return NAT_PASS_MALFORMED + 1;
    p->saddr = ip->saddr;
    p->daddr = ip->daddr;
    p->proto = ip->protocol;
    p->options = ihl > 5;
    p->fragment = (ip->frag_off & htons(0x3fff)) != 0;
    p->has_l4 = 0;
    p->sport = p->dport = 0;
    p->icmp_type = 0xff;
    if (p->options || p->fragment)
        return 0;
    /* no options: the cursor is at L4_OFF; the L4 header must fit the frame and the
     * IPv4 total length */
    u32 l4len = tot - IP_LEN;
    if (p->proto == IPPROTO_TCP) {
        struct tcphdr *th = CURSOR_TAKE(&nh, data_end, struct tcphdr);
        if (th && l4len >= sizeof(*th)) {
            p->sport = th->source;
            p->dport = th->dest;
            p->has_l4 = 1;
        }
    } else if (p->proto == IPPROTO_UDP) {
        struct udphdr *uh = CURSOR_TAKE(&nh, data_end, struct udphdr);
        if (uh && l4len >= sizeof(*uh)) {
            p->sport = uh->source;
            p->dport = uh->dest;
            p->has_l4 = 1;
        }
    } else if (p->proto == IPPROTO_ICMP) {
        struct icmphdr *ih;
        if (parse_icmphdr(&nh, data_end, &ih) >= 0 && l4len >= sizeof(*ih)) {
            p->icmp_type = ih->type;
            p->sport = ih->un.echo.id;
            p->has_l4 = 1;
        }
    }
    return 0;
}

/* Rewrite the source (outbound) or destination (inbound) address, and fix the IPv4
 * checksum and the L4 checksum that covers it through the pseudo header. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, u8 proto, int inbound, u32 from, u32 to)
{
    if (proto == IPPROTO_TCP) {
        if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, from, to, BPF_F_PSEUDO_HDR | sizeof(to)))
            return -1;
    } else if (proto == IPPROTO_UDP) {
        if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(to)))
            return -1;
    }
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)))
        return -1;
    return bpf_skb_store_bytes(skb, inbound ? IP_DST_OFF : IP_SRC_OFF, &to, sizeof(to), 0);
}

/* Rewrite a port (TCP/UDP source or destination) or the ICMP echo identifier. */
static __always_inline int rewrite_port(struct __sk_buff *skb, u8 proto, int dst, u16 from, u16 to)
{
    int off;
    if (proto == IPPROTO_TCP) {
        off = dst ? DPORT_OFF : SPORT_OFF;
        if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, from, to, sizeof(to)))
            return -1;
    } else if (proto == IPPROTO_UDP) {
        off = dst ? DPORT_OFF : SPORT_OFF;
        if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to, BPF_F_MARK_MANGLED_0 | sizeof(to)))
            return -1;
    } else {
        off = ICMP_ID_OFF;
        if (bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, from, to, sizeof(to)))
            return -1;
    }
    return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

static __always_inline int translatable_static(struct pkt *p)
{
    return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_ICMP) && p->has_l4;
}

static __always_inline void count_mapping(u32 slot, u64 len, int inbound)
{
    struct mapping_counter *m = mapping_counters.lookup(&slot);
    if (!m)
        return;
    if (inbound) {
        m->in_packets++;
        m->in_bytes += len;
    } else {
        m->out_packets++;
        m->out_bytes += len;
    }
}

/* What both directions do first: parse the packet and find the configuration. Returns
 * the configuration, or 0 when the packet is to be handed on untouched; *verdict then
 * holds what to return (the outcome is counted already). */
static __always_inline struct nat_config *begin(struct __sk_buff *skb, struct pkt *p, int *verdict)
{
    u64 len = skb->len;
    int r = parse(skb, p);
    if (r) {
        *verdict = outcome(r - 1, len, TC_ACT_OK);
        return 0;
    }
    u32 zero = 0;
    struct nat_config *cfg = config.lookup(&zero);
    if (!cfg)
        *verdict = outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    return cfg;
}

int nat_egress(struct __sk_buff *skb)
{
    struct pkt p = {};
    u64 len = skb->len;
    int verdict = TC_ACT_OK;
    struct nat_config *cfg = begin(skb, &p, &verdict);
    if (!cfg)
        return verdict;

    struct static_value *st = static_out.lookup(&p.saddr);
    int snat = !st && cfg->snat_addr && (p.saddr & cfg->inside_mask) == cfg->inside_net;
    if (!st && !snat)
        return outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    if (p.options)
        return outcome(NAT_DROP_OPTIONS, len, TC_ACT_SHOT);
    if (p.fragment)
        return outcome(NAT_DROP_FRAGMENT, len, TC_ACT_SHOT);

    if (st) {
        if (!translatable_static(&p))
            return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
        u32 slot = st->slot;
        if (rewrite_addr(skb, p.proto, 0, p.saddr, st->addr))
            return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
        count_mapping(slot, len, 0);
        return outcome(NAT_OUT_STATIC, len, TC_ACT_OK);
    }

    /* source NAT */
    if (!p.has_l4 || !(p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP ||
                       (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO)))
        return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
    u16 orig_port = p.sport;
    struct nat_flow_key key = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .proto = p.proto};
    if (p.proto != IPPROTO_ICMP)
        key.dport = p.dport;
    u32 nat_addr = cfg->snat_addr;
    u64 now = bpf_ktime_get_ns();
    u16 nat_port;
    int stat = NAT_OUT_SNAT;
    struct nat_flow_key rkey = {.src = p.daddr, .dst = nat_addr, .proto = p.proto};
    struct reverse_value rev = {.addr = p.saddr, .port = orig_port};

    struct flow_value *fv = snat_out.lookup(&key);
    if (fv) {
        nat_port = fv->nat_port;
        nat_addr = fv->nat_addr;
        rkey.dst = nat_addr;
        if (p.proto == IPPROTO_ICMP) {
            rkey.dport = nat_port;
        } else {
            rkey.sport = p.dport;
            rkey.dport = nat_port;
        }
        if (!snat_in.lookup(&rkey)) /* evicted: restore the way back */
            snat_in.update(&rkey, &rev);
        fv->last_ns = now;
        __sync_fetch_and_add(&fv->out_packets, 1);
        __sync_fetch_and_add(&fv->out_bytes, len);
    } else {
        u32 lo = cfg->port_min, hi = cfg->port_max;
        if (hi < lo)
            return outcome(NAT_DROP_NO_PORT, len, TC_ACT_SHOT);
        u32 range = hi - lo + 1;
        u32 start = bpf_get_prandom_u32() % range;
        int found = 0;
        if (p.proto != IPPROTO_ICMP)
            rkey.sport = p.dport;
        for (int i = 0; i < PORT_PROBES; i++) {
            u32 cand = lo + (start + i) % range;
            rkey.dport = htons((u16)cand);
            if (snat_in.insert(&rkey, &rev) == 0) {
                found = 1;
                break;
            }
        }
        if (!found)
            return outcome(NAT_DROP_NO_PORT, len, TC_ACT_SHOT);
        nat_port = rkey.dport;
        struct flow_value nv = {.nat_addr = nat_addr, .nat_port = nat_port, .created_ns = now, .last_ns = now,
                                .out_packets = 1, .out_bytes = len};
        if (snat_out.insert(&key, &nv)) {
            snat_in.delete(&rkey);
            return outcome(NAT_DROP_TABLE_FULL, len, TC_ACT_SHOT);
        }
        stat = NAT_OUT_SNAT_NEW;
    }
    if (rewrite_addr(skb, p.proto, 0, p.saddr, nat_addr))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    if (nat_port != orig_port && rewrite_port(skb, p.proto, 0, orig_port, nat_port))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    return outcome(stat, len, TC_ACT_OK);
}

int nat_ingress(struct __sk_buff *skb)
{
    struct pkt p = {};
    u64 len = skb->len;
    int verdict = TC_ACT_OK;
    struct nat_config *cfg = begin(skb, &p, &verdict);
    if (!cfg)
        return verdict;

    struct static_value *st = static_in.lookup(&p.daddr);
    if (st) {
        if (p.options)
            return outcome(NAT_DROP_OPTIONS, len, TC_ACT_SHOT);
        if (p.fragment)
            return outcome(NAT_DROP_FRAGMENT, len, TC_ACT_SHOT);
        if (!translatable_static(&p))
            return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
        u32 slot = st->slot;
        if (rewrite_addr(skb, p.proto, 1, p.daddr, st->addr))
            return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
        count_mapping(slot, len, 1);
        return outcome(NAT_IN_STATIC, len, TC_ACT_OK);
    }
    if (!cfg->snat_addr || p.daddr != cfg->snat_addr)
        return outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    if (p.options || p.fragment)
        return outcome(NAT_PASS_OPTIONS_OR_FRAGMENT, len, TC_ACT_OK);
    if (!p.has_l4 || !(p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP ||
                       (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHOREPLY)))
        return outcome(NAT_PASS_NO_FLOW, len, TC_ACT_OK);

    struct nat_flow_key rkey = {.src = p.saddr, .dst = p.daddr, .proto = p.proto};
    u16 nat_port;
    if (p.proto == IPPROTO_ICMP) {
        nat_port = p.sport; /* the identifier */
        rkey.dport = nat_port;
    } else {
        nat_port = p.dport;
        rkey.sport = p.sport;
        rkey.dport = nat_port;
    }
    struct reverse_value *rev = snat_in.lookup(&rkey);
    if (!rev)
        return outcome(NAT_PASS_NO_FLOW, len, TC_ACT_OK);
    u32 in_addr = rev->addr;
    u16 in_port = rev->port;
    struct nat_flow_key key = {.src = in_addr, .dst = p.saddr, .sport = in_port, .proto = p.proto};
    if (p.proto != IPPROTO_ICMP)
        key.dport = p.sport;
    struct flow_value *fv = snat_out.lookup(&key);
    if (!fv || fv->nat_port != nat_port || fv->nat_addr != p.daddr) {
        snat_in.delete(&rkey);
        return outcome(NAT_PASS_STALE_FLOW, len, TC_ACT_OK);
    }
    fv->last_ns = bpf_ktime_get_ns();
    __sync_fetch_and_add(&fv->in_packets, 1);
    __sync_fetch_and_add(&fv->in_bytes, len);
    if (rewrite_addr(skb, p.proto, 1, p.daddr, in_addr))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    if (in_port != nat_port && rewrite_port(skb, p.proto, p.proto != IPPROTO_ICMP, nat_port, in_port))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    return outcome(NAT_IN_SNAT, len, TC_ACT_OK);
}
