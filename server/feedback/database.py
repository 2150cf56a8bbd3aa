"""Opening the feedback database, and its migrations (Alembic, run in-process; there is no alembic.ini).

    db = open_database(default_url(cache_dir))   # a new database is created at head; an outdated one refused
    with db.session() as session, session.begin():
        session.add(vote)

Backends: SQLite (`sqlite:///PATH`, the default) and PostgreSQL (`postgresql+psycopg://...`; a bare
`postgresql://` means psycopg here too). SQLite runs in WAL mode with foreign keys on, and every
write session takes the write lock at BEGIN (`BEGIN IMMEDIATE`), so concurrent writers wait on the
busy timeout instead of failing half-way; read sessions begin deferred and never wait.

A schema change: edit models.py, then against a database at head run
`alembic.command.revision(alembic_config(connection), "what changed", autogenerate=True)` inside
`engine.begin()`, review the new file in migrations/versions/ (downgrade included), and keep
tests/server/feedback/test_migrations.py's models-match-migrations check passing.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from llmdoctor.server.errors import LLMDoctorError
from llmdoctor.server.feedback.models import Base

MIGRATIONS = Path(__file__).with_name("migrations")
# Our own name, so a PostgreSQL database shared with another Alembic-managed app keeps both histories apart.
VERSION_TABLE = "llmdoctor_alembic_version"
FEEDBACK_TABLES = frozenset(Base.metadata.tables) | {VERSION_TABLE}
DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg", "psycopg2")}  # the first is the default
EXPECTED_URL = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another's commit before failing
POSTGRES_CONNECT_TIMEOUT_S = 10  # libpq's default is to wait for the OS (minutes on a dropped packet)
MIGRATION_LOCK = 0x11D0C702  # pg_advisory_xact_lock key: two processes migrating at once take turns
READ_ONLY = "llmdoctor_read_only"  # execution option of read sessions: SQLite begins them deferred
# Alembic's `context` module is one per process: two threads migrating at once would mix their configs.
_MIGRATING = threading.Lock()


class FeedbackDatabaseError(LLMDoctorError):
    """The feedback database cannot be used: a bad URL, no server, a schema at the wrong revision.
    `param` is the flag at fault ("db" or "revision")."""

    def __init__(self, message: str, param: str = "db"):
        super().__init__(message, param)


class SchemaOutdatedError(FeedbackDatabaseError):
    """The database is at an older revision (or has none): the message names the upgrade command."""


def default_url(cache_dir: Path) -> str:
    return f"sqlite:///{Path(cache_dir) / 'feedback.db'}"


def mask_url(url: str) -> str:
    """The URL with its password as ***, for messages (also when the URL does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def upgrade_command(url: str) -> str:
    return f"llmdoctor db upgrade --db {shlex.quote(mask_url(url))}"


class FeedbackDatabase:
    """An engine on the feedback database and its sessions. Does not check the schema: open_database does."""

    def __init__(self, url: str):
        self.url = mask_url(url)
        self.engine = create_feedback_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    def session(self) -> Session:
        """A session for writing (on SQLite its transactions hold the write lock from BEGIN)."""
        return self._sessions()

    def read_session(self) -> Session:
        """A session for reading only: it never waits for a writer."""
        return self._read_sessions()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackDatabase:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_database(url: str, create: bool = True) -> FeedbackDatabase:
    """The database at `url`, at head. A new, empty one is created at head when `create` (a SQLite
    file and its folder included). Raises SchemaOutdatedError for an older revision (or none, in a
    database that has feedback tables or had them), FeedbackDatabaseError for a newer one or a bad URL."""
    head = head_revision()
    with _engine(url, foreign_keys=False, create=create) as engine, _connect(engine, url, read_only=True) as conn:
        revision, tables = _current(conn), set(inspect(conn).get_table_names()) & FEEDBACK_TABLES
    if revision is None and not tables:
        if not create:
            raise SchemaOutdatedError(f"{mask_url(url)}: has no feedback tables; create them: {upgrade_command(url)}")
        upgrade(url)
    elif revision != head:
        _check_known(url, revision)
        at = f"at revision {revision}" if revision else "at base (no tables, or not stamped)"
        raise SchemaOutdatedError(f"{mask_url(url)}: the feedback schema is {at}, this llmdoctor needs {head}; "
                                  f"upgrade it: {upgrade_command(url)}")
    return FeedbackDatabase(url)


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrates up to `revision`, creating a new database (SQLite: file and folder); returns (before, after)."""
    return _migrate(url, revision, command.upgrade, create=True)


def downgrade(url: str, revision: str) -> tuple[str | None, str | None]:
    """Migrates down to `revision` ("base": no feedback tables left); returns (before, after)."""
    return _migrate(url, revision, command.downgrade, create=False)


def current_revision(url: str) -> str | None:
    """The database's revision; None when it has none (new, or downgraded to base)."""
    with _engine(url, foreign_keys=True, create=False) as engine, _connect(engine, url, read_only=True) as conn:
        return _current(conn)


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revisions() -> list[str]:
    """Oldest first."""
    return [script.revision for script in reversed(list(ScriptDirectory(str(MIGRATIONS)).walk_revisions()))]


def alembic_config(connection: Connection) -> Config:
    """Alembic's config for our migrations; env.py runs them on `connection` (in its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def create_feedback_engine(url: str, foreign_keys: bool = True, create: bool = False) -> Engine:
    """An engine on a checked URL. SQLite: a file that must exist unless `create` (then its folder is made);
    WAL, busy timeout, foreign keys (off for migrations: SQLite's batch mode copies tables, and dropping
    the old copy with foreign keys on would cascade deletes). Raises FeedbackDatabaseError."""
    parsed = _parse_url(url)
    connect_args: dict = {}
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url, parsed, create)
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
    elif "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except ImportError as exc:
        raise FeedbackDatabaseError(
            f"{mask_url(url)}: its driver {parsed.get_driver_name()} is not installed ({exc}); for PostgreSQL "
            f'install psycopg (pip install "llmdoctor[postgres]") and use postgresql+psycopg://') from None
    if engine.dialect.name == "sqlite":
        _sqlite_events(engine, foreign_keys)
    return engine


# ------------------------------------------------------------------ internals


def _parse_url(url: str) -> URL:
    """Checks the backend and driver; a bare postgresql:// gets psycopg (SQLAlchemy 2.0 would pick psycopg2)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise FeedbackDatabaseError(f"{mask_url(url)}: not a database URL; expected {EXPECTED_URL}") from None
    backend, driver = parsed.get_backend_name(), parsed.drivername.partition("+")[2]
    if backend not in DRIVERS or (driver and driver not in DRIVERS[backend]):
        known = ", ".join(f"{b}+{d}" for b, drivers in DRIVERS.items() for d in drivers)
        raise FeedbackDatabaseError(f"{mask_url(url)}: unsupported backend {parsed.drivername!r} (known: {known}); "
                                    f"expected {EXPECTED_URL}")
    if not driver:
        parsed = parsed.set(drivername=f"{backend}+{DRIVERS[backend][0]}")
    return parsed


def _prepare_sqlite_file(url: str, parsed: URL, create: bool) -> None:
    path = Path(parsed.database or "")
    if str(path) in ("", ".", ":memory:") or parsed.query.get("mode") == "memory":
        raise FeedbackDatabaseError(f"{mask_url(url)}: an in-memory SQLite database would lose the feedback at exit; "
                                    "expected a file: sqlite:///PATH")
    if not create:
        if not path.is_file():
            raise FeedbackDatabaseError(f"{mask_url(url)}: no such file; expected an existing feedback database "
                                        f"(create one: {upgrade_command(url)})")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeedbackDatabaseError(f"{mask_url(url)}: cannot create its folder {path.parent} "
                                    f"({exc.strerror or exc})") from None


def _sqlite_events(engine: Engine, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite would BEGIN (deferred) itself; _on_begin does it
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may wait
        cursor.execute("PRAGMA journal_mode = WAL")  # readers and one writer at a time, without blocking
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")  # per connection, off by default
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A deferred transaction that read and then writes fails at once (SQLITE_BUSY) when another
        # writer committed in between; taking the write lock at BEGIN makes writers queue instead.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def _engine(url: str, foreign_keys: bool, create: bool) -> Iterator[Engine]:
    engine = create_feedback_engine(url, foreign_keys=foreign_keys, create=create)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _connect(engine: Engine, url: str, read_only: bool = False) -> Iterator[Connection]:
    """A connection in a transaction, committed at the end; driver errors become FeedbackDatabaseError."""
    try:
        with engine.execution_options(**{READ_ONLY: read_only}).begin() as connection:
            yield connection
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise FeedbackDatabaseError(f"{mask_url(url)}: {reason}") from None


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _check_known(url: str, revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        raise FeedbackDatabaseError(
            f"{mask_url(url)}: the feedback tables are at revision {revision}, which this llmdoctor does not know "
            f"(written by a newer release?); known: {', '.join(known_revisions())}. Use that release, or downgrade "
            "the database with it")


def _migrate(url: str, revision: str, step, create: bool) -> tuple[str | None, str | None]:
    """One transaction: lock (this process; on PostgreSQL all of them), read the revision, migrate, check
    foreign keys (SQLite), read the revision again."""
    with _MIGRATING, _engine(url, foreign_keys=False, create=create) as engine, _connect(engine, url) as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        before = _current(connection)
        _check_known(url, before)
        try:
            step(alembic_config(connection), revision)
        except (CommandError, RevisionError) as exc:
            raise FeedbackDatabaseError(
                f"{mask_url(url)} is at {before or 'base'}: cannot go to revision {revision!r}: {exc} (known: base, "
                f"{', '.join(known_revisions())}, head)", param="revision") from None
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            assert not broken, f"the migration to {revision} left rows with dangling foreign keys: {broken[:5]}"
        return before, _current(connection)
