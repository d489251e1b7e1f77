"""DPDK's testpmd as a generator, over a virtual AF_PACKET port on the sending interface
(no hugepages, no PCI), an AF_XDP port (`af_xdp=True`), or a real DPDK port (`pci=`).

Modes (option `mode`):

- ``txonly`` (default): an exact count. testpmd runs its command file: `start tx_first K`
  sends K bursts of the txonly engine (with TX retry on), then one burst of the remainder,
  so exactly `spec.count` packets are handed to the port; the port's own counters
  (`show port stats`) give what it sent, and its "since last show" rate the sending rate.
- ``flowgen``: testpmd's flowgen engine (many flows with varying IP addresses, as testpmd
  picks them), run until the count is reached: the count overshoots by up to one
  statistics period, and the true number sent is reported.

testpmd never runs past `spec.timeout_s`, is stopped with SIGINT then SIGKILL, always
reaped, and its runtime directory (/var/run/dpdk/PREFIX) is removed afterwards.
`rate_pps` is not supported (testpmd has no software rate limit): a note says so.

Pktgen-DPDK, when a `pktgen` binary is on the PATH, is the backend "pktgen-dpdk".
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
import time

from labkit import dpdk
from labkit.errors import InputError
from labkit.traffic import Generator, Offered, TrafficSpec, register

BINARIES = ("dpdk-testpmd", "testpmd")
MAX_BURST = 512
MODES = ("txonly", "flowgen")


def testpmd_binary() -> str | None:
    for b in BINARIES:
        if shutil.which(b):
            return shutil.which(b)
    return None


def _check_spec(spec: TrafficSpec, backend: str) -> None:
    if spec.proto != "udp" or ipaddress.ip_address(spec.src_ip).version != 4:
        raise InputError(f"the {backend} backend sends IPv4/UDP only: use proto='udp' with IPv4 addresses, "
                         "or another generator")


@register
class Testpmd(Generator):
    name = "testpmd"
    description = "DPDK testpmd txonly (exact count) or flowgen (net_af_packet vdev by default)"

    @classmethod
    def available(cls):
        if testpmd_binary():
            return True, ""
        return False, "dpdk-testpmd is not installed (Debian package dpdk): run `sudo make setup`"

    def __init__(self, iface, **options):
        super().__init__(iface, **options)
        mode = options.get("mode", "txonly")
        if mode not in MODES:
            raise InputError(f"testpmd mode {mode!r}: choose one of {MODES}")
        self.mode = mode
        self.port = (dpdk.Port.pci(dpdk.check_pci_address(options["pci"])) if options.get("pci")
                     else dpdk.Port.af_xdp(iface) if options.get("af_xdp") else dpdk.Port.af_packet(iface))
        default_lcores = "0,1" if (os.cpu_count() or 1) > 1 else "0"
        self.eal = dpdk.EalOptions(lcores=str(options.get("lcores", default_lcores)),
                                   memory_mb=int(options.get("memory_mb", 1024)),
                                   hugepages=options.get("hugepages"), log_level="lib.eal:error")
        self.eal.validate([self.port])
        if len(self.eal.lcore_ids()) < 2 and (os.cpu_count() or 1) > 1:
            raise InputError("testpmd needs two lcores (one runs its command line, one forwards): e.g. lcores='0,1'")
        self.last_output = ""

    def eal_args(self, prefix: str) -> list[str]:
        return self.eal.args([self.port], prefix)

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        _check_spec(spec, "testpmd")
        notes = []
        if spec.rate_pps:
            notes.append(f"testpmd has no software rate limit: rate_pps={spec.rate_pps:g} was not applied")
        if spec.flows > 1 and self.mode == "txonly":
            notes.append("txonly-multi-flow varies the UDP source port per packet as testpmd does it, not exactly "
                         f"{spec.flows} flows")
        prefix = dpdk.file_prefix("tpmd")
        try:
            if self.mode == "txonly":
                packets, nbytes, seconds, cpu = self._txonly(spec, prefix, notes)
            else:
                packets, nbytes, seconds, cpu = self._flowgen(spec, prefix, notes)
        finally:
            dpdk.remove_runtime_dir(prefix)
        return Offered(self.name, packets, nbytes, seconds, cpu_seconds=cpu, notes=notes)

    def _common(self, spec: TrafficSpec) -> list[str]:
        return ["--total-num-mbufs=16384", f"--txpkts={spec.size}", f"--tx-ip={spec.src_ip},{spec.dst_ip}",
                f"--tx-udp={spec.sport},{spec.dport}", f"--eth-peer=0,{spec.dst_mac}"] + \
            (["--txonly-multi-flow"] if spec.flows > 1 else [])

    def _txonly(self, spec: TrafficSpec, prefix: str, notes: list):
        full, rest = divmod(spec.count, MAX_BURST)
        cmds = ["set fwd io retry", "show port stats 0"]
        if full:
            cmds += [f"set burst {MAX_BURST}", f"start tx_first {full}", "stop"]
        if rest:
            cmds += [f"set burst {rest}", "start tx_first 1", "stop"]
        cmds += ["show port stats 0", "quit"]
        with tempfile.NamedTemporaryFile("w", prefix="labkit-testpmd-", suffix=".cmd", delete=False) as f:
            f.write("\n".join(cmds) + "\n")
            cmdfile = f.name
        os.chmod(cmdfile, 0o644)
        argv = [testpmd_binary(), *self.eal_args(prefix), "--", "-i", f"--cmdline-file={cmdfile}",
                f"--burst={MAX_BURST}", *self._common(spec)]
        t0 = time.monotonic()
        try:
            with self.host.spawn(argv, name="dpdk-testpmd") as proc:
                try:
                    proc.wait(spec.timeout_s + 30)  # + EAL start-up
                except TimeoutError:
                    notes.append(f"testpmd did not finish within {spec.timeout_s:.0f} s and was stopped")
                cpu = proc.cpu_seconds()
                out = proc.output()
        finally:
            os.unlink(cmdfile)
        wall = time.monotonic() - t0
        self.last_output = out
        stats = port_stats(out)
        if not stats:
            raise RuntimeError(f"testpmd printed no port statistics; its output:\n{out[-2000:]}")
        last = stats[-1]
        packets, nbytes = last["TX-packets"], last["TX-bytes"]
        if last.get("TX-errors"):
            notes.append(f"testpmd counted {last['TX-errors']} TX errors")
        if last.get("RX-packets"):
            notes.append(f"{last['RX-packets']} packets arrived at the sending port while sending "
                         "(io forwarding sent them back out and they are in the count)")
        pps = last.get("Tx-pps", 0)
        seconds = packets / pps if pps else wall
        if packets < spec.count:
            notes.append(f"testpmd sent {packets} of {spec.count} packets asked")
        return packets, nbytes, seconds, cpu

    def _flowgen(self, spec: TrafficSpec, prefix: str, notes: list):
        argv = [testpmd_binary(), *self.eal_args(prefix), "--", "--forward-mode=flowgen",
                f"--flowgen-flows={max(1, spec.flows)}", "--stats-period=1", "--auto-start", *self._common(spec)]
        notes.append("flowgen: count reached by polling testpmd's 1 s statistics, so it overshoots; the true "
                     "number sent is reported. flowgen picks its own IP addresses per flow")
        t0 = time.monotonic()
        with self.host.spawn(argv, name="dpdk-testpmd") as proc:
            deadline = t0 + spec.timeout_s + 30
            while proc.running and time.monotonic() < deadline:
                time.sleep(0.1)
                st = port_stats(proc.output())
                if st and st[-1]["TX-packets"] >= spec.count:
                    break
            cpu = proc.cpu_seconds()
            elapsed = time.monotonic() - t0
            proc.stop(grace=3)
            out = proc.output()
        self.last_output = out
        sent = max((s["TX-packets"] for s in port_stats(out)), default=0)
        fwd = re.findall(r"TX-packets:\s*(\d+)\s+TX-dropped", out)
        if fwd:
            sent = max(sent, max(int(x) for x in fwd))
        if not sent:
            notes.append(f"testpmd sent nothing; its output:\n{out[-1500:]}")
        return sent, sent * spec.size, elapsed, cpu


_NIC_RE = re.compile(r"#+ NIC statistics for port (\d+)\s+#+(.*?)#{20,}", re.S)


def port_stats(out: str) -> list[dict]:
    """Every `show port stats` block testpmd printed (also its periodic --stats-period ones):
    RX/TX packets, bytes, errors and the rates since the previous block."""
    blocks = []
    for port, body in _NIC_RE.findall(out):
        d = {"port": int(port)}
        for k, v in re.findall(r"([RT]X-[a-z]+|[RT]x-[a-z]+):\s*(\d+)", body):
            d[k] = int(v)
        if "TX-packets" in d:
            blocks.append(d)
    return blocks


# ---------------------------------------------------------------- Pktgen-DPDK
PKTGEN_LUA = """-- labkit: send COUNT packets on port 0, then quit
pktgen.set_mac("0", "dst", "{dst_mac}")
pktgen.set_ipaddr("0", "src", "{src_ip}/24")
pktgen.set_ipaddr("0", "dst", "{dst_ip}")
pktgen.set_proto("0", "udp")
pktgen.set("0", "sport", {sport})
pktgen.set("0", "dport", {dport})
pktgen.set("0", "size", {size})
pktgen.set("0", "count", {count})
pktgen.set("0", "rate", {rate})
local t0 = os.time()
pktgen.start("0")
while os.time() - t0 < {timeout} do
    pktgen.delay(200)
    local st = pktgen.portStats("0", "port")[0]
    if st.opackets >= {count} then break end
