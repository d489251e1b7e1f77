/* What bpf/xdp_fwd.c and its control plane (labkit/dataplanes/xdp_fwd.py) share. */
#ifndef LABKIT_XDP_FWD_H
#define LABKIT_XDP_FWD_H

/* Per-CPU counters, the index of `counters`; Python: "redirected", "no_entry", ... */
enum xdp_fwd_counter {
    FWD_REDIRECTED = 0, /* sent on by redirect */
    FWD_NO_ENTRY,       /* no entry for the ingress port: passed to the stack */
    FWD_SHORT,          /* too short for Ethernet: dropped */
    FWD_REFUSED,        /* the redirect helper refused: aborted */
    FWD_COUNTER_MAX,    /* the number of counters, not one of them */
};

#endif
