/* What bpf/xdp_loop.c and its control plane (labkit/dataplanes/xdp_loop.py) share. */
#ifndef LABKIT_XDP_LOOP_H
#define LABKIT_XDP_LOOP_H

/* Slots of the loop_budget array (u64 each). */
enum xdp_loop_budget {
    LOOP_NEXT = 0,  /* the index the next frame towards the receiver takes */
    LOOP_LIMIT = 1, /* frames with an index at or above it are dropped: the loop dies out */
    LOOP_BUDGET_SLOTS,
};

/* Entries of each fan-out devmap: the loop's own end and the sending port, and room for
 * extra copies towards the sending port. */
enum xdp_loop_ports {
    LOOP_PORTS_MAX = 8,
};

#endif
