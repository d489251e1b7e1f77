/* A traffic generator made of XDP programs that multiply frames in a loop, for where
 * BPF_PROG_RUN's live frames are refused. Control plane: labkit/dataplanes/xdp_loop.py;
 * the traffic backend on top is labkit/traffic/xdploop.py.
 *
 * The loop is a veth pair A-B in the sender's namespace. A frame that arrives at B runs
 * xdp_loop_fan: it takes the next index from loop_budget (an atomic fetch-add on
 * LOOP_NEXT) and, while the index is below LOOP_LIMIT, is rewritten into flow
 * index % flows (bpf/include/gen_flows.h) and broadcast through the devmap loop_fan,
 * which holds B itself and the sending port: one copy leaves through the sending port
 * towards the receiver (ndo_xdp_xmit, so it arrives there as an XDP frame) and one goes
 * out of B back to A, whose xdp_loop_tx returns it with XDP_TX. A frame whose index
 * reaches the limit is dropped, so the loop dies out after exactly LOOP_LIMIT frames
 * were sent, with the indices 0, 1, 2, ..: every flow once per `flows` frames.
 * Userspace seeds the loop with a few frames (AF_PACKET into A) and paces it by raising
 * the limit in steps. The devmap may hold the sending port more than once (`copies`):
 * every round then sends that many copies of one flow.
 */
#include <uapi/linux/bpf.h>
#include "gen_flows.h"
#include "xdp_loop.h"

BPF_ARRAY(gen_config, struct gen_config, 1);
BPF_ARRAY(loop_budget, u64, LOOP_BUDGET_SLOTS);
BPF_DEVMAP(loop_fan, LOOP_PORTS_MAX);

int xdp_loop_fan(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 k_next = LOOP_NEXT, k_limit = LOOP_LIMIT, zero = 0;
    u64 *next = loop_budget.lookup(&k_next);
    u64 *limit = loop_budget.lookup(&k_limit);
    if (!next || !limit)
        return XDP_ABORTED;
    u64 lim = *limit;
    if (*next >= lim)
        return XDP_DROP; /* spent: no atomic needed to know it */
    u64 n = __sync_fetch_and_add(next, 1);
    if (n >= lim)
        return XDP_DROP;
    struct gen_config *cfg = gen_config.lookup(&zero);
    if (cfg && cfg->flows > 1 && gen_rewrite_flow(data, data_end, cfg, (u32)(n % cfg->flows)) < 0)
        return XDP_ABORTED;
    return loop_fan.redirect_map(0, BPF_F_BROADCAST);
}

int xdp_loop_tx(struct xdp_md *ctx)
{
    return XDP_TX;
}
