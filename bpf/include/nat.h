/* What bpf/nat.c and its control plane (labkit/dataplanes/nat.py, and the reference
 * model labkit/dataplanes/nat_model.py) share: the outcome names come from here. */
#ifndef LABKIT_NAT_H
#define LABKIT_NAT_H

/* Outcomes, the index of `stats`; Python (nat_model.OUTCOMES): "out_static", ... */
enum nat_outcome {
    NAT_OUT_STATIC = 0,
    NAT_OUT_SNAT_NEW,
    NAT_OUT_SNAT,
    NAT_IN_STATIC,
    NAT_IN_SNAT,
    NAT_PASS_NOT_IPV4,
    NAT_PASS_MALFORMED,
    NAT_PASS_NO_RULE,
    NAT_PASS_NO_FLOW,
    NAT_PASS_STALE_FLOW,
    NAT_PASS_FRAGMENT,  /* a later fragment to the SNAT address whose first was not seen */
    NAT_DROP_FRAGMENT,  /* a later fragment from inside whose first was not seen */
    NAT_DROP_PROTOCOL,
    NAT_DROP_NO_PORT,
    NAT_DROP_TABLE_FULL,
    NAT_DROP_REWRITE_FAILED,
    NAT_IN_ICMP_ERROR, /* an ICMP error about a SNAT flow: outer and embedded headers translated */
    NAT_OUT_FRAGMENT,  /* a later fragment, translated as its first fragment was */
    NAT_IN_FRAGMENT,
    NAT_OUT_ICMP_ERROR, /* an inside host's ICMP error about a packet of its SNAT flow */
    NAT_DROP_HAIRPIN,   /* nat_hairpin: an inside host to an outside address of the NAT (refused) */
    NAT_OUTCOME_MAX, /* the number of outcomes, not one of them */
};

/* Flow timeouts, the index of nat_config.timeout (in jiffies); Python (nat.TIMEOUTS):
 * "tcp_established", "tcp_closing", "udp", "icmp". A flow whose packets in both
 * directions are older than its timeout is expired: on lookup (lazily) or by the
 * control plane's sweep. A TCP flow that saw a FIN or RST is "closing". */
enum nat_timeout {
    NAT_TIMEOUT_TCP_ESTABLISHED = 0,
    NAT_TIMEOUT_TCP_CLOSING,
    NAT_TIMEOUT_UDP,
    NAT_TIMEOUT_ICMP,
    NAT_TIMEOUT_MAX, /* the number of timeouts, not one of them */
};

/* The XDP fast path's outcomes (xdp_nat_outbound, xdp_nat_inbound, xdp_route), the index
 * of `xdp_stats`; Python (xdp_nat.OUTCOMES): "out_static", "out_snat", ... A packet the
 * fast path does not finish goes up the stack (XDP_PASS), to the tc NAT and the kernel,
 * counted by why. */
enum nat_xdp_outcome {
    NAT_XDP_OUT_STATIC = 0, /* translated and redirected */
    NAT_XDP_OUT_SNAT,
    NAT_XDP_IN_STATIC,
    NAT_XDP_IN_SNAT,
    NAT_XDP_ROUTED,         /* xdp_route: forwarded untranslated */
    NAT_XDP_PASS_NOT_IPV4,
    NAT_XDP_PASS_UNUSUAL,   /* malformed, IP options, a fragment, TTL <= 1, not TCP/UDP/ICMP echo */
    NAT_XDP_PASS_NO_FLOW,   /* no established flow (a new one is created on the slow path) */
    NAT_XDP_PASS_EXPIRED,   /* the flow looks idle past its timeout: the slow path decides */
    NAT_XDP_PASS_NO_RULE,   /* no rule concerns the packet (the NAT host's own, or unrelated) */
    NAT_XDP_PASS_LOCAL,     /* the kernel's FIB: not forwarded (a local address, no route, ...) */
    NAT_XDP_PASS_NO_NEIGH,  /* the next hop's MAC is not known yet: the kernel resolves it */
    NAT_XDP_PASS_FRAG_NEEDED, /* beyond the egress MTU: the kernel answers */
    NAT_XDP_DROP_HAIRPIN,   /* an inside host to an outside address of the NAT: refused */
    NAT_XDP_OUTCOME_MAX,    /* the number of outcomes, not one of them */
};

#endif
