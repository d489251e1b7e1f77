/* The eBPF NAT: IPv4 static 1:1 mappings and source NAT with port translation,
 * at tc clsact on the NAT host's OUTSIDE port, and its XDP fast path (labkit/dataplanes/
 * nat.py and xdp_nat.py are the control plane, labkit/dataplanes/nat_model.py the
 * reference model the fuzz test compares the tc programs against; the outcome names of
 * all of them come from bpf/include/nat.h).
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
 * State: a flow is a pair of entries, `snat_out` (inside 5-tuple -> SNAT address and
 * port) and `snat_in` (remote, SNAT address, remote port, SNAT port -> inside address
 * and port), each keyed by the packet's own 5-tuple in its direction, so an established
 * flow costs one hash lookup each way and nothing else. A new flow claims its port by
 * inserting its `snat_in` entry with BPF_NOEXIST (two inside hosts never share one);
 * the two entries are created and deleted together (here on expiry, or by the control
 * plane), so neither ever points at a partner that is gone. The tables are plain
 * preallocated hashes: a full table refuses new flows (counted, drop_table_full) and
 * never evicts a live one. Each entry keeps the jiffy of its last packet (bpf_jiffies64,
 * a load, not a helper call); a flow idle in both directions longer than its timeout
 * (nat_config.timeout, per protocol, TCP shorter once a FIN or RST was seen) is expired
 * when a lookup meets it, and by the control plane's sweep.
 *
 * Fast path, established flows: the packet is parsed and rewritten by direct packet
 * access, every checksum updated in place (csum_helpers.h), no helper call. One thing
 * tc cannot see without a helper is whether the skb carries a partial checksum
 * (CHECKSUM_PARTIAL, veth checksum offload: the field then holds the pseudo-header sum,
 * which the address changes and the port does not). A partial checksum always equals
 * that sum; a full one only once in 65536: a field that differs from it is a full
 * checksum, updated here; a field that equals it takes one bpf_l4_csum_replace for the
 * address (the helper knows), and what the helper did to the field says which it was,
 * so the port's share is added directly when it was a full one. Inbound, a received
 * checksum of the whole packet (CHECKSUM_COMPLETE, NICs) is kept in step with one
 * bpf_csum_update (a no-op otherwise). A UDP checksum of 0 ("none") stays 0.
 *
 * The XDP fast path (xdp_nat_outbound, xdp_nat_inbound, below) translates established
 * flows and static mappings over the same maps before the stack sees them, and hands
 * the rest up to these programs; nat_hairpin (tc ingress of the inside ports, optional)
 * refuses hairpinning.
 *
 * IPv4 options are carried: the L4 header is read after the header's real length. A
 * fragmented datagram is translated fragment by fragment: a static mapping needs no state
 * (every fragment gets the address; the first one's L4 checksum, which covers the whole
 * datagram, is updated incrementally); a SNAT flow's first fragment (it has the ports)
 * is translated as its flow, and the address it got is remembered under its source,
 * destination, identifier and protocol (`frags`, an LRU) for the later fragments.
 * An ICMP error (destination unreachable, time exceeded, parameter problem) to the SNAT
 * address about a packet a flow sent is translated back to the inside host, its embedded
 * header too; so is an inside host's ICMP error about a packet it got through a flow,
 * outbound (see icmp_error).
 *
 * What is not translated, by rule (each outcome, enum nat_outcome, counted in `stats`):
 *   - not IPv4 (ARP, IPv6, ...):                                  passed unchanged
 *   - malformed IPv4 (truncated, version != 4, IHL < 5, total
 *     length beyond the frame or too short for its L4 header):   passed unchanged
 *     (the kernel's own IPv4 checks drop it)
 *   - no rule concerns the packet's address:                      passed unchanged
 *   - a later fragment whose first fragment was not seen first:   outbound dropped
 *     (drop_fragment), inbound to the SNAT address passed (pass_fragment)
 *   - a protocol a rule cannot translate (static: other than TCP/UDP/ICMP; SNAT
 *     outbound: other than TCP/UDP/ICMP echo request):           dropped
 *   - inbound to the SNAT address with no flow state:             passed unchanged
 *     (it is addressed to the NAT host itself); with expired state: the pair is
 *     deleted and the packet passed (pass_stale_flow)
 *   - SNAT with no free port after PORT_PROBES tries:             dropped (drop_no_port)
 *   - a full flow table:                                          dropped (drop_table_full)
 *   - a checksum helper failing (never expected):                 dropped
 * ICMP errors through a static mapping have their embedded header translated too.
 *
 * Defines: MAX_STATIC (static mappings), MAX_FLOWS (SNAT flows, each two entries),
 * PORT_PROBES (ports tried for a new flow), FRAG_ENTRIES (datagrams in flight remembered).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "parsing_helpers.h"
#include "counters.h"
#include "csum_helpers.h"
#include "nat.h"

#ifndef MAX_STATIC
#define MAX_STATIC 256
#endif
#ifndef MAX_FLOWS
#define MAX_FLOWS 65536
#endif
#ifndef FRAG_ENTRIES
#define FRAG_ENTRIES 4096
#endif
#ifndef PORT_PROBES
#define PORT_PROBES 32
#endif

#define ETH_LEN 14
#define IP_LEN 20
#define L4_OFF (ETH_LEN + IP_LEN) /* where L4 starts without IPv4 options (ICMP errors, XDP) */
/* what parsing needs linear: up to the TCP checksum embedded in an ICMP error */
#define INNER_IP_OFF (L4_OFF + 8)
#define INNER_L4_OFF (INNER_IP_OFF + IP_LEN)
#define PULL_LEN (ETH_LEN + 60 + sizeof(struct tcphdr)) /* 60: the longest IPv4 header */
#define E2BIG 7

struct nat_config {
    u32 snat_addr;   /* network byte order; 0: source NAT off */
    u32 inside_net;  /* network byte order */
    u32 inside_mask; /* network byte order */
    u16 port_min;    /* host byte order, inclusive */
    u16 port_max;
    u32 timeout[NAT_TIMEOUT_MAX]; /* jiffies, enum nat_timeout */
    u32 fib_refresh; /* jiffies the XDP fast path trusts a flow's remembered route; 0: never */
};

struct static_value {
    u32 addr; /* the other side's address, network byte order */
    u32 slot; /* index into mapping_counters */
};

/* A flow as one direction's packets carry it; ports in network byte order. ICMP echo:
 * sport = identifier, dport = 0 (outbound key) / sport = 0, dport = translated
 * identifier (inbound key). */
struct nat_flow_key {
    u32 src;
    u32 dst;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 pad[3];
};

