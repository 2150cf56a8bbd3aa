import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select as sql_select

from llmdoctor.server.feedback.database import FeedbackDatabase, FeedbackDatabaseError, current_revision, default_url
from llmdoctor.server.feedback.models import Completion, Vote
from tests.server.feedback.rows import completion, vote

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("url", "expected"), [
    ("not a url", "not a database URL; expected sqlite:///PATH or postgresql+psycopg://"),
    ("mysql://ann:secret@db/feedback", "unsupported backend 'mysql' (known: sqlite+pysqlite, postgresql+psycopg"),
    ("postgresql+psycopg2://ann:secret@db/feedback", "its driver psycopg2 is not installed"),
    ("postgresql://ann:secret@127.0.0.1:1/feedback", "Connection refused"),
    ("sqlite://", "an in-memory SQLite database would lose the feedback at exit"),
], ids=["unparsable", "unknown-backend", "missing-driver", "unreachable", "in-memory"])
def test_bad_url_raises_one_error_naming_it_with_the_password_masked(url, expected):
    with pytest.raises(FeedbackDatabaseError) as info:
        current_revision(url)
    message = str(info.value)
    assert expected in message and "secret" not in message and info.value.param == "db"
    if "secret" in url:
        assert "ann:***@" in message


def test_missing_sqlite_file_is_reported_not_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(FeedbackDatabaseError, match="no such file; .* llmdoctor db upgrade --db "):
        current_revision(url)
    assert not (tmp_path / "nothing.db").exists()


def test_default_url_is_a_sqlite_file_in_the_cache_folder(tmp_path):
    assert default_url(tmp_path / "cache") == f"sqlite:///{tmp_path / 'cache' / 'feedback.db'}"


def test_concurrent_writers_all_commit(database):
    shared = [completion(choice_index=0), completion(choice_index=1)]
    with database.session() as session, session.begin():
        session.add_all(shared)
    ids = [row.id for row in shared]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def write(worker: int) -> None:
        barrier.wait()
        try:
            for i in range(50):
                key = f"{worker}-{i}"
                with database.session() as session, session.begin():  # read, then write: as a retried POST would
                    assert session.scalar(sql_select(Vote.id).where(Vote.idempotency_key == key)) is None
                    session.add(vote("pairwise", ids, annotator=f"w{worker}", idempotency_key=key))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.read_session() as session:
        assert session.scalar(sql_select(func.count()).select_from(Vote)) == 400


WRITER = """
import sys, time
from llmdoctor.server.feedback.database import FeedbackDatabase
from tests.server.feedback.rows import completion, vote

db = FeedbackDatabase(sys.argv[1])
row = completion()
with db.session() as session, session.begin():
    session.add(row)
    session.add(vote("tie", [row.id, row.id], idempotency_key="committed"))
in_flight = db.session()
in_flight.begin()
in_flight.add(vote("tie", [row.id, row.id], idempotency_key="in-flight"))
in_flight.flush()  # written, holding its locks, never committed
print("ok", flush=True)
time.sleep(600)
"""


def test_committed_vote_survives_kill_9_of_its_writer(database, feedback_url):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, feedback_url], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([writer.stdout], [], [], 60)
        line = writer.stdout.readline() if ready else ""
        assert line.strip() == "ok", f"the writer did not report its commit: {line!r} {writer.stderr.read()[-2000:]}"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    with database.session() as session, session.begin():  # takes the write lock: the dead writer's is gone
        keys = set(session.scalars(sql_select(Vote.idempotency_key)))
        assert keys == {"committed"}
        completion_id = session.scalars(sql_select(Vote)).one().items[0].completion_id
        session.add(vote("tie", [completion_id, completion_id], idempotency_key="in-flight"))
    with database.read_session() as session:
        assert set(session.scalars(sql_select(Vote.idempotency_key))) == {"committed", "in-flight"}


def test_database_object_closes_its_connections(feedback_url):
    from llmdoctor.server.feedback.database import open_database

    db = open_database(feedback_url)
    assert isinstance(db, FeedbackDatabase) and "***" not in db.url
    with db.read_session() as session:
        assert session.scalar(sql_select(func.count()).select_from(Vote)) == 0
    db.close()
    assert db.engine.pool.checkedout() == 0


def test_reading_does_not_wait_for_a_writer(database):
    row = completion()
    with database.session() as writer, writer.begin():
        writer.add(row)
        writer.flush()  # the write lock is held (SQLite: since BEGIN) until the commit
        started = time.monotonic()
        with database.read_session() as reader:
            assert reader.scalar(sql_select(func.count()).select_from(Completion)) == 0  # not committed yet
        assert time.monotonic() - started < 5
