"""What the kernel refuses reaches the user as what it is: the verifier's own log is kept for
every refused program (also where bcc prints only its own "Program too large" for E2BIG),
hints are keyed on that log, and a refused BPF_PROG_RUN in live-frames mode is a `Refused`
that names live frames, the likely reasons and the other generators."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from labkit import bpf, verifier
from labkit.errors import LabkitError, Refused
from labkit.teaching import magic

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: run `sudo make test`")

#: a loop whose counter differs on every pass and whose body is long: the verifier walks it
#: until its budget of a million instructions is spent (E2BIG), before any jump limit
MIX = "\n".join("        x = x * 1103515245 + 12345; x ^= x >> 7;" for _ in range(40))
ENDLESS = (
    """int xdp_main(struct xdp_md *ctx) {
    __u32 x = ctx->data_end - ctx->data;
    __u32 steps = 0;
    #pragma nounroll
    while (x != 7) {
%s
        steps++;
    }
    return steps > 100 ? XDP_DROP : XDP_PASS;
}"""
    % MIX
)

#: what bcc prints for E2BIG instead of the verifier's log
BCC_E2BIG = "bpf: Argument list too long. Program  too large (11 insns), at most 4096 insns\n"


def test_a_loop_walked_to_the_verifiers_limit_keeps_its_log_and_gets_the_loop_hint():
    prog = magic.bpf_cell("endless", ENDLESS, {})
    try:
        err = prog.refused
        assert isinstance(err, verifier.VerifierError), prog.explain()
        assert "bound your loop" in err.hint, err.explain()
        if "back-edge" in err.log or "infinite loop" in err.log:
            pytest.skip("this kernel refuses every loop it cannot unroll: the log names the back-edge")
        assert err.errno == errno.E2BIG, err.explain()
        assert "too large. Processed" in err.log, err.log[-2000:]
        assert err.processed and err.processed > 100_000
        assert err.message.startswith(f"the verifier gave up after processing {err.processed:,} instructions")
        assert err.instructions and "too large (" not in err.message
    finally:
        prog.close()


def test_e2big_is_the_verifier_giving_up_whatever_bcc_prints():
    bare = verifier.VerifierError("xdp_main", "cell.c", BCC_E2BIG, "Failed to load BPF program", errno.E2BIG)
    # E2BIG and no log that says why: both causes are named, the loop's among them
    assert bare.message.startswith("the kernel refused it with E2BIG") and "did not say which" in bare.message
    assert "tail calls" in bare.hint and "bound your loop" in bare.hint
    log = (
        BCC_E2BIG + "12: (07) r3 += 1\nBPF program is too large. Processed 1000001 insn\n"
        "processed 1000001 insns (limit 1000000) max_states_per_insn 4\n"
    )
    kept = verifier.VerifierError("xdp_main", "cell.c", log, "Failed to load BPF program", errno.E2BIG)
    assert kept.message == (
        "the verifier gave up after processing 1,000,001 instructions "
        "(BPF program is too large. Processed 1000001 insn)"
    )
    assert kept.instructions == ["12: (07) r3 += 1"] and "bound your loop" in kept.hint
    # an older kernel's words for the same refusal
    assert "bound your loop" in verifier.hint_for("back-edge from insn 12 to 9")
    assert "bound your loop" in verifier.hint_for("infinite loop detected at insn 4")


@pytest.mark.parametrize("err", [errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP])
def test_a_live_frames_refusal_says_what_why_and_what_instead(err):
    exc = bpf.live_frames_refused(err)
    assert isinstance(exc, LabkitError) and exc.errno == err
    text = str(exc)
    first = text.splitlines()[0]
    assert "live-frames mode" in first and os.strerror(err) in first and errno.errorcode[err] in first
    for reason in ("before 5.18", "container", "lockdown"):
        assert reason in text, text
    if err == errno.EPERM:
        assert "missing capabilities" in text
    for backend in ("'trafgen'", "'xdp_loop'", "'testpmd'", "'auto'"):
        assert backend in text, text


def test_a_live_frames_call_the_kernel_refuses_raises_refused():
    """Live frames plus a flag XDP does not take (BPF_F_TEST_RUN_ON_CPU): EINVAL on every kernel."""
    with bpf.load("xdp_minimal") as prog:
        fn = prog.function("xdp_drop_bare", "xdp")
        ctx = bpf.XdpMd(data=0, data_end=64, ingress_ifindex=socket.if_nametoindex("lo"))
        with pytest.raises(Refused) as info:
            bpf.test_run(fn, bytes(64), repeat=4, ctx=ctx, flags=bpf.BPF_F_TEST_XDP_LIVE_FRAMES | 1, batch_size=64)
        assert info.value.errno in bpf.LIVE_FRAMES_REFUSALS and "live-frames mode" in str(info.value)
        with pytest.raises(LabkitError) as plain:  # without live frames it is an ordinary failure
            bpf.test_run(fn, bytes(64), flags=1)
        assert not isinstance(plain.value, Refused)
