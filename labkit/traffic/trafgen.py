"""trafgen (Debian netsniff-ng): a packet-mmap generator in userspace, the default
backend where the in-kernel one cannot run. It ignores SIGTERM while sending, so it is
always bounded with -n COUNT and stopped with SIGINT, then SIGKILL."""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
import time

from labkit.errors import InputError
from labkit.packets import ETH_HLEN
from labkit.traffic import Generator, Offered, TrafficSpec, register

MAX_FLOWS = 256  # flows vary the low byte of the source port


def config(spec: TrafficSpec) -> str:
    """A trafgen packet description of SPEC in its byte-level syntax, with the IPv4 and
    UDP checksums computed by trafgen (csumip/csumudp) after each varying byte changes."""
    if spec.proto != "udp" or ipaddress.ip_address(spec.src_ip).version != 4:
        raise InputError("the trafgen backend sends IPv4/UDP only: use proto='udp' with IPv4 addresses, "
                         "or the 'xdp' generator for other protocols")
    if spec.flows > MAX_FLOWS or (spec.sport & 0xFF) + spec.flows - 1 > 0xFF:
        raise InputError(f"the trafgen backend varies one byte of the source port: at most {MAX_FLOWS} flows, "
                         f"with sport's low byte + flows <= 256 (asked {spec.flows} from port {spec.sport}); "
                         "use the 'xdp' generator for more flows")
    mac = lambda m: ", ".join(f"0x{b}" for b in m.split(":"))  # noqa: E731
    ip = lambda a: ", ".join(str(b) for b in ipaddress.IPv4Address(a).packed)  # noqa: E731
    total_ip = spec.size - ETH_HLEN
    udp_len = total_ip - 20
    payload = udp_len - 8
    lo = spec.sport & 0xFF
    sport_lo = f"dinc({lo}, {lo + spec.flows - 1}, 1)" if spec.flows > 1 else f"{lo}"
    return "\n".join([
        "{",
        f"  {mac(spec.dst_mac)}, {mac(spec.src_mac)}, 0x08, 0x00,",
        f"  0x45, 0x00, c16({total_ip}), 0x00, 0x00, 0x40, 0x00, 64, 17, csumip(14, 33),",
        f"  {ip(spec.src_ip)}, {ip(spec.dst_ip)},",
        f"  {spec.sport >> 8}, {sport_lo}, c16({spec.dport}), c16({udp_len}), csumudp(14, 34),",
        f"  fill(0x00, {payload})" if payload > 0 else "",
        "}",
        "",
    ])


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
        with tempfile.NamedTemporaryFile("w", prefix="labkit-trafgen-", suffix=".cfg", delete=False) as f:
            f.write(config(spec))
            cfg = f.name
        os.chmod(cfg, 0o644)
        argv = ["trafgen", "--dev", self.iface.name, "--conf", cfg, "--num", str(spec.count),
                "--cpus", str(min(spec.cpus, os.cpu_count() or 1)), "--no-sock-mem"]
        if spec.rate_pps:
            argv += ["--rate", f"{int(spec.rate_pps)}pps"]
        try:
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
        finally:
            os.unlink(cfg)
        packets = _total(out, "packets outgoing")
        nbytes = _total(out, "bytes outgoing")
        if packets is None:
            raise RuntimeError(f"trafgen reported no packet count; its output:\n{out[-2000:]}")
        notes = [] if proc.returncode == 0 else [f"trafgen exited {proc.returncode}"]
        return Offered(self.name, packets, nbytes or packets * spec.size, elapsed,
                       cpu_seconds=cpu - cpu0 if cpu == cpu else float("nan"), notes=notes)


def _total(out: str, label: str):
    m = re.findall(r"(\d+)\s+" + label, out)
    return int(m[-1]) if m else None
