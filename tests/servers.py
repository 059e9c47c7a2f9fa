"""Real servers for the tests, on free ports in temporary directories.

Addresses in the environment (COORDINATOR_TEST_REDIS_URL, COORDINATOR_TEST_POSTGRES_URL)
are used instead of starting servers, so the same suite runs against compose
services. With CI=true a missing server program fails the run; elsewhere the tests
that need it are skipped with a reason naming what is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    message = f"{what} is not installed (the test command installs it: ./scripts/test)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class ServerProcess:
    """A server the tests started; subclasses say how to start it and where it is."""

    #: How stop() asks the server to go; SIGKILL is a crash.
    stop_signal: int = signal.SIGKILL
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, signum: int | None = None) -> None:
        if self.process is not None:
            self.process.send_signal(self.stop_signal if signum is None else signum)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good, at the end of the tests."""
        self.stop()


class RedisServer(ServerProcess):
    """A redis-server without persistence, so a restart loses every key."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.binary = str(binary)
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        wait_for_port(self.port)

    def uptime(self) -> float:
        return time.monotonic() - self.started_at


def postgres_bin(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{program}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(versions[-1]) if versions else None


class PostgresServer(ServerProcess):
    """A throwaway PostgreSQL cluster. It refuses to run as root, so as root it runs
    as the `postgres` user, in a directory that user owns."""

    USER, PASSWORD, DATABASE = "app", "app-pass-1", "app"
    # SIGINT: fast shutdown. restart() uses SIGQUIT: immediate shutdown, like a crash.
    stop_signal = signal.SIGINT

    def __init__(self) -> None:
        initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
        if initdb is None or postgres is None:
            missing("PostgreSQL (initdb, postgres)")
        assert initdb is not None and postgres is not None
        self.postgres = postgres
        self.directory = Path(tempfile.mkdtemp(prefix="coordinator-pg-"))
        self.data = self.directory / "data"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = "postgres"
            shutil.chown(self.directory, "postgres", "postgres")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as_owner(
            [
                initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        self.start()
        self.sql(
            f"CREATE ROLE {self.USER} LOGIN PASSWORD '{self.PASSWORD}';"
            f"CREATE DATABASE {self.DATABASE} OWNER {self.USER};"
        )

    def _as_owner(self, args: list[str]) -> None:
        subprocess.run(
            args,
            check=True,
            user=self.run_as,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
        )

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{self.DATABASE}"

    def sql(self, statements: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run as the superuser, in `database`."""
        import psycopg

        with psycopg.connect(
            host=str(self.directory),
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
        ) as conn:
            rows: list[tuple[object, ...]] = []
            for statement in filter(str.strip, statements.split(";")):
                cursor = conn.execute(statement)  # type: ignore[call-overload]
                if cursor.description:
                    rows = cursor.fetchall()
            return rows

    def uptime(self) -> float:
        [(seconds,)] = self.sql("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")
        return float(seconds)  # type: ignore[arg-type]

    def settings(self) -> list[str]:
        """More `-c name=value` arguments (subclasses: TLS, replication)."""
        return []

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.postgres,
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.directory}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                *self.settings(),
            ],
            user=self.run_as,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for_port(self.port, timeout=30)
        self._wait_ready(timeout=30)

    def _wait_ready(self, timeout: float) -> None:
        """The port opens before recovery ends ("the database system is starting up")."""
        import psycopg

        end = time.monotonic() + timeout
        while True:
            try:
                self.sql("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def restart(self, immediate: bool = True) -> None:
        self.stop(signal.SIGQUIT if immediate else signal.SIGINT)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def consul_binary() -> str | None:
    """`consul` on PATH, else the one scripts/build-consul builds and caches."""
    found = shutil.which("consul")
    if found:
        return found
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-consul"
    result = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True)
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return path if result.returncode == 0 and os.access(path, os.X_OK) else None


