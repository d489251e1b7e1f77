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
    NAT_PASS_OPTIONS_OR_FRAGMENT,
    NAT_DROP_OPTIONS,
    NAT_DROP_FRAGMENT,
    NAT_DROP_PROTOCOL,
    NAT_DROP_NO_PORT,
    NAT_DROP_TABLE_FULL,
    NAT_DROP_REWRITE_FAILED,
    NAT_OUTCOME_MAX, /* the number of outcomes, not one of them */
};

#endif
