/* Header parsing with a cursor, every read bounds-checked (shared by every program in bpf/).
 *
 *     struct hdr_cursor nh = {.pos = data};
 *     struct ethhdr *eth;
 *     int proto = parse_ethhdr(&nh, data_end, &eth);     // EtherType, network byte order
 *     if (proto == htons(ETH_P_IP)) {
 *         struct iphdr *ip;
 *         int l4 = parse_iphdr(&nh, data_end, &ip);       // cursor now past IHL*4 bytes
 *         ...
 *
 * Each parse_X checks that the whole header lies before data_end, moves the cursor past
 * it and returns what the next header is (or -1 when the packet is too short or the
 * header is malformed: the cursor is then left where it was). VLAN tags are not parsed:
 * no program here handles them, so a tagged frame is "not IP" to all of them.
 */
#ifndef LABKIT_PARSING_HELPERS_H
#define LABKIT_PARSING_HELPERS_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/icmp.h>

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* Where parsing has got to in the packet. */
struct hdr_cursor {
    void *pos;
};

/* LEN bytes at the cursor, bounds-checked, and the cursor moved past them; 0 if the
 * packet ends first. The building block of the parse_X below. */
static __always_inline void *cursor_take(struct hdr_cursor *nh, void *data_end, u32 len)
{
    void *p = nh->pos;
    if (p + len > data_end)
        return 0;
    nh->pos = p + len;
    return p;
}

#define CURSOR_TAKE(nh, data_end, type) ((type *)cursor_take((nh), (data_end), sizeof(type)))

/* Ethernet: returns the EtherType in network byte order, -1 if too short. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, struct ethhdr **ethhdr)
{
    struct ethhdr *eth = CURSOR_TAKE(nh, data_end, struct ethhdr);
    if (!eth)
        return -1;
    *ethhdr = eth;
    return eth->h_proto;
}

/* Past the options of the IPv4 header IP (taken with CURSOR_TAKE, so the cursor is at
 * its end): IHL >= 5 and all IHL*4 bytes within the packet. Returns the IP protocol, -1
 * when the IHL is wrong. Apart from parse_iphdr, for a program that reads only the fixed
 * header on its fast path and pays for the IHL only where it needs L4. */
static __always_inline int skip_ip_options(struct hdr_cursor *nh, void *data_end, struct iphdr *ip)
{
    u32 hdrsize = ip->ihl * 4;
    if (hdrsize < sizeof(*ip))
        return -1;
    void *l4 = (void *)ip + hdrsize;
    if (l4 > data_end)
        return -1;
    nh->pos = l4;
    return ip->protocol;
}

/* IPv4 with its real header length: IHL >= 5 and all IHL*4 bytes (options included)
 * within the packet. Returns the IP protocol; the cursor points at the L4 header. */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, struct iphdr **iphdr)
{
    struct hdr_cursor c = *nh;
    struct iphdr *ip = CURSOR_TAKE(&c, data_end, struct iphdr);
    if (!ip || skip_ip_options(&c, data_end, ip) < 0)
        return -1;
    *nh = c;
    *iphdr = ip;
    return ip->protocol;
}

/* IPv6, fixed header only (extension headers are not walked): returns the next header. */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end, struct ipv6hdr **ip6hdr)
{
    struct ipv6hdr *ip6 = CURSOR_TAKE(nh, data_end, struct ipv6hdr);
    if (!ip6)
        return -1;
    *ip6hdr = ip6;
    return ip6->nexthdr;
}

/* UDP: returns the length field (host byte order) minus the header, -1 if too short. */
static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end, struct udphdr **udphdr)
{
    struct udphdr *uh = CURSOR_TAKE(nh, data_end, struct udphdr);
    if (!uh)
        return -1;
    *udphdr = uh;
    int len = ntohs(uh->len) - sizeof(*uh);
    return len < 0 ? -1 : len;
}

/* TCP with its real header length (data offset >= 5, options within the packet):
 * returns the header length in bytes. */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data_end, struct tcphdr **tcphdr)
{
    struct tcphdr *th = nh->pos;
    if ((void *)(th + 1) > data_end)
        return -1;
    u32 hdrsize = th->doff * 4;
    if (hdrsize < sizeof(*th))
        return -1;
    if (nh->pos + hdrsize > data_end)
        return -1;
    nh->pos += hdrsize;
    *tcphdr = th;
    return hdrsize;
}

/* ICMP (v4 or v6: both start with type, code, checksum, then the echo identifier and
 * sequence): returns the type. */
static __always_inline int parse_icmphdr(struct hdr_cursor *nh, void *data_end, struct icmphdr **icmphdr)
{
    struct icmphdr *ih = CURSOR_TAKE(nh, data_end, struct icmphdr);
    if (!ih)
        return -1;
    *icmphdr = ih;
    return ih->type;
}

/* The ports of UDP or TCP (both begin with source port, destination port), network byte
 * order, without moving the cursor: what rules and flow keys read. */
struct l4_ports {
    u16 source;
    u16 dest;
};

static __always_inline struct l4_ports *peek_ports(struct hdr_cursor *nh, void *data_end)
{
    struct l4_ports *p = nh->pos;
    if ((void *)(p + 1) > data_end)
        return 0;
    return p;
}

#endif /* LABKIT_PARSING_HELPERS_H */
