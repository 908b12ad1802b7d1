"""A throwaway PostgreSQL server on a free loopback port (the image's Debian ``postgresql`` binaries).

``initdb`` a cluster in a temp dir, ``pg_ctl start`` it on 127.0.0.1, yield its connection details, stop it at
teardown. PostgreSQL refuses to run as root, so as root the cluster belongs to (and runs as) the ``postgres``
user via ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    db_name: str

    def env(self) -> dict[str, str]:
        """The variables the production instance config (infra/dagster-k8s.yaml) reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USERNAME": self.username, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": self.db_name}


def postgres_bin_dir() -> Path | None:
    """Directory with initdb/pg_ctl/postgres, or None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(os.access(Path(candidate) / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") and shutil.which("postgres") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(db_name: str = "dagster") -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and delete its cluster. The cluster lives directly under the system
    temp dir: as root it is run by ``postgres``, who cannot enter pytest's per-user (0700) temp folders."""
    import tempfile

    bindir = postgres_bin_dir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="ple-postgres-"))
    data, sock = root / "pgdata", root / "sock"
    sock.mkdir(exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    password = "ple-test-password"
    pwfile = root / "pw"
    pwfile.write_text(password)
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "dagster", f"--pwfile={pwfile}",
                    "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    port = free_port()
    log = root / "server.log"
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c full_page_writes=off"
    start = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w",
                            "-t", "60", "start"], capture_output=True, text=True)
    if start.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed ({start.returncode}): {start.stderr}\n"
                           f"{log.read_text() if log.exists() else ''}")
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", password=password, dbname="postgres")
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        con.cursor().execute(f'CREATE DATABASE "{db_name}"')
        con.close()
        yield PostgresServer("127.0.0.1", port, "dagster", password, db_name)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
