"""A Consul cluster on loopback: three servers and client agents, distinct ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.servers import ServerProcess, consul_binary, free_port, missing, wait_for_port


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return json.loads(reply.read() or b"null")


class Agent(ServerProcess):
    """One agent, a server or a client, with a data directory kept across restarts."""

    def __init__(self, binary: str, directory: Path, name: str, server: bool, join: str) -> None:
        self.binary, self.name, self.server, self.join = binary, name, server, join
        self.directory = directory / name
        self.directory.mkdir()
        self.port = free_port()
        self.ports = {p: free_port() for p in ("serf_lan", "serf_wan", "server")}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rpc(self) -> str:
        return f"127.0.0.1:{self.ports['server']}"

    def start(self) -> None:
        hcl = (
            f"ports {{ http = {self.port} dns = -1 grpc = -1 grpc_tls = -1 "
            f"serf_lan = {self.ports['serf_lan']} serf_wan = {self.ports['serf_wan']} "
            f"server = {self.ports['server']} }} performance {{ raft_multiplier = 1 }}"
        )
        args = [
            self.binary, "agent", "-node", self.name, "-data-dir", str(self.directory),
            "-bind", "127.0.0.1", "-client", "127.0.0.1", "-hcl", hcl,
            "-retry-join", self.join, "-retry-interval", "1s", "-log-level", "warn",
        ]  # fmt: skip
        if self.server:
            args += ["-server", "-bootstrap-expect", "3"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        wait_for_port(self.port, timeout=60)  # a loaded machine starts it slowly


class ConsulCluster:
    def __init__(self, clients: int) -> None:
        binary = consul_binary()
        if binary is None:
            missing("consul (built by scripts/build-consul from its Go module)")
        assert binary is not None
        self.directory = Path(tempfile.mkdtemp(prefix="coordinator-consul-cluster-"))
        first = Agent(binary, self.directory, "server-0", True, "")
        join = f"127.0.0.1:{first.ports['serf_lan']}"
        first.join = join
        self.servers = [first] + [
            Agent(binary, self.directory, f"server-{i}", True, join) for i in (1, 2)
        ]
        self.clients = [
            Agent(binary, self.directory, f"client-{i}", False, join) for i in range(clients)
        ]
        try:
            for agent in [*self.servers, *self.clients]:
                agent.start()
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    def leader(self) -> Agent | None:
        for agent in self.servers:
            if agent.process is None:
                continue
            try:
                address = get(f"{agent.url}/v1/status/leader")
            except OSError:
                continue
            found = [s for s in self.servers if s.rpc == address and s.process is not None]
            if found:
                return found[0]
        return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """A leader, and every client agent a member that can write."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.leader() and all(
                    get(f"{c.url}/v1/status/leader") and get(f"{c.url}/v1/catalog/nodes")
                    for c in self.clients
                ):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the consul cluster did not become ready")

    def close(self) -> None:
        for agent in [*self.clients, *self.servers]:
            agent.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