/* One direction of a flow: where its packets are translated to (snat_out: the SNAT
 * address and port; snat_in: the inside address and port), and its own use. */
struct nat_entry {
    u32 addr;     /* network byte order */
    u16 port;     /* network byte order */
    u8 closing;   /* TCP: a FIN or RST went this way */
    u8 pad;
    u64 created;  /* jiffies */
    u64 last;     /* jiffies of the last packet this way */
    u64 packets;
    u64 bytes;
    /* the XDP fast path's route for this direction, from the kernel's FIB at fib_at */
    u64 fib_at;       /* jiffies */
    u32 fib_ifindex;  /* egress port; 0: none yet */
    u16 fib_len;      /* the longest packet (IPv4 total length) the lookup allowed */
    u16 fib_pad;
    u8 fib_dmac[6];
    u8 fib_smac[6];
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
BPF_HASH(snat_out, struct nat_flow_key, struct nat_entry, MAX_FLOWS);
BPF_HASH(snat_in, struct nat_flow_key, struct nat_entry, MAX_FLOWS);
PKT_COUNTERS(stats, NAT_OUTCOME_MAX);

/* Fragments: the first one of a SNAT datagram (it has the ports) is translated as its
 * flow; its source, destination, identifier and protocol are remembered with the address
 * it got, for the later ones (no ports), which arrive within moments, or never. */
struct nat_frag_key {
    u32 src;
    u32 dst;
    u16 id;
    u8 proto;
    u8 pad;
};
BPF_TABLE("lru_hash", struct nat_frag_key, u32, frags, FRAG_ENTRIES);

static __always_inline int outcome(u32 which, u64 len, int verdict)
{
    pkt_count(stats.lookup(&which), len);
    return verdict;
}

/* The helpers below that may decide a packet is not theirs return 0 to go on, or 1 with
 * the outcome to count it as in *WHY: `return pass_as(NAT_PASS_MALFORMED, why);`. */
static __always_inline int pass_as(u32 outcome, u32 *why)
{
    *why = outcome;
    return 1;
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
    u8 later;    /* a fragment other than the first (no L4 header) */
    u8 fin_rst;  /* TCP: FIN or RST set */
    u8 ttl;
    u8 tos;
    u8 pad;
    u16 tot_len; /* host byte order */
    u16 l4off;   /* where the L4 header starts in the frame: after the IPv4 options */
    u16 ip_id;   /* network byte order */
};

/* 0: an IPv4 packet to consider (P filled); 1: not one, *WHY the outcome (enum
 * nat_outcome) to count and pass it with. DATA..DATA_END: the linear part of a frame of
 * LEN bytes. The L4 header is read after the header's real length (options included);
 * a later fragment has none. */
static __always_inline int parse_frame(void *data, void *data_end, u32 len, struct pkt *p, u32 *why)
{
    struct hdr_cursor nh = {.pos = data};
    struct ethhdr *eth;
    int eth_proto = parse_ethhdr(&nh, data_end, &eth);
    if (eth_proto < 0)
        return pass_as(NAT_PASS_MALFORMED, why);
    if (eth_proto != htons(ETH_P_IP))
        return pass_as(NAT_PASS_NOT_IPV4, why);
    struct iphdr *ip = CURSOR_TAKE(&nh, data_end, struct iphdr);
    if (!ip)
        return pass_as(NAT_PASS_MALFORMED, why);
    u32 ihl = ip->ihl;
    u32 tot = ntohs(ip->tot_len);
    if (ip->version != 4 || ihl < 5 || tot < ihl * 4 || tot + ETH_LEN > len)
        return pass_as(NAT_PASS_MALFORMED, why);
    if (skip_ip_options(&nh, data_end, ip) < 0)
        return pass_as(NAT_PASS_MALFORMED, why); /* the options run past the frame */
    p->ttl = ip->ttl;
    p->tos = ip->tos;
    p->tot_len = tot;
    p->ip_id = ip->id;
    p->saddr = ip->saddr;
    p->daddr = ip->daddr;
    p->proto = ip->protocol;
    p->options = ihl > 5;
    p->fragment = (ip->frag_off & htons(0x3fff)) != 0;
    p->later = (ip->frag_off & htons(0x1fff)) != 0;
    p->l4off = ETH_LEN + ihl * 4;
    if (p->later)
        return 0;
    /* the L4 header must fit the frame and the IPv4 total length */
    u32 l4len = tot - ihl * 4;
    if (p->proto == IPPROTO_TCP) {
        struct tcphdr *th = CURSOR_TAKE(&nh, data_end, struct tcphdr);
        if (th && l4len >= sizeof(*th)) {
            p->sport = th->source;
            p->dport = th->dest;
            p->fin_rst = th->fin | th->rst;
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

/* parse_frame for an skb: 0 and P filled, or 1 and *WHY the outcome to count and pass. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p, u32 *why)
{
    if (skb->len < ETH_LEN)
        return pass_as(NAT_PASS_MALFORMED, why);
    if ((void *)(long)skb->data + PULL_LEN > (void *)(long)skb->data_end && skb->len > skb->data_end - skb->data)
        bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN);
    return parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, p, why);
}

/* Two 16-bit one's-complement values are the same number (0x0000 and 0xffff are both zero). */
static __always_inline int csum_same(u16 a, u16 b)
{
    return a == b || (u16)(a + b) == 0xffff && (a == 0 || b == 0);
}

/* The one's-complement difference that changing the 32-bit field FROM to TO makes. */
static __always_inline u32 diff4(u32 from, u32 to)
{
    return (u16)~(from >> 16) + (u16)~from + (to >> 16) + (u16)to;
}

static __always_inline u32 diff2(u16 from, u16 to)
{
    return (u16)~from + to;
}

/* Which way a packet crosses the NAT: out (from the inside; its source is translated)
 * or in (to an outside address of the NAT; its destination is). */
enum direction { DIR_OUT = 0, DIR_IN };

/* Which port a rewrite changes. */
enum { PORT_NONE = 0, PORT_SRC, PORT_DST, PORT_ICMP_ID };

/* One packet's translation, every field named where it is made:
 *     &(struct translation){.dir = DIR_IN, .from = p.daddr, .to = st->addr}
 * The address DIR changes (the source out, the destination in) goes FROM -> TO; the port
 * PORT (PORT_NONE: none) goes PORT_FROM -> PORT_TO. Addresses and ports in network byte order. */
struct translation {
    u32 from;
    u32 to;
    u16 port_from;
    u16 port_to;
    u8 dir;  /* enum direction */
    u8 port; /* PORT_NONE, PORT_SRC, PORT_DST or PORT_ICMP_ID */
};

/* Rewrite P's packet as T says and fix every checksum the changes cover. Direct packet
 * access; a TCP/UDP checksum that may be partial takes one helper call (see the header
 * comment). A later fragment has only its IPv4 header changed. Returns 0, or -1 when
 * the packet is not as parsed or a helper failed. */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, const struct translation *t)
{
    int inbound = t->dir == DIR_IN, which = t->port;
    u32 from = t->from, to = t->to;
    u16 port_from = t->port_from, port_to = t->port_to;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_LEN;
    if ((void *)(ip + 1) > data_end)
        return -1;
    u8 proto = p->proto;
    u32 l4off = p->l4off;
    if (l4off > ETH_LEN + 60)
        return -1;
    /* the pseudo-header sum before the rewrite: what a partial TCP/UDP checksum holds */
    u16 seed = csum_fold((ip->saddr >> 16) + (ip->saddr & 0xffff) + (ip->daddr >> 16) + (ip->daddr & 0xffff) +
                         htons(proto) + htons(p->tot_len - (l4off - ETH_LEN)));
    if (inbound)
        ip->daddr = to;
    else
        ip->saddr = to;
    csum_replace4(&ip->check, from, to);
    if (p->later)
        return 0;

    u32 csum_off;
    if (proto == IPPROTO_ICMP) {
        if (which) {
            struct icmphdr *ih = data + l4off;
            if ((void *)(ih + 1) > data_end)
                return -1;
            ih->un.echo.id = port_to;
            csum_replace2(&ih->checksum, port_from, port_to);
        }
        return 0;
    } else if (proto == IPPROTO_TCP) {
        csum_off = l4off + offsetof(struct tcphdr, check);
    } else if (proto == IPPROTO_UDP) {
        csum_off = l4off + offsetof(struct udphdr, check);
    } else {
        return 0;
    }
    u16 *ports = data + l4off;
    u16 *csum = data + csum_off;
    if ((void *)(ports + 2) > data_end || (void *)(csum + 1) > data_end)
        return -1;
    if (which)
        ports[which == PORT_DST] = port_to;
    u16 before = *csum;
    if (proto == IPPROTO_UDP && before == 0) {
        /* no checksum: nothing covers the address or the port; a receive checksum of the
         * whole packet (CHECKSUM_COMPLETE) gains the port's change */
        if (inbound && which)
            bpf_csum_update(skb, diff2(port_from, port_to));
        return 0;
    }
    if (!csum_same(before, seed)) {
        /* not the pseudo-header sum, so not a partial checksum: a full one, updated here */
        csum_replace4(csum, from, to);
        if (which)
            csum_replace2(csum, port_from, port_to);
        if (proto == IPPROTO_UDP && *csum == 0)
            *csum = 0xffff;
        /* the L4 checksum lost the address's change: so did a receive checksum of the
         * whole packet (CHECKSUM_COMPLETE; no-op otherwise). Only received packets have one. */
        if (inbound)
            bpf_csum_update(skb, diff4(to, from));
        return 0;
    }
    /* the field holds what a partial checksum holds (or, once in 65536, a full checksum
     * happens to): the helper knows which, and updates the field and skb->csum */
    u32 d = diff4(from, to);
    u64 flags = BPF_F_PSEUDO_HDR | (proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);
    if (bpf_l4_csum_replace(skb, csum_off, 0, d, flags))
        return -1;
    if (!which || port_from == port_to)
        return 0;
    /* what the helper did shows the kind of checksum: a partial one (the pseudo-header
     * sum) gained the difference, a full one lost it; only a full one covers the port */
    data = (void *)(long)skb->data;
    data_end = (void *)(long)skb->data_end;
    if (csum_off > ETH_LEN + 60 + 16)
        return -1;
    csum = data + csum_off;
    if ((void *)(csum + 1) > data_end)
        return -1;
    if (csum_fold(d) == 0xffff) {
        /* an address change that sums to nothing: the field cannot tell, ask the helper */
        return bpf_l4_csum_replace(skb, csum_off, port_from, port_to,
                                   (proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0) | sizeof(port_to)) ? -1 : 0;
    }
    if (csum_same(*csum, csum_fold((u32)before + d)))
        return 0; /* partial */
    csum_replace2(csum, port_from, port_to);
    if (proto == IPPROTO_UDP && *csum == 0)
        *csum = 0xffff;
    return 0;
}

static __always_inline int translatable_static(struct pkt *p)
{
    return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_ICMP) && (p->has_l4 || p->later);
}

static __always_inline void count_mapping(u32 slot, u64 len, enum direction dir)
{
    struct mapping_counter *m = mapping_counters.lookup(&slot);
    if (!m)
        return;
    if (dir == DIR_IN) {
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
    u32 why;
    if (parse(skb, p, &why)) {
        *verdict = outcome(why, len, TC_ACT_OK);
        return 0;
    }
    u32 zero = 0;
    struct nat_config *cfg = config.lookup(&zero);
    if (!cfg)
        *verdict = outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    return cfg;
}

static __always_inline u32 timeout_of(struct nat_config *cfg, u8 proto, u8 closing)
{
    u32 i = proto == IPPROTO_TCP ? (closing ? NAT_TIMEOUT_TCP_CLOSING : NAT_TIMEOUT_TCP_ESTABLISHED)
                                 : proto == IPPROTO_UDP ? NAT_TIMEOUT_UDP : NAT_TIMEOUT_ICMP;
    if (i >= NAT_TIMEOUT_MAX)
        return 0;
    return cfg->timeout[i];
}

/* Use of one direction's entry E by a packet of LEN bytes at NOW. */
static __always_inline void touch(struct nat_entry *e, u64 now, u64 len, u8 fin_rst)
{
    if (e->last != now)
        e->last = now;
    if (fin_rst && !e->closing)
        e->closing = 1;
    __sync_fetch_and_add(&e->packets, 1);
    __sync_fetch_and_add(&e->bytes, len);
}

/* E (the entry of direction DIR) looks idle past its timeout: expired only if its
 * partner, found under PARTNER_KEY in the other table, is idle too. 1: expired (both
 * entries deleted); 0: alive (E refreshed from its partner). Runs only when E looks expired. */
static __always_inline int expired(struct nat_config *cfg, u8 proto, struct nat_entry *e, u64 now,
                                   struct nat_flow_key *own_key, struct nat_flow_key *partner_key,
                                   enum direction dir)
{
    int outbound = dir == DIR_OUT;
    struct nat_entry *o = outbound ? snat_in.lookup(partner_key) : snat_out.lookup(partner_key);
    if (o && now - o->last <= timeout_of(cfg, proto, o->closing | e->closing)) {
        e->last = o->last;
        return 0;
    }
    if (outbound) {
        snat_in.delete(partner_key);
        snat_out.delete(own_key);
    } else {
        snat_out.delete(partner_key);
        snat_in.delete(own_key);
    }
    return 1;
}

/* A first fragment was translated to ADDR: its later fragments (same source,
 * destination, identifier, protocol) will be too. */
static __always_inline void remember_fragment(struct pkt *p, u32 addr)
{
    struct nat_frag_key fk = {.src = p->saddr, .dst = p->daddr, .id = p->ip_id, .proto = p->proto};
    frags.update(&fk, &addr);
}

static __always_inline u32 *fragment_of(struct pkt *p)
{
    struct nat_frag_key fk = {.src = p->saddr, .dst = p->daddr, .id = p->ip_id, .proto = p->proto};
    return frags.lookup(&fk);
}

/* Outbound SNAT of an established flow; 1 when done (translated or dropped, *verdict
 * set), 0 when there is no live flow for the packet. */
static __always_inline int snat_established(struct __sk_buff *skb, struct nat_config *cfg, struct pkt *p,
                                            struct nat_flow_key *key, u64 now, int *verdict)
{
    u64 len = skb->len;
    struct nat_entry *fv = snat_out.lookup(key);
    if (!fv)
        return 0;
    u32 nat_addr = fv->addr;
    u16 nat_port = fv->port;
    if (now - fv->last > timeout_of(cfg, p->proto, fv->closing | p->fin_rst)) {
        struct nat_flow_key rkey = {.src = p->daddr, .dst = nat_addr, .dport = nat_port, .proto = p->proto};
        if (p->proto != IPPROTO_ICMP)
            rkey.sport = p->dport;
        if (expired(cfg, p->proto, fv, now, key, &rkey, DIR_OUT))
            return 0;
    }
    touch(fv, now, len, p->fin_rst);
    if (p->fragment)
        remember_fragment(p, nat_addr);
    if (rewrite(skb, p, &(struct translation){.dir = DIR_OUT, .from = p->saddr, .to = nat_addr,
                                              .port = p->proto == IPPROTO_ICMP ? PORT_ICMP_ID : PORT_SRC,
                                              .port_from = p->sport, .port_to = nat_port}))
        *verdict = outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    else
        *verdict = outcome(NAT_OUT_SNAT, len, TC_ACT_OK);
    return 1;
}

/* A new SNAT flow: claim a port (its snat_in entry), then the snat_out entry. */
static __always_inline int snat_new(struct __sk_buff *skb, struct nat_config *cfg, struct pkt *p,
                                    struct nat_flow_key *key, u64 now)
{
    u64 len = skb->len;
    u32 lo = cfg->port_min, hi = cfg->port_max;
    if (hi < lo)
        return outcome(NAT_DROP_NO_PORT, len, TC_ACT_SHOT);
    u32 nat_addr = cfg->snat_addr;
    struct nat_flow_key rkey = {.src = p->daddr, .dst = nat_addr, .proto = p->proto};
    if (p->proto != IPPROTO_ICMP)
        rkey.sport = p->dport;
    struct nat_entry rev = {.addr = p->saddr, .port = p->sport, .created = now, .last = now};
    /* PORT_PROBES ports drawn at random (one random seed, then a linear congruential
     * sequence): independent draws, unlike consecutive ports, do not pile flows up in
     * runs that make the next probes fail as the range fills */
    u32 range = hi - lo + 1;
    u32 x = bpf_get_prandom_u32();
    int found = 0;
    for (int i = 0; i < PORT_PROBES; i++) {
        x = x * 1103515245 + 12345;
        u32 cand = lo + (x >> 8) % range;
        rkey.dport = htons((u16)cand);
        long err = snat_in.insert(&rkey, &rev);
        if (err == 0) {
            found = 1;
            break;
        }
        if (err == -E2BIG)
            return outcome(NAT_DROP_TABLE_FULL, len, TC_ACT_SHOT);
    }
    if (!found)
        return outcome(NAT_DROP_NO_PORT, len, TC_ACT_SHOT);
    u16 nat_port = rkey.dport;
    struct nat_entry nv = {.addr = nat_addr, .port = nat_port, .closing = p->fin_rst, .created = now, .last = now,
                           .packets = 1, .bytes = len};
    if (snat_out.insert(key, &nv)) {
        /* full, or another CPU created this flow a moment ago: give the port back */
        snat_in.delete(&rkey);
        return outcome(NAT_DROP_TABLE_FULL, len, TC_ACT_SHOT);
    }
    if (p->fragment)
        remember_fragment(p, nat_addr);
    if (rewrite(skb, p, &(struct translation){.dir = DIR_OUT, .from = p->saddr, .to = nat_addr,
                                              .port = p->proto == IPPROTO_ICMP ? PORT_ICMP_ID : PORT_SRC,
                                              .port_from = p->sport, .port_to = nat_port}))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    return outcome(NAT_OUT_SNAT_NEW, len, TC_ACT_OK);
}

static __always_inline int snat_protocol(struct pkt *p, u8 echo_type)
{
    return p->has_l4 && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP ||
                         (p->proto == IPPROTO_ICMP && p->icmp_type == echo_type));
}

/* An ICMP error (destination unreachable, time exceeded, parameter problem) about a
 * packet of a SNAT flow; the embedded header is that packet as its receiver got it.
 * Inbound (to the SNAT address, from beyond): the embedded packet left with the SNAT
 * address and port as its source: outer destination, embedded source address and port
 * (or echo identifier) become the inside host's again. Outbound (from an inside host,
 * about a packet it was sent through the NAT; TCP and UDP): outer source, embedded
 * destination address and port become the SNAT address and port, as the remote knows
 * them. The outer IPv4, embedded IPv4, embedded L4 (where the message carries it) and
 * ICMP checksums are updated: the error is about the packet as its reader knows it.
 * DIR: which of the two. 1: handled (*verdict set); 0: not such an error. */
static __always_inline int icmp_error(struct __sk_buff *skb, struct pkt *p, enum direction dir, u32 static_to,
                                      int *verdict)
{
    int outbound = dir == DIR_OUT;
    u64 len = skb->len;
    if (p->proto != IPPROTO_ICMP || !p->has_l4 || p->options || p->fragment || !(p->icmp_type == ICMP_DEST_UNREACH ||
        p->icmp_type == ICMP_TIME_EXCEEDED || p->icmp_type == ICMP_PARAMETERPROB))
        return 0;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct icmphdr *ih = data + L4_OFF;
    struct iphdr *in = data + INNER_IP_OFF;
    u16 *l4 = data + INNER_L4_OFF; /* embedded ports / echo type+code, checksum, id */
    if ((void *)(l4 + 4) > data_end || p->tot_len < IP_LEN + 8 + IP_LEN + 8)
        return 0;
    u32 ours = outbound ? in->daddr : in->saddr; /* the embedded address the NAT rewrites */
    if (in->version != 4 || in->ihl != 5 || ours != (outbound ? p->saddr : p->daddr) ||
        (in->frag_off & htons(0x1fff)))
        return 0;
    u8 proto = in->protocol;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP)
        return 0;
    u32 from = ours, to = static_to;
    int slot = -1; /* which u16 of the embedded L4 header is the port the NAT rewrites */
    u16 from_port = 0, to_port = 0;
    if (!static_to) {
        if (proto == IPPROTO_ICMP && outbound)
            return 0;
        slot = proto == IPPROTO_ICMP ? 2 : outbound;
        from_port = slot == 2 ? l4[2] : slot ? l4[1] : l4[0];
        struct nat_flow_key k = {.proto = proto};
        if (outbound) {
            k.src = ours;
            k.dst = in->saddr;
            k.sport = from_port;
            k.dport = l4[0];
        } else {
            k.src = in->daddr;
            k.dst = ours;
            k.sport = slot == 2 ? 0 : l4[1];
            k.dport = from_port;
        }
        struct nat_entry *e = outbound ? snat_out.lookup(&k) : snat_in.lookup(&k);
        if (!e)
            return 0;
        to = e->addr;
        to_port = e->port;
    }
    struct iphdr *ip = data + ETH_LEN;
    if ((void *)(ip + 1) > data_end)
        return 0;
    /* the outer header (the ICMP checksum does not cover it) */
    if (outbound)
        ip->saddr = to;
    else
        ip->daddr = to;
    csum_replace4(&ip->check, from, to);
    /* the embedded address and its checksum change by opposite amounts: the ICMP
     * checksum stays as it was */
    if (outbound)
        in->daddr = to;
    else
        in->saddr = to;
    csum_replace4(&in->check, from, to);
    /* the embedded port (SNAT), and the embedded L4 checksum that covers it and (TCP/UDP)
     * the address through the pseudo header: the ICMP checksum follows both */
    u16 *l4csum = 0;
    u32 msg_len = p->tot_len - IP_LEN - 8 - IP_LEN; /* embedded L4 bytes the message carries */
    if (slot == 2)
        l4[2] = to_port;
    else if (slot == 1)
        l4[1] = to_port;
    else if (slot == 0)
        l4[0] = to_port;
    if (proto == IPPROTO_ICMP) {
        if (slot == 2)
            l4csum = &l4[1];
    } else if (proto == IPPROTO_UDP) {
        l4csum = &l4[3];
    } else if (msg_len >= 18) {
        l4csum = (void *)l4 + 16;
        if ((void *)(l4csum + 1) > data_end)
            l4csum = 0;
    }
    if (slot >= 0)
        csum_replace2(&ih->checksum, from_port, to_port);
    if (l4csum && !(proto == IPPROTO_UDP && *l4csum == 0)) {
        u16 old = *l4csum;
        if (proto != IPPROTO_ICMP)
            csum_replace4(l4csum, from, to);
        if (slot >= 0)
            csum_replace2(l4csum, from_port, to_port);
        if (proto == IPPROTO_UDP && *l4csum == 0)
            *l4csum = 0xffff;
        csum_replace2(&ih->checksum, old, *l4csum);
    }
    /* every change above is matched by its checksum's: the packet's sum is unchanged, so
     * a receive checksum of the whole packet (CHECKSUM_COMPLETE) still holds */
    u32 which = static_to ? (outbound ? NAT_OUT_STATIC : NAT_IN_STATIC)
                          : (outbound ? NAT_OUT_ICMP_ERROR : NAT_IN_ICMP_ERROR);
    *verdict = outcome(which, len, TC_ACT_OK);
    return 1;
}

int nat_egress(struct __sk_buff *skb)
{
    struct pkt p = {.icmp_type = 0xff};
    u64 len = skb->len;
    int verdict = TC_ACT_OK;
    struct nat_config *cfg = begin(skb, &p, &verdict);
    if (!cfg)
        return verdict;

    /* an established SNAT flow first: one lookup (a host with a static mapping never
     * has SNAT flows: the control plane removes them when it adds the mapping) */
    int inside = cfg->snat_addr && (p.saddr & cfg->inside_mask) == cfg->inside_net;
    struct nat_flow_key key = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .proto = p.proto};
    if (p.proto != IPPROTO_ICMP)
        key.dport = p.dport;
    u64 now = bpf_jiffies64();
    int snat_ok = inside && snat_protocol(&p, ICMP_ECHO);
    if (snat_ok && snat_established(skb, cfg, &p, &key, now, &verdict))
        return verdict;

