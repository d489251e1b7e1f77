"""DPDK testpmd in txonly mode as a generator, over a virtual AF_PACKET port on the
sending interface (no hugepages, no PCI) or a real DPDK port when given `pci=`.
testpmd has no packet count: labkit reads its periodic statistics and stops it
(SIGINT, then SIGKILL) once the count is reached or the time is up."""
from __future__ import annotations

import os
import re
import shutil
import time

from .. import lifecycle
from . import Generator, Offered, TrafficSpec, register

BINARIES = ("dpdk-testpmd", "testpmd")


def testpmd_binary() -> str | None:
    for b in BINARIES:
        if shutil.which(b):
            return shutil.which(b)
    return None


@register
class Testpmd(Generator):
    name = "testpmd"
    description = "DPDK testpmd --forward-mode=txonly (net_af_packet vdev by default)"

    @classmethod
    def available(cls):
        if testpmd_binary():
            return True, ""
        return False, "dpdk-testpmd is not installed (Debian package dpdk): run `sudo make setup`"

    def eal_args(self, prefix: str) -> list[str]:
        lcores = self.options.get("lcores", "0,1" if (os.cpu_count() or 1) > 1 else "0")
        args = ["-l", lcores, "--file-prefix", prefix, "--log-level", "lib.eal:error"]
        pci = self.options.get("pci")
        if pci:
            args += ["-a", pci]
        else:
            args += ["--no-huge", "--no-pci", "-m", str(self.options.get("memory_mb", 1024)),
                     f"--vdev=net_af_packet0,iface={self.iface.name}"]
        return args

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        run = lifecycle._current_run
        prefix = f"{run.prefix if run else 'lk0000'}-tpmd"
        argv = [testpmd_binary(), *self.eal_args(prefix), "--",
                "--forward-mode=txonly", "--total-num-mbufs=16384", f"--txpkts={spec.size}",
                f"--tx-ip={spec.src_ip},{spec.dst_ip}", f"--tx-udp={spec.sport},{spec.dport}",
                f"--eth-peer=0,{spec.dst_mac}", "--stats-period=1", "--auto-start"]
        if spec.flows > 1:
            argv.append("--txonly-multi-flow")
        t0 = time.monotonic()
        with self.host.spawn(argv, name="dpdk-testpmd") as proc:
            deadline = t0 + spec.timeout_s
            sent = 0
            while proc.running and time.monotonic() < deadline:
                time.sleep(0.2)
                sent = _tx_packets(proc.output()) or 0
                if sent >= spec.count:
                    break
            cpu = proc.cpu_seconds()
            elapsed = time.monotonic() - t0
            proc.stop(grace=3)
            out = proc.output()
        _remove_runtime_dir(prefix)
        final = _tx_packets(out) or sent
        notes = [] if final else [f"testpmd sent nothing; its output:\n{out[-1500:]}"]
        return Offered(self.name, final, final * spec.size, elapsed, cpu_seconds=cpu, notes=notes)


def _tx_packets(out: str):
    m = re.findall(r"TX-packets:\s*(\d+)", out)
    return max(int(x) for x in m) if m else None


def _remove_runtime_dir(prefix: str) -> None:
    """DPDK leaves /var/run/dpdk/PREFIX behind; remove it so the next run starts clean."""
    for base in ("/var/run/dpdk", "/run/dpdk"):
        path = os.path.join(base, prefix)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
