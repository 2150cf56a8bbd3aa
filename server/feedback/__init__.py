"""The feedback loop's storage: every completion choice the server serves, and people's votes on them.

`models.py` holds the three tables (completions, votes, vote_items) as SQLAlchemy 2 models that run
on SQLite (the default, a file in the cache folder) and PostgreSQL; `migrations/` is the Alembic
environment that creates and changes them (it ships inside the package); `database.py` opens a
database, creating a new one at the newest revision and refusing an outdated one with the command
that upgrades it; `db_cli.py` is that command (`llmdoctor db upgrade|downgrade|current --db URL`);
`completion_log.py` writes the choices `llmdoctor serve --log-completions` serves, in batches, on a
thread of its own (server/api/completion_records.py makes its records).
"""
