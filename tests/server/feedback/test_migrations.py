import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from llmdoctor.server.feedback import database as fdb
from llmdoctor.server.feedback.database import (
    FeedbackDatabaseError,
    SchemaOutdatedError,
    current_revision,
    downgrade,
    head_revision,
    open_database,
    upgrade,
)

TABLES = {"completions", "votes", "vote_items"}


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_new_database_is_created_at_head(feedback_url):
    open_database(feedback_url).close()
    assert current_revision(feedback_url) == head_revision()
    assert TABLES <= table_names(feedback_url)


def test_downgrade_to_base_then_upgrade_round_trips(feedback_url):
    assert upgrade(feedback_url) == (None, head_revision())
    assert downgrade(feedback_url, "base") == (head_revision(), None)
    assert not TABLES & table_names(feedback_url) and current_revision(feedback_url) is None
    assert upgrade(feedback_url) == (None, head_revision())
    assert TABLES <= table_names(feedback_url)


def test_outdated_database_is_refused_naming_the_upgrade_command(feedback_url):
    upgrade(feedback_url)
    downgrade(feedback_url, "base")  # an existing database whose schema is behind this release
    engine = create_engine(feedback_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    with pytest.raises(SchemaOutdatedError, match="llmdoctor db upgrade --db "):
        open_database(feedback_url)
    assert current_revision(feedback_url) is None  # refused, not silently migrated


def test_database_at_an_unknown_revision_is_refused(feedback_url):
    upgrade(feedback_url)
    engine = create_engine(feedback_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {fdb.VERSION_TABLE} SET version_num = 'f00dfeed1234'"))
    engine.dispose()
    unknown = "revision f00dfeed1234, which this llmdoctor does not know"
    with pytest.raises(FeedbackDatabaseError, match=unknown) as info:
        open_database(feedback_url)
    assert not isinstance(info.value, SchemaOutdatedError)


def test_open_without_create_refuses_a_database_without_tables(feedback_url):
    if feedback_url.startswith("sqlite"):
        with pytest.raises(FeedbackDatabaseError, match="no such file"):
            open_database(feedback_url, create=False)
        return
    with pytest.raises(SchemaOutdatedError, match="has no feedback tables; create them: llmdoctor db upgrade"):
        open_database(feedback_url, create=False)


def test_models_match_the_migrations(feedback_url):
    upgrade(feedback_url)
    engine = fdb.create_feedback_engine(feedback_url)
    with engine.begin() as connection:
        command.check(fdb.alembic_config(connection))  # raises when autogenerate finds a difference
    engine.dispose()


def test_concurrent_opens_of_a_new_database_create_it_once(feedback_url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one():
        barrier.wait()
        try:
            open_database(feedback_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and current_revision(feedback_url) == head_revision()
