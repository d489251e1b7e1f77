"""What really crossed an interface: tcpdump on it, in its host's namespace, writing a
temporary pcap file that is read back as frames (bytes, Ethernet first; parse them with
`labkit.packets.parse`).

    with Capture(lab.server, "srv-nat", "ip") as cap:
        ...send...
        cap.frames(want=10)           # what arrived so far, waiting up to 5 s for 10 frames
    cap.frames()                      # after the `with`: every frame captured

tcpdump starts before the constructor returns (it is listening when the traffic starts)
and is stopped on any exit of the `with`, exception, Ctrl-C and SIGTERM included;
closing twice is harmless, and the pcap file is removed. `capture()` is the same as a
context manager that yields the function returning the frames.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from labkit import packets
from labkit.errors import LabkitError
from labkit.testbed import hosts

#: pcap magic numbers: microsecond and nanosecond timestamps, either byte order
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
PCAP_HEADER, RECORD_HEADER = 24, 16
LINKTYPE_ETHERNET = 1


def read_pcap(path: str) -> list[bytes]:
    """The frames of a classic pcap file with Ethernet frames. A file still being written
    may end in part of a record: that record is left out. An empty file has no frames."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < PCAP_HEADER:
        return []
    endian = PCAP_MAGIC.get(data[:4])
    if endian is None:
        raise LabkitError(f"{path} is not a pcap file (magic {data[:4].hex()}): write it with tcpdump -w")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != LINKTYPE_ETHERNET:
        raise LabkitError(f"{path} holds link type {linktype}, not Ethernet (1): capture on an Ethernet interface")
    out, off = [], PCAP_HEADER
    while off + RECORD_HEADER <= len(data):
        caplen = struct.unpack(endian + "I", data[off + 8 : off + 12])[0]
        end = off + RECORD_HEADER + caplen
        if end > len(data):
            break
        out.append(data[off + RECORD_HEADER : end])
        off = end
    return out


class Capture:
    """tcpdump on IFNAME of HOST, writing a temporary pcap. BPF_FILTER is a tcpdump
    filter ('' keeps everything); INBOUND keeps only frames arriving on the interface;
    SNAPLEN keeps that many bytes of each frame (0: whole frames). The frames are read
    from the file while tcpdump runs (`frames(want)`) and once more when it stops
    (`close()`), which also sets `dropped`: the frames the kernel could not hand to it.

    Whole frames on an interface with offloads (a veth) make libpcap reserve 256 KiB
    per frame of its 32 MiB ring: a burst of more than about 128 frames faster than
    tcpdump writes them is partly dropped. For bursts, give the largest frame expected
    (2048 holds any frame of a 1500-byte MTU)."""

    def __init__(
        self,
        host: hosts.Host,
        ifname: str,
        bpf_filter: str = "",
        inbound: bool = False,
        snaplen: int = 0,
        start_timeout: float = 5.0,
    ):
        hosts.which("tcpdump", "tcpdump")
        self.host, self.ifname = host, ifname
        self._final: list[bytes] | None = None
        self.dropped: int | None = None  # by the kernel, as tcpdump reports when it stops
        fd, self.path = tempfile.mkstemp(prefix="labkit-capture-", suffix=".pcap")
        os.close(fd)
        argv = [
            "tcpdump",
            "-i",
            ifname,
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            str(snaplen),
            "-B",
            "32768",
            "-w",
            self.path,
        ]
        argv += ["-Q", "in"] if inbound else []
        argv += [bpf_filter] if bpf_filter else []
        self.proc = None
        try:
            self.proc = host.spawn(argv, name="tcpdump")
            self._wait_listening(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on" in self.proc.output():
                return
            if not self.proc.running:
                raise LabkitError(f"tcpdump on {self.ifname} of {self.host} ended at once: {self.proc.output()[-500:]}")
            time.sleep(0.02)
        raise LabkitError(
            f"tcpdump on {self.ifname} of {self.host} did not start listening within {timeout:.0f} s: "
            f"{self.proc.output()[-500:]}"
        )

    def frames(self, want: int | None = None, timeout: float = 5.0) -> list[bytes]:
        """The frames captured so far. While tcpdump runs and WANT is given, wait up to
        TIMEOUT seconds until at least WANT frames are in. After close(): all of them."""
        if self._final is not None:
            return list(self._final)
        deadline = time.monotonic() + timeout
        got = read_pcap(self.path)
        while want is not None and len(got) < want and time.monotonic() < deadline:
            time.sleep(0.05)
            got = read_pcap(self.path)
        return got

    @staticmethod
    def udp_from(frames: list[bytes], sender) -> list[bytes]:
        """Of FRAMES, the IPv4 UDP frames from SENDER (an interface, or an address) with a
        set source MAC: test traffic, not a stray neighbour or IPv6 frame."""
        address = getattr(sender, "address", sender)
        return [
            f
            for f in frames
            if (p := packets.parse(f)).proto == 17 and p.src_ip == address and p.src_mac != "00:00:00:00:00:00"
        ]

    def close(self, settle: float = 0.3) -> None:
        """Stop tcpdump (after SETTLE seconds for frames still in flight), keep its frames,
        remove the file. Harmless twice."""
        if self._final is not None:
            return
        frames: list[bytes] = []
        try:
            if self.proc is not None and self.proc.running:
                time.sleep(settle)
        finally:
            try:
                if self.proc is not None:
                    self.proc.close()
                    found = re.search(r"(\d+) packets? dropped by kernel", self.proc.output())
                    self.dropped = int(found.group(1)) if found else None
                    frames = read_pcap(self.path)
            finally:
                self._final = frames
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def capture(
    host: hosts.Host, ifname: str, bpf_filter: str = "ip", inbound: bool = False, snaplen: int = 0
) -> Iterator[Callable]:
    """`Capture` as a context manager yielding its `frames` function: call it after the
    `with` body has sent what it wanted seen (or inside it, for the frames so far)."""
    with Capture(host, ifname, bpf_filter, inbound, snaplen) as cap:
        yield cap.frames