    struct static_value *st = static_out.lookup(&p.saddr);
    if (!st && !inside)
        return outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    if (st) {
        /* stateless: every fragment of a datagram gets the same address */
        if (!translatable_static(&p))
            return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
        u32 slot = st->slot;
        if (icmp_error(skb, &p, DIR_OUT, st->addr, &verdict)) { /* its embedded header too */
            count_mapping(slot, len, DIR_OUT);
            return verdict;
        }
        if (rewrite(skb, &p, &(struct translation){.dir = DIR_OUT, .from = p.saddr, .to = st->addr}))
            return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
        count_mapping(slot, len, DIR_OUT);
        return outcome(NAT_OUT_STATIC, len, TC_ACT_OK);
    }
    if (p.later) {
        /* a later fragment: the address its first fragment got, if that went first */
        u32 *addr = fragment_of(&p);
        if (!addr)
            return outcome(NAT_DROP_FRAGMENT, len, TC_ACT_SHOT);
        if (rewrite(skb, &p, &(struct translation){.dir = DIR_OUT, .from = p.saddr, .to = *addr}))
            return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
        return outcome(NAT_OUT_FRAGMENT, len, TC_ACT_OK);
    }
    if (!snat_ok) {
        if (icmp_error(skb, &p, DIR_OUT, 0, &verdict))
            return verdict;
        return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
    }
    return snat_new(skb, cfg, &p, &key, now);
}