class ConsulServer(ServerProcess):
    """`consul agent -dev` on free ports. A dev agent keeps its data in memory, so a
    restart loses every key and session."""

    def __init__(
        self, directory: Path, acl_token: str | None = None, port: int | None = None
    ) -> None:
        binary = consul_binary()
        if binary is None:
            missing("consul (built by scripts/build-consul from its Go module)")
        assert binary is not None
        self.binary, self.directory, self.acl_token = binary, directory, acl_token
        self.port = port or free_port()
        self.ports = {name: free_port() for name in ("serf_lan", "serf_wan", "server")}
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        hcl = (
            f"ports {{ http = {self.port} dns = -1 grpc = -1 grpc_tls = -1 "
            f"serf_lan = {self.ports['serf_lan']} serf_wan = {self.ports['serf_wan']} "
            f"server = {self.ports['server']} }}"
        )
        if self.acl_token:
            hcl += (
                ' acl { enabled = true default_policy = "deny" '
                f'tokens {{ initial_management = "{self.acl_token}" }} }}'
            )
        self.process = subprocess.Popen(
            [
                self.binary,
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
                "-hcl",
                hcl,
                "-log-level",
                "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for_port(self.port, timeout=30)
        self.wait_for_leader()

    def wait_for_leader(self, timeout: float = 30.0) -> None:
        import urllib.request

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{self.url}/v1/status/leader", timeout=1) as r:
                    if r.read().strip(b'"\n'):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("consul elected no leader")


S = TypeVar("S", PostgresServer, RedisServer)


def settled(server: S, age: float = 4.0) -> S:
    """`server` once it is `age` seconds old, older than the ttl in use: on a younger
    one every acquisition waits the safety delay (a restart may have lost a lock)."""
    try:
        time.sleep(max(0.0, age - server.uptime()))
    except BaseException:
        server.close()
        raise
    return server


@dataclass(frozen=True)
class TlsFiles:
    """Certificates for a TLS-only server (also presented as its client certificate
    when it connects to another server: Sentinel, replication)."""

    ca: Path
    cert: Path
    key: Path

    def server_lines(self) -> list[str]:
        return [
            "port 0",
            f"tls-cert-file {self.cert}",
            f"tls-key-file {self.key}",
            f"tls-ca-cert-file {self.ca}",
            "tls-replication yes",
            "tls-auth-clients yes",
        ]

    def client(self) -> dict[str, object]:
        """redis-py's options to reach such a server."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.cert),
            "ssl_keyfile": str(self.key),
        }

    def query(self) -> str:
        return f"ssl_ca_certs={self.ca}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"


@dataclass(frozen=True)
class Passwords:
    """requirepass of the data nodes (and masterauth), and of the sentinels."""

    data: str
    sentinel: str


def redis_client(port: int, tls: TlsFiles | None, password: str | None = None) -> Any:
    import redis

    return redis.Redis(
        port=port, socket_timeout=2, password=password, **(tls.client() if tls else {})
    )


class ConfiguredRedis(RedisServer):
    """A redis-server started from a config file of its own, without persistence:
    Sentinel rewrites the file on a failover (replicaof), so a restart keeps the role
    Sentinel gave it, as a managed server would."""

    def __init__(
        self,
        directory: Path,
        replica_of: int | None = None,
        tls: TlsFiles | None = None,
        password: str | None = None,
        sync_delay: int | None = None,
    ) -> None:
        """`sync_delay`: repl-diskless-sync-delay, seconds a full sync waits for more
        replicas (Redis's default: 5)."""
        self.replica_of, self.tls, self.data_password = replica_of, tls, password
        self.sync_delay = sync_delay
        self.conf: Path | None = None
        super().__init__(directory)

    def start(self) -> None:
        if self.conf is None:
            home = self.directory / f"redis-{self.port}"
            home.mkdir(parents=True, exist_ok=True)
            self.conf = home / "redis.conf"
            lines = [
                f"tls-port {self.port}" if self.tls else f"port {self.port}",
                "bind 127.0.0.1",
                'save ""',
                "appendonly no",
                f"dir {home}",
                *(self.tls.server_lines() if self.tls else []),
            ]
            if self.sync_delay is not None:
                lines.append(f"repl-diskless-sync-delay {self.sync_delay}")
            if self.data_password:
                lines += [f"requirepass {self.data_password}", f"masterauth {self.data_password}"]
            if self.replica_of is not None:
                lines.append(f"replicaof 127.0.0.1 {self.replica_of}")
            self.conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [self.binary, str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.started_at = time.monotonic()
        wait_for_port(self.port)

    def role(self) -> str:
        with redis_client(self.port, self.tls, self.data_password) as client:
            return str(client.info("replication")["role"])


class SentinelServer(ServerProcess):
    """One redis-server --sentinel watching `primary` under the name `service`."""

    def __init__(
        self,
        directory: Path,
        primary: int,
        service: str,
        down_after_ms: int = 1000,
        tls: TlsFiles | None = None,
        passwords: Passwords | None = None,
        known: tuple[list[tuple[int, str]], list[int]] = ([], []),
    ) -> None:
        """`known`: (port, id) of the sentinel itself and its peers, and the replicas'
        ports, written into its configuration so that it need not wait for the others'
        hello messages (every 2 s) to know them."""
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        self.binary = str(binary)
        sentinels, replicas = known
        self.port = sentinels[0][0] if sentinels else free_port()
        home = directory / f"sentinel-{self.port}"
        home.mkdir(parents=True)
        self.conf = home / "sentinel.conf"  # Sentinel keeps its state here: writable
        self.conf.write_text(
            "\n".join(
                [
                    f"tls-port {self.port}" if tls else f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {home}",
                    *(tls.server_lines() if tls else []),
                    f"sentinel monitor {service} 127.0.0.1 {primary} 2",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} 5000",
                    f"sentinel parallel-syncs {service} 1",
                    *([f"sentinel myid {sentinels[0][1]}"] if sentinels else []),
                    *(
                        f"sentinel known-sentinel {service} 127.0.0.1 {port} {peer}"
                        for port, peer in sentinels[1:]
                    ),
                    *(f"sentinel known-replica {service} 127.0.0.1 {port}" for port in replicas),
                    *(
                        [
                            f"requirepass {passwords.sentinel}",
                            f"sentinel sentinel-pass {passwords.sentinel}",
                            f"sentinel auth-pass {service} {passwords.data}",
                        ]
                        if passwords
                        else []
                    ),
                ]
            )
            + "\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)


class SentinelGroup:
    """A primary, its replica and three sentinels on loopback (ports of their own)."""

    SERVICE = "coordinator-test"

    def __init__(
        self,
        directory: Path,
        replicas: int = 1,
        tls: TlsFiles | None = None,
        passwords: Passwords | None = None,
        sync_delay: int | None = None,
    ) -> None:
        self.directory, self.tls, self.passwords = directory, tls, passwords
        data = passwords.data if passwords else None
        self.sentinels: list[SentinelServer] = []
        self.primary = ConfiguredRedis(directory, None, tls, data, sync_delay)
        self.servers = [self.primary]
        try:
            for _ in range(replicas):
                self.servers.append(
                    ConfiguredRedis(directory, self.primary.port, tls, data, sync_delay)
                )
            ids = [(free_port(), secrets.token_hex(20)) for _ in range(3)]
            replica_ports = [server.port for server in self.servers[1:]]
            for i in range(3):
                self.sentinels.append(
                    SentinelServer(
                        directory,
                        self.primary.port,
                        self.SERVICE,
                        tls=tls,
                        passwords=passwords,
                        known=([ids[i], *ids[:i], *ids[i + 1 :]], replica_ports),
                    )
                )
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        auth = f":{self.passwords.data}@" if self.passwords else ""
        query = [self.tls.query()] if self.tls else []
        if self.passwords:
            query.append(f"sentinel_password={self.passwords.sentinel}")
        tail = "?" + "&".join(query) if query else ""
        return f"{scheme}://{auth}{hosts}/{self.SERVICE}/0{tail}"

    def _client(self, port: int) -> Any:
        """A connection to a sentinel or a data node of the group, TLS and password as
        it needs."""
        to_sentinel = any(s.port == port for s in self.sentinels)
        password = None
        if self.passwords:
            password = self.passwords.sentinel if to_sentinel else self.passwords.data
        return redis_client(port, self.tls, password)

    def ask(self, *command: str | int) -> object:
        """A command to the first sentinel that answers."""
        import redis

        for sentinel in self.sentinels:
            try:
                with self._client(sentinel.port) as client:
                    return client.execute_command(*command)
            except redis.ConnectionError:
                continue
        raise RuntimeError("no sentinel answers")

    def primary_port(self) -> int | None:
        """The primary's port as every live sentinel names it, or None while they differ."""
        import redis

        seen = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            try:
                with self._client(sentinel.port) as client:
                    addr = client.sentinel_get_master_addr_by_name(self.SERVICE)
            except redis.ConnectionError:
                continue
            seen.add(int(addr[1]) if addr else None)
        return seen.pop() if len(seen) == 1 else None

    def server(self, port: int) -> ConfiguredRedis:
        return next(s for s in self.servers if s.port == port)

    def current_primary(self) -> ConfiguredRedis:
        port = self.primary_port()
        assert port is not None, "the sentinels disagree on the primary"
        return self.server(port)

    def replicas_in_sync(self) -> bool:
        """Every server up, one primary that Sentinel names, its replicas online, and
        every sentinel seeing the others and every replica."""
        import redis

        port = self.primary_port()
        if port is None or any(s.process is None for s in self.servers):
            return False
        try:
            replicas = len(self.servers) - 1
            with self._client(port) as client:
                info = client.info("replication")
                if info.get("role") != "master":
                    return False
                online = [
                    v
                    for k, v in info.items()
                    if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
                ]
                if len(online) != replicas:
                    return False
                # Online is not yet acknowledging writes (a replica loading its copy).
                client.set("sentinel-group-check", "1")
                if client.wait(replicas, 200) < replicas:
                    return False
            for sentinel in self.sentinels:
                with self._client(sentinel.port) as client:
                    master = client.sentinel_master(self.SERVICE)
                if int(master["num-other-sentinels"]) != len(self.sentinels) - 1:
                    return False
                if int(master["num-slaves"]) != len(self.servers) - 1:
                    return False
        except redis.ConnectionError:
            return False
        return True

    def wait_ready(self, timeout: float = 60.0) -> float:
        start = time.monotonic()
        while not self.replicas_in_sync():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the sentinel group did not settle within {timeout}s")
            time.sleep(0.1)
        return time.monotonic() - start

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.close()
