"""The kernel's own packet generator (/proc/net/pktgen). Stock Debian/Ubuntu kernels ship
it as a module (`modprobe pktgen`); kernels built without CONFIG_NET_PKTGEN do not have it,
and this backend then says so and names the alternatives."""

from __future__ import annotations

import time

from labkit import capabilities
from labkit.traffic import Generator, Offered, TrafficSpec, register

PROC = "/proc/net/pktgen"


@register
class KernelPktgen(Generator):
    name = "pktgen"
    description = "the kernel's pktgen (/proc/net/pktgen)"

    @classmethod
    def available(cls):
        p = capabilities.probe("pktgen")  # /proc/net/pktgen, after a `modprobe pktgen`
        return (True, "") if p.ok else (False, p.message())

    def _write(self, path: str, command: str) -> None:
        # pktgen's files are per network namespace: write them from the sending host.
        cp = self.host.run(["sh", "-c", f"echo '{command}' > {path}"], check=False, timeout=max(30, self._timeout))
        if cp.returncode != 0:
            raise RuntimeError(f"pktgen refused `{command}` in {path}: {cp.stderr.strip()}")
        result = self.host.read(path)
        for line in result.splitlines():
            if line.startswith("Result:") and "OK" not in line:
                raise RuntimeError(f"pktgen refused `{command}`: {line}")

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        if spec.proto != "udp":
            raise ValueError("the kernel's pktgen sends UDP only: use proto='udp'")
        self._timeout = spec.timeout_s
        dev = self.iface.name
        thread = f"{PROC}/kpktgend_0"
        self._write(thread, "rem_device_all")
        self._write(thread, f"add_device {dev}")
        try:
            devfile = f"{PROC}/{dev}"
            for cmd in (
                f"count {spec.count}",
                f"pkt_size {spec.size + 4}",  # pktgen counts the 4-byte FCS the NIC adds
                "clone_skb 0",
                "delay 0" if not spec.rate_pps else f"ratep {int(spec.rate_pps)}",
                f"dst_mac {spec.dst_mac}",
                f"src_mac {spec.src_mac}",
                f"dst {spec.dst_ip}",
                f"src_min {spec.src_ip}",
                f"src_max {spec.src_ip}",
                f"udp_src_min {spec.sport}",
                f"udp_src_max {spec.sport + spec.flows - 1}",
                f"udp_dst_min {spec.dport}",
                f"udp_dst_max {spec.dport}",
            ):
                self._write(devfile, cmd)
            t0 = time.monotonic()
            self.host.run(
                ["timeout", "-s", "INT", str(int(spec.timeout_s)), "sh", "-c", f"echo start > {PROC}/pgctrl"],
                check=False,
                timeout=spec.timeout_s + 10,
            )
            elapsed = time.monotonic() - t0
            status = self.host.read(devfile)
        finally:
            self.host.run(["sh", "-c", f"echo rem_device_all > {thread}"], check=False)
        sent = _field(status, "pkts-sofar") or 0
        return Offered(self.name, sent, sent * spec.size, elapsed)


def _field(text: str, key: str):
    import re

    m = re.search(key + r":\s*(\d+)", text)
    return int(m.group(1)) if m else None
