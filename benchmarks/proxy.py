"""A TCP proxy in front of a server that counts the requests its clients send.

One request is one round trip a client asks for: a Redis command (a Lua script counts
once, whatever it calls inside), a PostgreSQL simple query or extended-protocol Sync,
an HTTP request (a Consul blocking query counts once, when it is sent). The proxies
run on one asyncio loop in a background thread.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Protocol


class Parser(Protocol):
    def feed(self, data: bytes) -> list[str]:
        """Consume client bytes; return a label for each request completed."""


class OneByOne:
    """A parser whose every complete message is one request: `_one` consumes it from
    the buffer and labels it, or returns None until a whole one is there."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        out = []
        while (label := self._one()) is not None:
            out.append(label)
        return out

    def _one(self) -> str | None:
        raise NotImplementedError


class RespParser(OneByOne):
    """Redis protocol: a command is an array of bulk strings (or an inline line)."""

    def _one(self) -> str | None:
        buf = self.buf
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[:1] != b"*":  # an inline command
            words = bytes(buf[:end]).split()
            del buf[: end + 2]
            return words[0].decode(errors="replace").lower() if words else self._one()
        pos, name = end + 2, ""
        for i in range(int(buf[1:end])):
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            start = line_end + 2
            stop = start + int(buf[pos + 1 : line_end])
            if stop + 2 > len(buf):
                return None
            if i == 0:
                name = bytes(buf[start:stop]).decode(errors="replace").lower()
            pos = stop + 2
        del buf[:pos]
        return name


def _sql_label(text: bytes) -> str:
    return " ".join(text.decode(errors="replace").split())[:60]


class PgParser:
    """PostgreSQL frontend protocol: count 'Q' (simple query) and 'S' (Sync, the end
    of an extended-protocol round trip), labelled with the statement's text."""

    STARTUP = 3 << 16  # protocol 3.0; SSLRequest and GSSENCRequest come before it

    def __init__(self) -> None:
        self.buf = bytearray()
        self.started = False
        self.statements: dict[bytes, str] = {}
        self.current = ""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        out: list[str] = []
        buf = self.buf
        while True:
            if not self.started:
                if len(buf) < 8 or len(buf) < int.from_bytes(buf[:4], "big"):
                    return out
                length, code = int.from_bytes(buf[:4], "big"), int.from_bytes(buf[4:8], "big")
                del buf[:length]
                self.started = code >> 16 == 3
                continue
            if len(buf) < 5:
                return out
            kind, length = buf[:1], int.from_bytes(buf[1:5], "big")
            if len(buf) < 1 + length:
                return out
            body = bytes(buf[5 : 1 + length])
            del buf[: 1 + length]
            if kind == b"Q":
                out.append(_sql_label(body.split(b"\0")[0]))
            elif kind == b"P":
                name, query = body.split(b"\0")[:2]
                self.current = self.statements[name] = _sql_label(query)
            elif kind == b"B":
                self.current = self.statements.get(body.split(b"\0")[1], self.current)
            elif kind == b"S":
                out.append(self.current or "extended query")


UUID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHECK = re.compile(r"^(/v1/agent/check/[a-z]+)/.+$")  # a check's id


class HttpParser(OneByOne):
    """HTTP/1.1 requests, labelled "METHOD /path"; the key in a KV path is dropped
    and a blocking query (index=...) is marked."""

    def _one(self) -> str | None:
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        pos = head_end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                pos = line_end + 2 + size + 2
                if pos > len(buf):
                    return None
                if size == 0:
                    break
        else:
            pos += int(headers.get("content-length", "0"))
            if pos > len(buf):
                return None
        del buf[:pos]
        method, target = ([*lines[0].split(), "", ""])[:2]
        path, _, query = target.partition("?")
        path = UUID.sub("", path)
        if path.startswith("/v1/kv/"):
            path = "/v1/kv/KEY"
        path = CHECK.sub(r"\1/ID", path)
        blocking = " (blocking)" if re.search(r"(^|&)index=", query) else ""
        return f"{method} {path}{blocking}"


PARSERS: dict[str, Callable[[], Parser]] = {
    "redis": RespParser,
    "postgres": PgParser,
    "consul": HttpParser,
}


class CountingProxy:
    """Listens on a free port of 127.0.0.1 and forwards to target_port."""

    def __init__(self, hub: ProxyHub, target_port: int, protocol: str) -> None:
        self.hub, self.target_port = hub, target_port
        self.make_parser = PARSERS[protocol]
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        parser = self.make_parser()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count and (labels := parser.feed(data)):
                        with self._lock:
                            self._counts.update(labels)
                    dst.write(data)
                    await dst.drain()
            except (OSError, ValueError):
                pass
            finally:
                writer.close()
                up_writer.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


class ProxyHub:
    """Owns the event loop thread that all proxies run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxies", daemon=True)
        self.thread.start()
        self.proxies: list[CountingProxy] = []

    def add(self, target_port: int, protocol: str) -> CountingProxy:
        proxy = CountingProxy(self, target_port, protocol)
        asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(timeout=10)
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        async def shutdown() -> None:
            for proxy in self.proxies:
                if proxy.server is not None:
                    proxy.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
