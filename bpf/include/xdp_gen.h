/* What bpf/xdp_gen.c and its control plane (labkit/dataplanes/xdp_gen.py) share. */
#ifndef LABKIT_XDP_GEN_H
#define LABKIT_XDP_GEN_H

/* Bits of gen_config.vary; Python: "sport", "dport", "src_ip", "dst_ip". */
enum xdp_gen_vary {
    VARY_SPORT = 1,  /* UDP/TCP source port, ICMP echo identifier */
    VARY_DPORT = 2,
    VARY_SRC_IP = 4, /* IPv4 address, or the last 32 bits of an IPv6 address */
    VARY_DST_IP = 8,
};

/* gen_config.l4: which checksum the rewrite updates. */
enum xdp_gen_l4 {
    L4_UDP = 0,
    L4_TCP = 1,
    L4_ICMP = 2,   /* ICMPv4 echo: checksum without pseudo-header */
    L4_ICMPV6 = 3, /* ICMPv6 echo: checksum with pseudo-header */
};

/* Headers restored from gen_template on every run: Ethernet + IPv6 + TCP (74) fit;
 * frames are >= 60 bytes, so the first 60 are always copied and the rest where the
 * frame is that long. */
enum xdp_gen_template {
    HDR_MIN = 60,
    HDR_COPY = 76,
};

#endif
