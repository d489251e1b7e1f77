"""DPDK's testpmd as a generator, over a virtual AF_PACKET port on the sending interface
(no hugepages, no PCI), an AF_XDP port (backend "testpmd_afxdp"), or a real DPDK port (`pci=`).

    gen = traffic.generator("testpmd_afxdp", topo.iface("snd"))   # net_af_xdp on snd0
    gen.send(spec).notes     # says copy or zero-copy, as the interface offered it

Backend "testpmd_afxdp": testpmd's port is `net_af_xdp` on the sending interface. Its
mbufs are the AF_XDP socket's memory, so a frame testpmd builds is handed to the kernel
without a copy by DPDK; on a veth (copy mode) the kernel then builds an skb per frame, on
a NIC with XSK zero-copy the NIC reads the frame where testpmd wrote it. Options besides
`mode`, `lcores`, `memory_mb`, `hugepages`: the net_af_xdp arguments (`busy_budget`,
`force_copy`, ... see labkit.dpdk.afxdp), checked before anything runs. The driver
attaches an XDP program to the sending interface while testpmd runs (so the interface
must have none) and removes it when testpmd quits; if testpmd had to be killed, labkit
takes it off. What is reported as sent is the interface's own transmit count, not what
testpmd queued: on a veth with `--no-huge` memory, the kernel refused about half of the
frames testpmd queued, counting them as invalid transmit descriptors of the socket
(`XDP_STATISTICS` tx_invalid_descs, see labkit.dpdk.sockets); a note gives both counts.

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
import time
from contextlib import suppress

from labkit import capabilities, dpdk
from labkit.dpdk.afxdp import remove_pmd_programs, xdp_program_id
from labkit.dpdk.runtime import locked_memory_hint
from labkit.errors import InputError
from labkit.traffic import Generator, Offered, TrafficSpec, register, tool_file

BINARIES = ("dpdk-testpmd", "testpmd")
MAX_BURST = 512
MODES = ("txonly", "flowgen")
#: the options every testpmd backend takes (keywords of `traffic.generator(name, iface, ...)`)
OPTIONS = ("mode", "lcores", "memory_mb", "hugepages")


def testpmd_binary() -> str | None:
    """The path of the first of BINARIES on the PATH, None where none is."""
    return next(filter(None, map(shutil.which, BINARIES)), None)


def _check_spec(spec: TrafficSpec, backend: str) -> None:
    if spec.proto != "udp" or ipaddress.ip_address(spec.src_ip).version != 4:
        raise InputError(
            f"the {backend} backend sends IPv4/UDP only: use proto='udp' with IPv4 addresses, or another generator"
        )


@register
class Testpmd(Generator):
    name = "testpmd"
    description = "DPDK testpmd txonly (exact count) or flowgen (net_af_packet vdev by default)"

    @classmethod
    def available(cls):
        if not testpmd_binary():
            return False, "dpdk-testpmd is not installed (Debian package dpdk): run `sudo make setup`"
        p = capabilities.probe("dpdk_vdev")
        return (True, "") if p.ok else (False, p.message())

    #: options of this backend beyond OPTIONS
    extra_options = ("pci", "af_xdp")

    def __init__(self, iface, **options):
        super().__init__(iface, **options)
        unknown = sorted(set(options) - set(OPTIONS) - set(self.extra_options))
        if unknown:
            raise InputError(
                f"the {self.name} generator has no option(s) {unknown}: it takes "
                f"{', '.join(OPTIONS + self.extra_options)}"
            )
        mode = options.get("mode", "txonly")
        if mode not in MODES:
            raise InputError(f"testpmd mode {mode!r}: choose one of {MODES}")
        self.mode = mode
        self.port = self._port(iface, options)
        default_lcores = "0,1" if (os.cpu_count() or 1) > 1 else "0"
        self.eal = dpdk.EalOptions(
            lcores=str(options.get("lcores", default_lcores)),
            memory_mb=int(options.get("memory_mb", 1024)),
            hugepages=options.get("hugepages"),
            log_level="lib.eal:error",
        )
        self.eal.validate([self.port])
        if len(self.eal.lcore_ids()) < 2 and (os.cpu_count() or 1) > 1:
            raise InputError("testpmd needs two lcores (one runs its command line, one forwards): e.g. lcores='0,1'")
        self.last_output = ""

    def _port(self, iface, options) -> "dpdk.Port":
        if options.get("pci"):
            return dpdk.Port.pci(dpdk.check_pci_address(options["pci"]))
        return dpdk.Port.af_xdp(iface) if options.get("af_xdp") else dpdk.Port.af_packet(iface)

    def send(self, spec: TrafficSpec) -> Offered:
        spec.validate()
        _check_spec(spec, "testpmd")
        notes = []
        if spec.rate_pps:
            notes.append(f"testpmd has no software rate limit: rate_pps={spec.rate_pps:g} was not applied")
        if spec.flows > 1 and self.mode == "txonly":
            notes.append(
                "txonly-multi-flow varies the UDP source port per packet as testpmd does it, not exactly "
                f"{spec.flows} flows"
            )
        prefix = dpdk.file_prefix("tpmd")
        with _AfXdpPortGuard(self.iface, self.port, notes) as guard:
            try:
                if self.mode == "txonly":
                    packets, nbytes, seconds, cpu = self._txonly(spec, prefix, notes)
                else:
                    packets, nbytes, seconds, cpu = self._flowgen(spec, prefix, notes)
            finally:
                dpdk.remove_runtime_dir(prefix)
        if guard.transmitted is not None and guard.transmitted < packets:
            # what reached the wire, not what testpmd queued: copy-mode transmit can drop in the kernel
            notes.append(
                f"testpmd queued {packets} frames on its AF_XDP socket; the kernel transmitted "
                f"{guard.transmitted} on {self.iface.name}: the kernel refused the rest in the socket's "
                "transmit, they were never sent"
            )
            packets, nbytes = guard.transmitted, guard.transmitted * spec.size
        return Offered(self.name, packets, nbytes, seconds, cpu_seconds=cpu, notes=notes)

    def _common(self, spec: TrafficSpec) -> list[str]:
        return [
            "--total-num-mbufs=16384",
            f"--txpkts={spec.size}",
            f"--tx-ip={spec.src_ip},{spec.dst_ip}",
            f"--tx-udp={spec.sport},{spec.dport}",
            f"--eth-peer=0,{spec.dst_mac}",
        ] + (["--txonly-multi-flow"] if spec.flows > 1 else [])

    def _txonly(self, spec: TrafficSpec, prefix: str, notes: list):
        full, rest = divmod(spec.count, MAX_BURST)
        cmds = ["set fwd io retry", "show port stats 0"]
        if full:
            cmds += [f"set burst {MAX_BURST}", f"start tx_first {full}", "stop"]
        if rest:
            cmds += [f"set burst {rest}", "start tx_first 1", "stop"]
        cmds += ["show port stats 0", "quit"]
        with tool_file("\n".join(cmds) + "\n", "testpmd", ".cmd") as cmdfile:
            argv = [
                testpmd_binary(),
                *self.eal.args([self.port], prefix),
                "--",
                "-i",
                f"--cmdline-file={cmdfile}",
                f"--burst={MAX_BURST}",
                *self._common(spec),
            ]
            t0 = time.monotonic()
            with self.host.spawn(argv, name="dpdk-testpmd") as proc:
                try:
                    proc.wait(spec.timeout_s + 30)  # + EAL start-up
                except TimeoutError:
                    notes.append(f"testpmd did not finish within {spec.timeout_s:.0f} s and was stopped")
                cpu = proc.cpu_seconds()
                out = proc.output()
        wall = time.monotonic() - t0
        self.last_output = out
        stats = port_stats(out)
        if not stats:
            raise RuntimeError(
                f"testpmd printed no port statistics; its output:\n{out[-2000:]}" + locked_memory_hint(out)
            )
        last = stats[-1]
        packets, nbytes = last["TX-packets"], last["TX-bytes"]
        if last.get("TX-errors"):
            notes.append(f"testpmd counted {last['TX-errors']} TX errors")
        if last.get("RX-packets"):
            notes.append(
                f"{last['RX-packets']} packets arrived at the sending port while sending "
                "(io forwarding sent them back out and they are in the count)"
            )
        pps = last.get("Tx-pps", 0)
        seconds = packets / pps if pps else wall
        if packets < spec.count:
            notes.append(f"testpmd sent {packets} of {spec.count} packets asked")
        return packets, nbytes, seconds, cpu

    def _flowgen(self, spec: TrafficSpec, prefix: str, notes: list):
        argv = [
            testpmd_binary(),
            *self.eal.args([self.port], prefix),
            "--",
            "--forward-mode=flowgen",
            f"--flowgen-flows={max(1, spec.flows)}",
            "--stats-period=1",
            "--auto-start",
            *self._common(spec),
        ]
        notes.append(
            "flowgen: count reached by polling testpmd's 1 s statistics, so it overshoots; the true "
            "number sent is reported. flowgen picks its own IP addresses per flow"
        )
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
        forwarded = [int(x) for x in re.findall(r"TX-packets:\s*(\d+)\s+TX-dropped", out)]
        sent = max([s["TX-packets"] for s in port_stats(out)] + forwarded, default=0)
        if not sent:
            notes.append(f"testpmd sent nothing; its output:\n{out[-1500:]}")
        return sent, sent * spec.size, elapsed, cpu


@register
class TestpmdAfXdp(Testpmd):
    """testpmd over a net_af_xdp port on the sending interface (see the module docstring)."""

    name = "testpmd_afxdp"
    description = "DPDK testpmd txonly over a net_af_xdp port (AF_XDP socket; copy mode on veth)"
    extra_options = tuple(dpdk.AF_XDP_DEVARGS)

    @classmethod
    def available(cls):
        ok, why = Testpmd.available()
        if not ok:
            return ok, why
        ok, why = af_xdp_sockets()
        if not ok:
            return False, f"{why}: use 'testpmd' (net_af_packet)"
        return True, ""

    def _port(self, iface, options) -> "dpdk.Port":
        return dpdk.Port.af_xdp(iface, **{k: v for k, v in options.items() if k in dpdk.AF_XDP_DEVARGS})


def af_xdp_sockets() -> tuple[bool, str]:
    """Whether this process may make AF_XDP sockets, and a sentence saying so (the `af_xdp`
    probe of labkit.capabilities: one is opened and closed; `labkit doctor` asks it too)."""
    p = capabilities.probe("af_xdp")
    return (True, "the kernel makes AF_XDP sockets") if p.ok else (False, p.message())


class _AfXdpPortGuard:
    """Around one testpmd run over a net_af_xdp port: the interface must have no XDP program
    before (InputError); the mode (copy or zero-copy) goes into NOTES; `transmitted` is the
    interface's own count of frames sent meanwhile; an XDP program the driver left (testpmd
    killed) is taken off afterwards. Nothing for other port kinds."""

    def __init__(self, iface, port, notes: list):
        self.iface, self.host, self.port, self.notes = iface, iface.host, port, notes
        self.transmitted, self._tx0 = None, None

    def __enter__(self):
        if self.port.kind == "af_xdp":
            self._tx0 = self.iface.stats()["tx_packets"]
            prog = xdp_program_id(self.host, self.port.name)
            if prog is not None:
                raise InputError(
                    f"{self.port.name} already has an XDP program (id {prog}): testpmd's net_af_xdp port "
                    "attaches its own; detach it, or use the 'testpmd' (net_af_packet) generator"
                )
            mode = dpdk.socket_mode(self.host, self.port.name, dict(self.port.devargs))
            self.notes.append(f"net_af_xdp port on {self.port.name} in {mode} mode")
        return self

    def __exit__(self, *exc):
        if self.port.kind == "af_xdp":
            with suppress(Exception):  # the interface is gone: nothing to count
                self.transmitted = self.iface.stats()["tx_packets"] - self._tx0
            prog = xdp_program_id(self.host, self.port.name)
            if prog is not None and remove_pmd_programs(self.host, {self.port.name: prog}):
                self.notes.append(f"testpmd left its XDP program on {self.port.name}: labkit removed it")


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
        port = (
            dpdk.Port.pci(dpdk.check_pci_address(self.options["pci"]))
            if self.options.get("pci")
            else dpdk.Port.af_packet(self.iface)
        )
        eal = dpdk.EalOptions(
            lcores=str(self.options.get("lcores", "0,1")), memory_mb=int(self.options.get("memory_mb", 1024))
        )
        eal.validate([port])
        prefix = dpdk.file_prefix("pktg")
        rate = 100 if not spec.rate_pps else max(1, min(100, int(self.options.get("rate_percent", 100))))
        script = PKTGEN_LUA.format(**spec.as_dict(), rate=rate, timeout=int(spec.timeout_s))
        cores = eal.lcore_ids()
        t0 = time.monotonic()
        try:
            with tool_file(script, "pktgen", ".lua") as lua:
                argv = [shutil.which("pktgen"), *eal.args([port], prefix), "--", "-T", "-P", "-m", f"{cores[-1]}.0"]
                with self.host.spawn([*argv, "-f", lua], name="pktgen") as proc:
                    with suppress(TimeoutError):
                        proc.wait(spec.timeout_s + 30)
                    cpu = proc.cpu_seconds()
                    out = proc.output()
        finally:
            dpdk.remove_runtime_dir(prefix)
        m = re.findall(r"labkit-sent (\d+) (\d+) ([\d.]+)", out)
        if not m:
            raise RuntimeError(f"Pktgen-DPDK reported no count; its output:\n{out[-2000:]}")
        pk, by, secs = m[-1]
        notes = (
            []
            if not spec.rate_pps
            else [f"pktgen rate is a percentage of line rate: rate_pps={spec.rate_pps:g} was not applied exactly"]
        )
        return Offered(self.name, int(pk), int(by), float(secs) or time.monotonic() - t0, cpu_seconds=cpu, notes=notes)