end
pktgen.delay(500)
local st = pktgen.portStats("0", "port")[0]
print(string.format("labkit-sent %d %d %.3f", st.opackets, st.obytes, os.time() - t0))
pktgen.quit()
"""


@register
class PktgenDpdk(Generator):
    """Pktgen-DPDK, when its `pktgen` binary is on the PATH (not packaged by Debian; not
    present on the development machine, so this backend is exercised only where it exists)."""

    name = "pktgen-dpdk"
    description = "Pktgen-DPDK (only where a `pktgen` binary is on the PATH), Lua-scripted"

    @classmethod
    def available(cls):
        if shutil.which("pktgen"):
            return True, ""
        return False, "no `pktgen` (Pktgen-DPDK) on the PATH: build it from https://github.com/pktgen/Pktgen-DPDK"

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        _check_spec(spec, "pktgen-dpdk")
        port = dpdk.Port.pci(dpdk.check_pci_address(self.options["pci"])) if self.options.get("pci") \
            else dpdk.Port.af_packet(self.iface)
        eal = dpdk.EalOptions(lcores=str(self.options.get("lcores", "0,1")), memory_mb=int(self.options.get("memory_mb", 1024)))
        eal.validate([port])
        prefix = dpdk.file_prefix("pktg")
        rate = 100 if not spec.rate_pps else max(1, min(100, int(self.options.get("rate_percent", 100))))
        script = PKTGEN_LUA.format(dst_mac=spec.dst_mac, src_ip=spec.src_ip, dst_ip=spec.dst_ip, sport=spec.sport,
                                   dport=spec.dport, size=spec.size, count=spec.count, rate=rate,
                                   timeout=int(spec.timeout_s))
        with tempfile.NamedTemporaryFile("w", prefix="labkit-pktgen-", suffix=".lua", delete=False) as f:
            f.write(script)
            lua = f.name
        cores = eal.lcore_ids()
        argv = [shutil.which("pktgen"), *eal.args([port], prefix), "--", "-T", "-P",
                "-m", f"{cores[-1]}.0", "-f", lua]
        t0 = time.monotonic()
        try:
            with self.host.spawn(argv, name="pktgen") as proc:
                try:
                    proc.wait(spec.timeout_s + 30)
                except TimeoutError:
                    pass
                cpu = proc.cpu_seconds()
                out = proc.output()
        finally:
            os.unlink(lua)
            dpdk.remove_runtime_dir(prefix)
        m = re.findall(r"labkit-sent (\d+) (\d+) ([\d.]+)", out)
        if not m:
            raise RuntimeError(f"Pktgen-DPDK reported no count; its output:\n{out[-2000:]}")
        pk, by, secs = m[-1]
        notes = [] if not spec.rate_pps else [f"pktgen rate is a percentage of line rate: rate_pps={spec.rate_pps:g} "
                                               "was not applied exactly"]
        return Offered(self.name, int(pk), int(by), float(secs) or time.monotonic() - t0, cpu_seconds=cpu, notes=notes)
