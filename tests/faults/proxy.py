"""A TCP proxy that can cut a supervisor off from its server without closing anything.

stall() stops relaying bytes in both directions and holds new connections unanswered,
as a pulled cable or a dropped route would: neither side sees the connection end,
every request just gets no reply. heal() relays again, buffered bytes included.
reset() ends every relayed connection with a TCP reset on both sides, as a proxy or
pooler restart, or a middlebox dropping its state, would.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Proxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        # On the server's own address when that is loopback (::1 stays IPv6), else on
        # 127.0.0.1: a server in another container has an address this one cannot bind.
        self.host = host if is_loopback(host) else "127.0.0.1"
        self.listener = socket.create_server((self.host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.stalled = False
        self.peers: dict[socket.socket, socket.socket] = {}
        self.held: list[socket.socket] = []
        self._closed = False
        self._reset = False
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def stall(self) -> None:
        self.stalled = True

    def heal(self) -> None:
        self.stalled = False

    def reset(self) -> None:
        """Reset every connection (RST, not FIN) on both sides; new ones are relayed."""
        self._reset = True
        while self._reset and not self._closed:
            time.sleep(0.01)

    def _reset_all(self) -> None:
        linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
        for sock in list(self.peers):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()
        self.peers.clear()
        self._reset = False

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        for sock in [self.listener, *self.peers, *self.held]:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        while not self._closed:
            if self._reset:
                self._reset_all()  # on this thread: it owns the sockets
            watched = [self.listener] if self.stalled else [self.listener, *self.peers]
            ready, _, _ = select.select(watched, [], [], 0.05)
            for sock in ready:
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    self.held.append(client)
                elif sock in self.peers and not self.stalled:
                    self._relay(sock)
            if not self.stalled:
                held, self.held = self.held, []
                for client in held:
                    self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()  # the server is down: refuse, as a direct connection would
            return
        server.settimeout(5)
        client.settimeout(5)
        self.peers[client], self.peers[server] = server, client

    def _relay(self, sock: socket.socket) -> None:
        other = self.peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, other):  # one side closed or failed: close the other too
            self.peers.pop(end, None)
            with contextlib.suppress(OSError):
                end.close()


class Proxies:
    """One Proxy per server of a multi-host address: one node's whole path, cut or
    reset together."""

    def __init__(self, upstream_ports: list[int], host: str = "127.0.0.1") -> None:
        self.members = [Proxy(port, host) for port in upstream_ports]

    @property
    def ports(self) -> list[int]:
        return [proxy.port for proxy in self.members]

    def stall(self) -> None:
        for proxy in self.members:
            proxy.stall()

    def heal(self) -> None:
        for proxy in self.members:
            proxy.heal()

    def reset(self) -> None:
        for proxy in self.members:
            proxy.reset()

    def close(self) -> None:
        for proxy in self.members:
            proxy.close()