int nat_ingress(struct __sk_buff *skb)
{
    struct pkt p = {.icmp_type = 0xff};
    u64 len = skb->len;
    int verdict = TC_ACT_OK;
    struct nat_config *cfg = begin(skb, &p, &verdict);
    if (!cfg)
        return verdict;

    /* the SNAT address is never a static mapping's outside address (the control plane
     * refuses it), so a packet to it is a flow's or the NAT host's own */
    if (cfg->snat_addr && p.daddr == cfg->snat_addr) {
        if (p.later) {
            u32 *addr = fragment_of(&p);
            if (!addr)
                return outcome(NAT_PASS_FRAGMENT, len, TC_ACT_OK);
            if (rewrite(skb, &p, &(struct translation){.dir = DIR_IN, .from = p.daddr, .to = *addr}))
                return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
            return outcome(NAT_IN_FRAGMENT, len, TC_ACT_OK);
        }
        if (icmp_error(skb, &p, DIR_IN, 0, &verdict))
            return verdict;
        if (!snat_protocol(&p, ICMP_ECHOREPLY))
            return outcome(NAT_PASS_NO_FLOW, len, TC_ACT_OK);
        struct nat_flow_key rkey = {.src = p.saddr, .dst = p.daddr, .proto = p.proto};
        u16 nat_port;
        int which;
        if (p.proto == IPPROTO_ICMP) {
            nat_port = p.sport; /* the identifier */
            which = PORT_ICMP_ID;
        } else {
            nat_port = p.dport;
            rkey.sport = p.sport;
            which = PORT_DST;
        }
        rkey.dport = nat_port;
        struct nat_entry *rev = snat_in.lookup(&rkey);
        if (!rev)
            return outcome(NAT_PASS_NO_FLOW, len, TC_ACT_OK);
        u32 in_addr = rev->addr;
        u16 in_port = rev->port;
        u64 now = bpf_jiffies64();
        if (now - rev->last > timeout_of(cfg, p.proto, rev->closing | p.fin_rst)) {
            struct nat_flow_key key = {.src = in_addr, .dst = p.saddr, .sport = in_port, .proto = p.proto};
            if (p.proto != IPPROTO_ICMP)
                key.dport = p.sport;
            if (expired(cfg, p.proto, rev, now, &rkey, &key, DIR_IN))
                return outcome(NAT_PASS_STALE_FLOW, len, TC_ACT_OK);
        }
        touch(rev, now, len, p.fin_rst);
        if (p.fragment)
            remember_fragment(&p, in_addr);
        if (rewrite(skb, &p, &(struct translation){.dir = DIR_IN, .from = p.daddr, .to = in_addr, .port = which,
                                                   .port_from = nat_port, .port_to = in_port}))
            return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
        return outcome(NAT_IN_SNAT, len, TC_ACT_OK);
    }

    struct static_value *st = static_in.lookup(&p.daddr);
    if (!st)
        return outcome(NAT_PASS_NO_RULE, len, TC_ACT_OK);
    if (!translatable_static(&p))
        return outcome(NAT_DROP_PROTOCOL, len, TC_ACT_SHOT);
    u32 slot = st->slot;
    if (icmp_error(skb, &p, DIR_IN, st->addr, &verdict)) { /* its embedded header too */
        count_mapping(slot, len, DIR_IN);
        return verdict;
    }
    if (rewrite(skb, &p, &(struct translation){.dir = DIR_IN, .from = p.daddr, .to = st->addr}))
        return outcome(NAT_DROP_REWRITE_FAILED, len, TC_ACT_SHOT);
    count_mapping(slot, len, DIR_IN);
    return outcome(NAT_IN_STATIC, len, TC_ACT_OK);
}

