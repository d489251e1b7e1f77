"""What really arrived on an interface: an AF_PACKET socket in its namespace. Used by the
forwarding tests through the `capture` fixture (tests/conftest.py)."""
from __future__ import annotations

import socket
import time


class Capture:
    """An AF_PACKET socket on an interface: the frames that really arrived there."""

    def __init__(self, iface):
        with iface.host.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: hold every frame
            self.sock.bind((iface.name, 0))
        self.sock.settimeout(0.5)

    def frames(self, want: int, timeout: float = 5.0) -> list[bytes]:
        """Up to WANT incoming frames, waiting at most TIMEOUT seconds for them."""
        out, deadline = [], time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                out.append(data)
        return out

    @staticmethod
    def udp_from(frames: list[bytes], sender) -> list[bytes]:
        """Of FRAMES, the IPv4 UDP frames with SENDER's address as source and a set source
        MAC: the test traffic, not a stray neighbour or IPv6 frame."""
        return [f for f in frames if f[6:12] != b"\0" * 6 and f[12:14] == b"\x08\x00" and f[23] == 17
                and f[26:30] == socket.inet_aton(sender.address)]

    def close(self):
        self.sock.close()
