"""Traffic the NAT's correctness checks exchange through a NatLab, one function each:
what the ends saw is returned, nothing is asserted (checks.py decides)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from contextlib import contextmanager

from labkit.experiments.nat.testbed import NAT_OUTSIDE, SERVER, NatLab
from labkit.testbed import hosts, topology


def _udp_socket(host: hosts.Host, port: int) -> socket.socket:
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(3.0)
    return s


def _tcp_listener(host: hosts.Host, port: int, backlog: int, timeout: float) -> socket.socket:
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(backlog)
    s.settimeout(timeout)
    return s


def udp_exchange(lab: NatLab, sport: int = 40000, dport: int = 7777) -> dict:
    """Every client sends one datagram from the same source port; the server echoes each
    to whoever it saw. Returns what the server saw and what each client got back."""
    seen, got = {}, {}
    srv = _udp_socket(lab.server, dport)
    socks = {}
    try:
        for i in range(1, lab.clients + 1):
            socks[i] = _udp_socket(lab.client(i), sport)
        for i, s in socks.items():
            s.sendto(f"hello from c{i}".encode(), (SERVER, dport))
            try:
                data, peer = srv.recvfrom(2048)
            except socket.timeout:  # never arrived (or the server's kernel refused it)
                continue
            seen[data.decode()] = peer
            srv.sendto(b"echo: " + data, peer)
        for i, s in socks.items():
            try:
                got[i] = s.recvfrom(2048)[0].decode()
            except socket.timeout:
                got[i] = None
    finally:
        srv.close()
        for s in socks.values():
            s.close()
    return {"seen": seen, "got": got}


def tcp_transfer(lab: NatLab, i: int, nbytes: int = 512 * 1024, port: int = 7778) -> dict:
    """Client i sends NBYTES over TCP to the server; the server hashes what arrives."""
    ls = _tcp_listener(lab.server, port, backlog=1, timeout=5.0)
    payload = os.urandom(nbytes)
    result = {}

    def serve():
        try:
            conn, peer = ls.accept()
            conn.settimeout(10.0)
            h, n = hashlib.sha256(), 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            conn.close()
            result.update(peer=peer, sha256=h.hexdigest(), bytes=n)
        except OSError as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with lab.client(i).entered():
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(10.0)
        try:
            c.connect((SERVER, port))
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
        except OSError as exc:
            result["error"] = f"client: {exc}"
        finally:
            c.close()
        t.join(15)
    finally:
        ls.close()
    result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    return result


def udp_fragmented(lab: NatLab, size: int = 4000, sport: int = 40003, dport: int = 7780) -> dict:
    """c1 sends one UDP datagram of SIZE bytes (beyond the 1500-byte MTU: it leaves in
    fragments), the server echoes it; what each side got, and from whom."""
    payload = os.urandom(size)
    out = {"sent": len(payload)}
    with _udp_socket(lab.server, dport) as srv, _udp_socket(lab.client(1), sport) as c:
        c.sendto(payload, (SERVER, dport))
        try:
            data, peer = srv.recvfrom(65535)
            out.update(server_got=len(data), server_intact=data == payload, server_saw=peer)
            srv.sendto(data, peer)
            back, _ = c.recvfrom(65535)
            out.update(client_got=len(back), client_intact=back == payload)
        except socket.timeout:
            pass
    return out


def tcp_many(lab: NatLab, per_client: int = 250, first_port: int = 12000, port: int = 7781) -> dict:
    """PER_CLIENT TCP connections from every client at once, each client using the same
    source ports FIRST_PORT.. as the others (below the kernel's ephemeral range, which
    the other checks' connections draw from); each sends its client and port. What the
    server saw: connections, their sources, and whether every message came intact."""
    ls = _tcp_listener(lab.server, port, backlog=4096, timeout=10.0)
    want = per_client * lab.clients
    got: list[tuple] = []

    def serve():
        try:
            while len(got) < want:
                conn, peer = ls.accept()
                conn.settimeout(10.0)
                data = b""
                while True:
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    data += chunk
                conn.close()
                got.append((peer, data.decode(errors="replace")))
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    socks = []
    try:
        for i in range(1, lab.clients + 1):
            for k in range(per_client):
                with lab.client(i).entered():
                    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                c.bind(("0.0.0.0", first_port + k))
                c.settimeout(10.0)
                socks.append((i, first_port + k, c))
        for i, sport, c in socks:
            c.connect((SERVER, port))
        for i, sport, c in socks:
            c.sendall(f"c{i}:{sport}".encode())
            c.shutdown(socket.SHUT_WR)
        t.join(30)
    except OSError as exc:
        return {"error": str(exc), "got": len(got), "want": want}
    finally:
        for _, _, c in socks:
            c.close()
        ls.close()
    sent = {f"c{i}:{sport}" for i, sport, _ in socks}
    return {
        "want": want,
        "got": len(got),
        "sources": {p[0] for p, _ in got},
        "outside_ports": len({p[1] for p, _ in got}),
        "intact": {m for _, m in got} == sent,
    }


BEYOND = "203.0.113.7"  # an address one router past the server (for time exceeded)


def udp_port_unreachable(lab: NatLab, sport: int = 40002, dport: int = 9999) -> dict:
    """Every client sends from the same source port to a closed port of the server on a
    connected UDP socket; the server's port unreachable must come back, through the NAT,
    to that client (Linux reports it as ECONNREFUSED). {client: 'refused' | what happened}."""
    got = {}
    socks = {}
    try:
        for i in range(1, lab.clients + 1):
            socks[i] = _udp_socket(lab.client(i), sport)
            socks[i].settimeout(2.0)
            socks[i].connect((SERVER, dport))
        for i, s in socks.items():
            got[i] = _answer(s)
    finally:
        for s in socks.values():
            s.close()
    return got


@contextmanager
def router_beyond_server(lab: NatLab):
    """The server as a router towards BEYOND's network (the NAT routes it to the server),
    so that a packet whose TTL ends there draws a time exceeded from beyond the NAT."""
    srv, nat_host = lab.server, lab.topo.host("nat")
    srv.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], timeout=10)
    try:
        with topology.route(nat_host, "203.0.113.0/24", SERVER), topology.route(srv, "203.0.113.0/24", NAT_OUTSIDE):
            yield
    finally:
        srv.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"], check=False, timeout=10)


def udp_port_unreachable_from_inside(lab: NatLab, sport: int = 40004, dport: int = 7782) -> str:
    """c1 sends the server a datagram and closes its socket; the server answers on a
    connected socket. c1's kernel answers port unreachable, which must reach the server
    translated (about the SNAT address and port the server knows): 'refused', or what
    happened instead."""
    with _udp_socket(lab.server, dport) as srv, _udp_socket(lab.client(1), sport) as c:
        c.sendto(b"hello, then gone", (SERVER, dport))
        try:
            _, peer = srv.recvfrom(2048)
        except socket.timeout:
            return "the first datagram never arrived"
        c.close()
        srv.connect(peer)
        srv.send(b"are you still there?")
        try:
            srv.recv(2048)
            return "an answer"
        except ConnectionRefusedError:
            return "refused"
        except socket.timeout:
            return "nothing within 3 s"


def udp_refused(host: hosts.Host, sport: int, dport: int) -> str:
    """One datagram from HOST to a closed port of the server on a connected socket:
    'refused' when the port unreachable came back and the kernel matched it to the socket
    (which it does only when the error's embedded header is the packet as HOST sent it)."""
    with _udp_socket(host, sport) as s:
        s.settimeout(2.0)
        s.connect((SERVER, dport))
        return _answer(s)


def _answer(s: socket.socket) -> str:
    """A datagram on the connected socket S (2 s timeout) and what came back: 'refused' when the
    port unreachable did and the kernel matched it to S, 'an answer', or nothing."""
    try:
        s.send(b"anyone there?")
        s.recv(2048)
        return "an answer"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "nothing within 2 s"