/* Hairpinning (an inside host reaching another through an outside address of the NAT) is
 * refused: a packet from the inside network to a static mapping's outside address, or
 * to the SNAT address and a port of the SNAT range. (To other ports of the SNAT address
 * it is the NAT host's own traffic.) */
static __always_inline int hairpin(struct nat_config *cfg, struct pkt *p)
{
    if ((p->saddr & cfg->inside_mask) != cfg->inside_net)
        return 0;
    if (cfg->snat_addr && p->daddr == cfg->snat_addr) {
        if (!p->has_l4 || p->proto == IPPROTO_ICMP)
            return 0;
        u16 port = ntohs(p->dport);
        return port >= cfg->port_min && port <= cfg->port_max;
    }
    return static_in.lookup(&p->daddr) != 0;
}

/* nat_hairpin (tc ingress of the inside ports, optional): drops and counts hairpinning;
 * everything else passes uncounted. */
int nat_hairpin(struct __sk_buff *skb)
{
    struct pkt p = {.icmp_type = 0xff};
    u32 why;
    if (parse(skb, &p, &why))
        return TC_ACT_OK;
    u32 zero = 0;
    struct nat_config *cfg = config.lookup(&zero);
    if (!cfg || !hairpin(cfg, &p))
        return TC_ACT_OK;
    return outcome(NAT_DROP_HAIRPIN, skb->len, TC_ACT_SHOT);
}

