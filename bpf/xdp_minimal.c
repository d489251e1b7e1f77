/* The smallest programs: a baseline for program cost (BPF_PROG_TEST_RUN), and the
 * one-line XDP_PASS program a veth peer needs so that XDP frames sent towards it are
 * delivered (it switches the peer to NAPI mode), and a tc program that lets everything
 * through (the probe that tc clsact works, labkit/probes.py). Control plane:
 * labkit/dataplanes/minimal.py (nothing to configure; it names and loads them). */
#include <uapi/linux/bpf.h>

int xdp_drop_bare(struct xdp_md *ctx)
{
    return XDP_DROP;
}

int xdp_pass_bare(struct xdp_md *ctx)
{
    return XDP_PASS;
}

int xdp_tx_bare(struct xdp_md *ctx)
{
    return XDP_TX; /* the live-frames probe: sent back out of the context's ingress interface */
}

int tc_pass_bare(struct __sk_buff *skb)
{
    return 0; /* TC_ACT_OK */
}
