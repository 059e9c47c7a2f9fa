"""A streaming standby of a test PostgreSQL server, made with pg_basebackup."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import PostgresServer, free_port, missing, postgres_bin


class StandbyServer(PostgresServer):
    """A hot standby streaming from `primary` (over its Unix socket, as the superuser,
    which initdb's pg_hba.conf trusts for replication there). promote() ends recovery.
    `port`: where to listen (an old primary's, to rebuild it as a standby of the new)."""

    def __init__(self, primary: PostgresServer, port: int | None = None) -> None:  # no initdb
        basebackup, postgres = postgres_bin("pg_basebackup"), postgres_bin("postgres")
        if basebackup is None or postgres is None:
            missing("PostgreSQL (pg_basebackup, postgres)")
        assert basebackup is not None and postgres is not None
        self.postgres, self.primary = postgres, primary
        self.directory = Path(tempfile.mkdtemp(prefix="coordinator-pg-standby-"))
        self.data = self.directory / "data"
        self.run_as = primary.run_as
        if self.run_as:
            shutil.chown(self.directory, self.run_as, self.run_as)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as_owner(
            [
                basebackup,
                "-h",
                str(primary.directory),
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.data),
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ]
        )
        self.start()

    def in_recovery(self) -> bool:
        [(recovering,)] = self.sql("SELECT pg_is_in_recovery()")
        return bool(recovering)

    def promote(self) -> None:
        """End recovery; pg_promote waits until the server accepts writes."""
        [(done,)] = self.sql("SELECT pg_promote(true, 30)")
        assert done, "the standby was not promoted within 30s"