/* ------------------------------------------------------------------ the XDP fast path
 * xdp_nat_outbound (XDP on each inside port) and xdp_nat_inbound (XDP on the outside
 * port) translate packets of established SNAT flows and of static mappings with the
 * same maps as the tc programs above, forward them with the kernel's own route and
 * neighbour (bpf_fib_lookup) and send them out with bpf_redirect, never touching the
 * stack. Everything else goes up with XDP_PASS, untouched, counted by why (enum
 * nat_xdp_outcome, `xdp_stats`): there the tc NAT translates it as before (a new flow
 * is created there, its next packets take this path), or the kernel answers it (TTL
 * exceeded, fragmentation needed, no neighbour yet: the kernel resolves it, and the
 * next packet finds it). Each flow direction remembers the route and next hop of its last
 * lookup for nat_config.fib_refresh jiffies (and for packets no longer than that lookup
 * allowed: the MTU check stays), so an established flow pays one hash lookup and no FIB
 * lookup. xdp_route is the same forwarding with no translation and no flow state (a FIB
 * lookup per packet): the fast path's own baseline. XDP sees frames, not skbs: TCP/UDP checksums are updated
 * as full checksums (a sender's partial checksum offload must be off on a veth testbed).
 */
PKT_COUNTERS(xdp_stats, NAT_XDP_OUTCOME_MAX);

static __always_inline int xdp_outcome(u32 which, u64 len, int verdict)
{
    pkt_count(xdp_stats.lookup(&which), len);
    return verdict;
}

/* Rewrite the frame as T says, every checksum updated in place (no options: the L4
 * header at L4_OFF). */
