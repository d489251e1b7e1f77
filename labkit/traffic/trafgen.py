"""trafgen (Debian netsniff-ng): a packet-mmap generator in userspace, the default
backend where the in-kernel one cannot run. It ignores SIGTERM while sending, so it is
always bounded with -n COUNT and stopped with SIGINT, then SIGKILL.

Flows. The frame is described in trafgen's header syntax, whose field functions work on
whole fields: the UDP source port is a 16-bit runtime counter, ``udp(sp=dinc(FIRST,
LAST))``, and trafgen recomputes the IPv4 and UDP checksums after every change. With one
sending CPU, flow f (0..flows-1) is source port ``sport + f``, sent in that order and
wrapping after LAST, so every ``flows`` consecutive frames carry each port exactly once
(tried here: 8,000 frames of 8,000 flows arrived as 8,000 distinct ports in order, and
131,072 frames of all 65,536 ports, 0 included, as each port exactly twice, every checksum
valid). With several sending CPUs each CPU walks the ports from the first on its own, so
``count`` frames carry the first ``count / cpus`` ports, each ``cpus`` times: a sender that
needs every port once per ``flows`` frames (the NAT's new flows and flow sweeps) sends with
one CPU (``TrafficSpec.cpus = 1``, the default)."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import time

from labkit.errors import InputError
from labkit.packets import ETH_HLEN
from labkit.traffic import Generator, Offered, TrafficSpec, register, tool_file

MAX_FLOWS = 65536  # every UDP source port: sport .. sport + flows - 1 within 0..65535
IPV4_UDP_HEADERS = 20 + 8


def config(spec: TrafficSpec) -> str:
    """A trafgen packet description of SPEC in its header syntax: Ethernet, IPv4 (TTL 64,
    don't fragment), UDP whose source port walks sport .. sport + flows - 1 (a runtime
    counter, one step per frame), zero payload; trafgen computes lengths and checksums."""
    if spec.proto != "udp" or ipaddress.ip_address(spec.src_ip).version != 4:
        raise InputError(
            "the trafgen backend sends IPv4/UDP only: use proto='udp' with IPv4 addresses, "
            "or the 'xdp' generator for other protocols"
        )
    last = spec.sport + spec.flows - 1
    if not 0 <= spec.sport <= last <= 0xFFFF:
        raise InputError(
            f"the trafgen backend sends source ports 0..65535: {spec.flows} flows from port "
            f"{spec.sport} end at {last}; at most {MAX_FLOWS} flows, from a lower sport"
        )
    sport = f"dinc({spec.sport}, {last})" if spec.flows > 1 else str(spec.sport)
    payload = spec.size - ETH_HLEN - IPV4_UDP_HEADERS
    return "".join(
        [
            "{ ",
            f"eth(da={spec.dst_mac}, sa={spec.src_mac}), ",
            f"ipv4(sa={spec.src_ip}, da={spec.dst_ip}, ttl=64, df), ",
            f"udp(sp={sport}, dp={spec.dport})",
            f", fill(0x00, {payload})" if payload > 0 else "",
            " }\n",
        ]
    )


#: how far above the asked rate a send may go before its notes say the rate was not held
RATE_SLACK = 1.1


@register
class Trafgen(Generator):
    name = "trafgen"
    description = "netsniff-ng trafgen (packet mmap, userspace)"

    @classmethod
    def available(cls):
        if shutil.which("trafgen") or os.path.exists("/usr/sbin/trafgen"):
            return True, ""
        return False, "trafgen is not installed (Debian package netsniff-ng): run `sudo make setup`"

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        with tool_file(config(spec), "trafgen", ".cfg") as cfg:
            argv = [
                "trafgen",
                "--dev",
                self.iface.name,
                "--conf",
                cfg,
                "--num",
                str(spec.count),
                "--cpus",
                str(min(spec.cpus, os.cpu_count() or 1)),
                "--no-sock-mem",
            ]
            if spec.rate_pps:
                argv += ["--rate", f"{int(spec.rate_pps)}pps"]
            t0 = time.monotonic()
            with self.host.spawn(argv, name="trafgen") as proc:
                cpu0 = proc.cpu_seconds()
                try:
                    proc.wait(spec.timeout_s)
                    cpu = proc.cpu_seconds()
                except TimeoutError:
                    cpu = float("nan")
                elapsed = time.monotonic() - t0
                out = proc.output()
        packets = _total(out, "packets outgoing")
        nbytes = _total(out, "bytes outgoing")
        if packets is None:
            raise RuntimeError(f"trafgen reported no packet count; its output:\n{out[-2000:]}")
        notes = [] if proc.returncode == 0 else [f"trafgen exited {proc.returncode}"]
        if spec.rate_pps and elapsed > 0 and packets / elapsed > RATE_SLACK * spec.rate_pps:
            notes.append(
                f"trafgen sent {packets / elapsed:.0f} pps where {spec.rate_pps:.0f} pps was asked: its --rate "
                "does not hold rates above a few thousand pps; use the 'xdp' or 'xdp_loop' generator for paced load"
            )
        # a generator stopped at the time limit has no final CPU time: NaN, and so is the difference
        return Offered(self.name, packets, nbytes or packets * spec.size, elapsed, cpu_seconds=cpu - cpu0, notes=notes)


def _total(out: str, label: str):
    m = re.findall(r"(\d+)\s+" + label, out)
    return int(m[-1]) if m else None
