"""A private PostgreSQL server for tests: the distribution's package (`initdb` + `pg_ctl`) on a free
loopback port in a temporary folder, like the Mosquitto fixture. Run as root, it runs as the
`postgres` user (PostgreSQL refuses root). `PgServer.find()` says why there is none, for a skip."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from harness import free_port, wait_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def pg_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                        if p.parent.name.isdigit() else 0)
    return next((c for c in reversed(candidates) if (c / "initdb").exists()), None)


class PgServer:
    """One PostgreSQL cluster (superuser `postgres`, trust auth on 127.0.0.1 only)."""

    def __init__(self, bindir: Path, durable: bool = False) -> None:
        """`durable`: PostgreSQL's own crash safety (fsync and all); without it the server trades it for
        speed, and a `halt` may lose the last transactions."""
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wa_mqtt-pg-"))
        self.data = self.root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def unavailable() -> str | None:
        """Why no server can be started here (for pytest.skip), or None."""
        if pg_bin() is None:
            return ("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                    "install the distribution's package (apt-get install postgresql) to run these tests")
        try:
            import psycopg  # noqa: F401  (only whether it imports)
        except ImportError:
            return "psycopg is not installed: pip install 'psycopg[binary]' to run the PostgreSQL tests"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no `postgres` user to run PostgreSQL as"
        return None

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, user=self._user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.root)

    def start(self) -> None:
        """Start the server (created on the first start; a `halt`ed one comes back with its data)."""
        if not self.data.exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8", "--locale=C")
        fast = "" if self.durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' {fast}"
                   "-c max_connections=300 -c shared_buffers=32MB")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        wait_port(self.port)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def halt(self) -> None:
        """Stop the server abruptly (as a crash would), keeping its data for `start`."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        wait_port(self.port, open_=False)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