static __always_inline int xdp_rewrite(void *data, void *data_end, u8 proto, const struct translation *t)
{
    int inbound = t->dir == DIR_IN, which = t->port;
    u32 from = t->from, to = t->to;
    u16 port_from = t->port_from, port_to = t->port_to;
    struct iphdr *ip = data + ETH_LEN;
    if ((void *)(ip + 1) > data_end)
        return -1;
    if (inbound)
        ip->daddr = to;
    else
        ip->saddr = to;
    csum_replace4(&ip->check, from, to);
    if (proto == IPPROTO_ICMP) {
        struct icmphdr *ih = data + L4_OFF;
        if ((void *)(ih + 1) > data_end)
            return -1;
        if (which) {
            ih->un.echo.id = port_to;
            csum_replace2(&ih->checksum, port_from, port_to);
        }
        return 0;
    }
    u32 csum_off = proto == IPPROTO_TCP ? L4_OFF + offsetof(struct tcphdr, check)
                                        : L4_OFF + offsetof(struct udphdr, check);
    u16 *ports = data + L4_OFF;
    u16 *csum = data + csum_off;
    if ((void *)(ports + 2) > data_end || (void *)(csum + 1) > data_end)
        return -1;
    if (which)
        ports[which == PORT_DST] = port_to;
    if (proto == IPPROTO_UDP && *csum == 0)
        return 0;
    csum_replace4(csum, from, to);
    if (which)
        csum_replace2(csum, port_from, port_to);
    if (proto == IPPROTO_UDP && *csum == 0)
        *csum = 0xffff;
    return 0;
}

/* Where the kernel would send a packet to DST (from SRC) arriving on IFINDEX: 0 and
 * FIB filled (egress ifindex, MACs), or 1 and *WHY the outcome (enum nat_xdp_outcome)
 * to pass the packet up with. */
static __always_inline int xdp_route_of(struct xdp_md *ctx, struct pkt *p, u32 src, u32 dst,
                                        struct bpf_fib_lookup *fib, u32 *why)
{
    fib->family = 2; /* AF_INET */
    fib->tos = p->tos;
    fib->l4_protocol = p->proto;
    fib->tot_len = p->tot_len;
    fib->ifindex = ctx->ingress_ifindex;
    fib->ipv4_src = src;
    fib->ipv4_dst = dst;
    int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
    if (rc == BPF_FIB_LKUP_RET_SUCCESS)
        return 0;
    if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
        return pass_as(NAT_XDP_PASS_NO_NEIGH, why);
    if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
        return pass_as(NAT_XDP_PASS_FRAG_NEEDED, why);
    return pass_as(NAT_XDP_PASS_LOCAL, why);
}

/* The route of a flow's direction E: remembered from the last lookup while it is younger
 * than cfg->fib_refresh and the packet no longer than the lookup allowed (the MTU check),
 * else looked up again (and remembered). What xdp_route_of returns. */
static __always_inline int xdp_route_cached(struct xdp_md *ctx, struct nat_config *cfg, struct pkt *p,
                                            struct nat_entry *e, u32 src, u32 dst, u64 now,
                                            struct bpf_fib_lookup *fib, u32 *why)
{
    u32 refresh = cfg->fib_refresh;
    int fresh = refresh && e->fib_ifindex && now - e->fib_at <= refresh;
    if (fresh && p->tot_len <= e->fib_len) {
        fib->ifindex = e->fib_ifindex;
        __builtin_memcpy(fib->dmac, e->fib_dmac, ETH_ALEN);
        __builtin_memcpy(fib->smac, e->fib_smac, ETH_ALEN);
        return 0;
    }
    if (xdp_route_of(ctx, p, src, dst, fib, why))
        return 1;
    if (!refresh)
        return 0;
    e->fib_len = fresh && e->fib_ifindex == fib->ifindex && e->fib_len > p->tot_len ? e->fib_len : p->tot_len;
    e->fib_ifindex = fib->ifindex;
    __builtin_memcpy(e->fib_dmac, fib->dmac, ETH_ALEN);
    __builtin_memcpy(e->fib_smac, fib->smac, ETH_ALEN);
    e->fib_at = now;
    return 0;
}

/* Forward a translated frame as the FIB said: TTL - 1, MACs, out of the egress port. */
static __always_inline int xdp_forward(void *data, void *data_end, struct bpf_fib_lookup *fib)
{
    struct ethhdr *eth = data;
    struct iphdr *ip = data + ETH_LEN;
    if ((void *)(ip + 1) > data_end)
        return XDP_ABORTED;
    /* the TTL shares a 16-bit word with the protocol: the checksum loses 0x0100 */
    u16 old = *(u16 *)&ip->ttl;
    ip->ttl--;
    csum_replace2(&ip->check, old, *(u16 *)&ip->ttl);
    __builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
    return bpf_redirect(fib->ifindex, 0);
}

/* What the fast path translates through a static mapping: TCP, UDP, ICMP echo (an ICMP
 * error carries an embedded header to translate too: the tc NAT does that). */
static __always_inline int xdp_static_ok(struct pkt *p)
{
    return p->proto != IPPROTO_ICMP || p->icmp_type == ICMP_ECHO || p->icmp_type == ICMP_ECHOREPLY;
}

/* Parse for the fast path: 0 and P filled, or 1 and *WHY the outcome to pass with. */
static __always_inline int xdp_parse(struct xdp_md *ctx, struct pkt *p, u32 *why)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 parsed_why;
    if (parse_frame(data, data_end, data_end - data, p, &parsed_why))
        return pass_as(parsed_why == NAT_PASS_NOT_IPV4 ? NAT_XDP_PASS_NOT_IPV4 : NAT_XDP_PASS_UNUSUAL, why);
    if (p->options || p->fragment || p->ttl <= 1 || !p->has_l4)
        return pass_as(NAT_XDP_PASS_UNUSUAL, why);
    return 0;
}

/* A flow entry E found for this packet: still live, its route (cached), its use counted.
 * 0 and FIB filled, or 1 and *WHY the outcome to pass the packet up with. */
static __always_inline int xdp_flow(struct xdp_md *ctx, struct nat_config *cfg, struct pkt *p,
                                    struct nat_entry *e, u32 src, u32 dst, u64 len,
                                    struct bpf_fib_lookup *fib, u32 *why)
{
    u64 now = bpf_jiffies64();
    if (now - e->last > timeout_of(cfg, p->proto, e->closing | p->fin_rst))
        return pass_as(NAT_XDP_PASS_EXPIRED, why);
    if (xdp_route_cached(ctx, cfg, p, e, src, dst, now, fib, why))
        return 1;
    touch(e, now, len, p->fin_rst);
    return 0;
}

