"""`feedback_url`: a fresh, empty feedback database per test, on SQLite and on PostgreSQL.

PostgreSQL is a throwaway cluster started once per session in a temp folder (unix socket only, fsync
off: these tests kill clients, not the server). initdb and pg_ctl refuse to run as root, so as root
they run as the `postgres` user. Without PostgreSQL the fixture installs Debian's package (as root);
if it still cannot start a cluster, the PostgreSQL tests FAIL, naming why: they are never skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin/initdb"


@dataclass
class PostgresCluster:
    socket_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True)


def postgres_bin_dir() -> Path:
    """The folder of initdb and pg_ctl: PATH, then Debian's versioned folders (installing the package as root)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    if not glob.glob(DEBIAN_BIN_GLOB) and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, capture_output=True,
                              text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail("PostgreSQL is not installed and `apt-get install -y postgresql` failed:\n"
                        f"{done.stderr[-2000:]}")
    found = sorted(glob.glob(DEBIAN_BIN_GLOB), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if not found:
        pytest.fail("PostgreSQL's initdb is neither on PATH nor in /usr/lib/postgresql/*/bin: install PostgreSQL "
                    "(Debian: apt-get install postgresql) to run the feedback tests on it")
    return Path(found[-1]).parent


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        pytest.fail(f"could not {what} a throwaway PostgreSQL cluster: {' '.join(command)} exited "
                    f"{done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}{server_log}")


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    bin_dir = postgres_bin_dir()
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="llmdoctor-pg-", dir="/tmp"))  # short: a socket path has ~100 bytes
    data, socket_dir, log = root / "data", root / "socket", root / "server.log"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.fail("running as root, the PostgreSQL tests need `runuser` to start the cluster as `postgres`")
        try:
            for path in (root, socket_dir):
                shutil.chown(path, user="postgres")
        except LookupError:
            pytest.fail("running as root, the PostgreSQL tests need a `postgres` user (initdb refuses root)")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    started = False
    try:
        _run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "--no-sync", "--no-locale", "-E", "UTF8"], "create")
        options = f"-k {socket_dir} -c listen_addresses='' -F"  # unix socket only; -F: no fsync
        _run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
              "start"], "start", log)
        started = True
        yield PostgresCluster(socket_dir)
    finally:
        if started:
            subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_url(request, tmp_path) -> str:
    """A URL of a new, empty database (nothing created in it yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = f"feedback_{uuid.uuid4().hex[:12]}"
    with cluster.admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    with cluster.admin() as admin:  # FORCE: ends connections a test's engine still pools
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(feedback_url):
    """The feedback database at `feedback_url`, created at head."""
    from llmdoctor.server.feedback.database import open_database

    with open_database(feedback_url) as db:
        yield db
