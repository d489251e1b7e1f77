"""A UDP socket inside a host's namespace that counts the datagrams it receives."""

import socket
import time


class UdpSink:
    def __init__(self, host, port: int = 9, addr: str = "0.0.0.0"):
        with host.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((addr, port))
        self.sock.setblocking(False)
        self.count = 0

    def drain(self, quiet_s: float = 0.3) -> int:
        """Read until nothing arrives for QUIET_S; the running total."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            try:
                while True:
                    self.sock.recv(4096)
                    self.count += 1
                    last = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        return self.count

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