/* A static 1:1 mapping ST for this packet going DIR: what the fast path translates, its
 * route, its use counted. 0 and FIB filled, or 1 and *WHY the outcome to pass the packet up with. */
static __always_inline int xdp_static(struct xdp_md *ctx, struct pkt *p, struct static_value *st,
                                      enum direction dir, u64 len, struct bpf_fib_lookup *fib, u32 *why)
{
    if (!xdp_static_ok(p)) /* an ICMP error: its embedded header is the tc NAT's work */
        return pass_as(NAT_XDP_PASS_UNUSUAL, why);
    if (dir == DIR_IN ? xdp_route_of(ctx, p, p->saddr, st->addr, fib, why)
                      : xdp_route_of(ctx, p, st->addr, p->daddr, fib, why))
        return 1;
    count_mapping(st->slot, len, dir);
    return 0;
}

/* Translate the frame as T says and forward it as FIB says; counted as WHICH. */
static __always_inline int xdp_translate(struct xdp_md *ctx, struct pkt *p, const struct translation *t,
                                         struct bpf_fib_lookup *fib, int which, u64 len)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (xdp_rewrite(data, data_end, p->proto, t))
        return XDP_ABORTED;
    return xdp_outcome(which, len, xdp_forward(data, data_end, fib));
}

int xdp_nat_outbound(struct xdp_md *ctx)
{
    struct pkt p = {.icmp_type = 0xff};
    u64 len = ctx->data_end - ctx->data;
    u32 why;
    if (xdp_parse(ctx, &p, &why))
        return xdp_outcome(why, len, XDP_PASS);
    u32 zero = 0;
    struct nat_config *cfg = config.lookup(&zero);
    if (!cfg)
        return xdp_outcome(NAT_XDP_PASS_NO_RULE, len, XDP_PASS);
    struct bpf_fib_lookup fib = {};
    int inside = cfg->snat_addr && (p.saddr & cfg->inside_mask) == cfg->inside_net;
    if (inside && snat_protocol(&p, ICMP_ECHO)) {
        struct nat_flow_key key = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .proto = p.proto};
        if (p.proto != IPPROTO_ICMP)
            key.dport = p.dport;
        struct nat_entry *fv = snat_out.lookup(&key);
        if (fv) {
            u32 to = fv->addr;
            u16 port_to = fv->port;
            if (xdp_flow(ctx, cfg, &p, fv, to, p.daddr, len, &fib, &why))
                return xdp_outcome(why, len, XDP_PASS);
            struct translation t = {.dir = DIR_OUT, .from = p.saddr, .to = to,
                                    .port = p.proto == IPPROTO_ICMP ? PORT_ICMP_ID : PORT_SRC,
                                    .port_from = p.sport, .port_to = port_to};
            return xdp_translate(ctx, &p, &t, &fib, NAT_XDP_OUT_SNAT, len);
        }
    }
    if (hairpin(cfg, &p))
        return xdp_outcome(NAT_XDP_DROP_HAIRPIN, len, XDP_DROP);
    struct static_value *st = static_out.lookup(&p.saddr);
    if (!st)
        return xdp_outcome(inside ? NAT_XDP_PASS_NO_FLOW : NAT_XDP_PASS_NO_RULE, len, XDP_PASS);
    if (xdp_static(ctx, &p, st, DIR_OUT, len, &fib, &why))
        return xdp_outcome(why, len, XDP_PASS);
    struct translation t = {.dir = DIR_OUT, .from = p.saddr, .to = st->addr};
    return xdp_translate(ctx, &p, &t, &fib, NAT_XDP_OUT_STATIC, len);
}

int xdp_nat_inbound(struct xdp_md *ctx)
{
    struct pkt p = {.icmp_type = 0xff};
    u64 len = ctx->data_end - ctx->data;
    u32 why;
    if (xdp_parse(ctx, &p, &why))
        return xdp_outcome(why, len, XDP_PASS);
    u32 zero = 0;
    struct nat_config *cfg = config.lookup(&zero);
    if (!cfg)
        return xdp_outcome(NAT_XDP_PASS_NO_RULE, len, XDP_PASS);
    struct bpf_fib_lookup fib = {};
    if (cfg->snat_addr && p.daddr == cfg->snat_addr) {
        if (!snat_protocol(&p, ICMP_ECHOREPLY))
            return xdp_outcome(NAT_XDP_PASS_NO_RULE, len, XDP_PASS);
        struct nat_flow_key rkey = {.src = p.saddr, .dst = p.daddr, .proto = p.proto};
        u16 port_from;
        int port;
        if (p.proto == IPPROTO_ICMP) {
            port_from = p.sport; /* the identifier */
            port = PORT_ICMP_ID;
        } else {
            port_from = p.dport;
            rkey.sport = p.sport;
            port = PORT_DST;
        }
        rkey.dport = port_from;
        struct nat_entry *rev = snat_in.lookup(&rkey);
        if (!rev)
            return xdp_outcome(NAT_XDP_PASS_NO_FLOW, len, XDP_PASS);
        u32 to = rev->addr;
        u16 port_to = rev->port;
        if (xdp_flow(ctx, cfg, &p, rev, p.saddr, to, len, &fib, &why))
            return xdp_outcome(why, len, XDP_PASS);
        struct translation t = {.dir = DIR_IN, .from = p.daddr, .to = to, .port = port,
                                .port_from = port_from, .port_to = port_to};
        return xdp_translate(ctx, &p, &t, &fib, NAT_XDP_IN_SNAT, len);
    }
    struct static_value *st = static_in.lookup(&p.daddr);
    if (!st)
        return xdp_outcome(NAT_XDP_PASS_NO_RULE, len, XDP_PASS);
    if (xdp_static(ctx, &p, st, DIR_IN, len, &fib, &why))
        return xdp_outcome(why, len, XDP_PASS);
    struct translation t = {.dir = DIR_IN, .from = p.daddr, .to = st->addr};
    return xdp_translate(ctx, &p, &t, &fib, NAT_XDP_IN_STATIC, len);
}

int xdp_route(struct xdp_md *ctx)
{
    struct pkt p = {.icmp_type = 0xff};
    u64 len = ctx->data_end - ctx->data;
    u32 why;
    if (xdp_parse(ctx, &p, &why))
        return xdp_outcome(why, len, XDP_PASS);
    struct bpf_fib_lookup fib = {};
    if (xdp_route_of(ctx, &p, p.saddr, p.daddr, &fib, &why))
        return xdp_outcome(why, len, XDP_PASS);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    return xdp_outcome(NAT_XDP_ROUTED, len, xdp_forward(data, data_end, &fib));
}
