"""Certificates made by the test run (openssl), and the three servers with TLS on.

The server certificate names 127.0.0.1 and localhost only; the servers also listen on
127.0.0.2, which the certificate does not name: connecting there is the wrong-host-name
case. A second CA, which signed nothing the servers present, is the wrong-CA case.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ConsulServer, PostgresServer, RedisServer, missing, wait_for_port

WRONG_HOST = "127.0.0.2"  # loopback, but not in the server certificate


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # signed nothing the servers present
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, cwd=cwd, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=coordinator test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def _leaf(directory: Path, name: str, cn: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(
        extensions + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        missing("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _leaf(
        directory,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth",
    )
    _leaf(directory, "client", "coordinator", "extendedKeyUsage=clientAuth")
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


class TlsRedisServer(RedisServer):
    """redis-server with only a TLS port, requiring client certificates."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.pki = pki
        super().__init__(directory)

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1", self.pki.ca)

    def url_for(self, host: str, ca: Path) -> str:
        return (
            f"rediss://{host}:{self.port}/0?ssl_ca_certs={ca}"
            f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}"
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary, "--port", "0", "--tls-port", str(self.port),
                "--bind", f"127.0.0.1 {WRONG_HOST}", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory),
                "--tls-cert-file", str(self.pki.server_cert),
                "--tls-key-file", str(self.pki.server_key),
                "--tls-ca-cert-file", str(self.pki.ca),
                "--tls-auth-clients", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.started_at = time.monotonic()
        wait_for_port(self.port)


class TlsPostgresServer(PostgresServer):
    """PostgreSQL with ssl=on; TCP clients must use TLS (hostssl only)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        super().__init__()

    def settings(self) -> list[str]:
        # The server refuses a key file others can read: copies its user owns.
        crt, key = self.directory / "server.crt", self.directory / "server.key"
        if not key.exists():
            for source, target in ((self.pki.server_cert, crt), (self.pki.server_key, key)):
                shutil.copy(source, target)
                target.chmod(0o600)
                if self.run_as:
                    shutil.chown(target, self.run_as, self.run_as)
            hba = self.data / "pg_hba.conf"
            lines = [ln for ln in hba.read_text().splitlines() if not ln.startswith("host")]
            hba.write_text("\n".join([*lines, "hostssl all all 127.0.0.0/8 scram-sha-256", ""]))
        return [
            "-c", "ssl=on",
            "-c", f"ssl_cert_file={crt}",
            "-c", f"ssl_key_file={key}",
            "-c", f"listen_addresses=127.0.0.1,{WRONG_HOST}",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1", self.pki.ca)

    def url_for(self, host: str, ca: Path) -> str:
        return (
            f"postgresql://{self.USER}:{self.PASSWORD}@{host}:{self.port}/{self.DATABASE}"
            f"?sslmode=verify-full&sslrootcert={ca}"
        )


class TlsConsulServer(ConsulServer):
    """A dev agent with only an HTTPS port, which requires a client certificate."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.pki = pki
        super().__init__(directory)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        hcl = (
            f"ports {{ http = -1 https = {self.port} dns = -1 grpc = -1 grpc_tls = -1 "
            f"serf_lan = {self.ports['serf_lan']} serf_wan = {self.ports['serf_wan']} "
            f"server = {self.ports['server']} }} "
            f'tls {{ defaults {{ ca_file = "{self.pki.ca}" cert_file = "{self.pki.server_cert}" '
            f'key_file = "{self.pki.server_key}" }} https {{ verify_incoming = true }} }}'
        )
        self.process = subprocess.Popen(
            [
                self.binary, "agent", "-dev", "-bind", "127.0.0.1",
                "-client", f"127.0.0.1 {WRONG_HOST}", "-hcl", hcl, "-log-level", "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )  # fmt: skip
        wait_for_port(self.port, timeout=30)
        self.wait_for_leader()

    def wait_for_leader(self, timeout: float = 30.0) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(
                    f"{self.url}/v1/status/leader", timeout=1, context=context
                ) as reply:
                    if reply.read().strip(b'"\n'):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("consul elected no leader")

    def env(self, ca: Path | None = None, client_cert: bool = True) -> dict[str, str]:
        """The CONSUL_* variables a supervisor uses to reach this agent."""
        env = {"CONSUL_CACERT": str(ca or self.pki.ca)}
        if client_cert:
            env["CONSUL_CLIENT_CERT"] = str(self.pki.client_cert)
            env["CONSUL_CLIENT_KEY"] = str(self.pki.client_key)
        return env
