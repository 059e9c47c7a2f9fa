"""PgBouncer in front of a test PostgreSQL server, on a free loopback port.

One process serves three names for the same database, one per pool mode: `session`,
`transaction` and `statement`. PgBouncer refuses to run as root, so as root it
runs as the server's user, in the server's directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.servers import PostgresServer, ServerProcess, free_port, missing, wait_for_port


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    debian = Path("/usr/sbin/pgbouncer")
    return str(debian) if debian.exists() else None


class PgBouncer(ServerProcess):
    """`login_retry`: PgBouncer's server_login_retry, how long it waits after a failed
    login to the server (15 s by default) before it tries again."""

    def __init__(self, server: PostgresServer, login_retry: int | None = None) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            missing("pgbouncer")
        assert binary is not None
        self.binary, self.server = binary, server
        self.port = free_port()
        self.directory = server.directory / "pgbouncer"
        self.directory.mkdir()
        target = f"host=127.0.0.1 port={server.port} dbname={server.DATABASE}"
        (self.directory / "userlist.txt").write_text(f'"{server.USER}" "{server.PASSWORD}"\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"session = {target} pool_mode=session\n"
            f"transaction = {target} pool_mode=transaction\n"
            f"statement = {target} pool_mode=statement\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            "max_client_conn = 200\n"
            "default_pool_size = 50\n"
            + (f"server_login_retry = {login_retry}\n" if login_retry is not None else "")
        )
        if server.run_as:
            for path in (self.directory, *self.directory.iterdir()):
                shutil.chown(path, server.run_as, server.run_as)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return self.url_for("session")

    def url_for(self, pool: str) -> str:
        """The URL of database `pool` (session, transaction, statement) through the pooler."""
        server = self.server
        return f"postgresql://{server.USER}:{server.PASSWORD}@127.0.0.1:{self.port}/{pool}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-q", str(self.directory / "pgbouncer.ini")],
            user=self.server.run_as,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for_port(self.port)
