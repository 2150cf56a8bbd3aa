"""Alembic's environment for the feedback tables.

database.py runs every migration: it opens the connection, begins the transaction (taking the
migration lock) and passes the connection in `config.attributes["connection"]`; there is no
alembic.ini and no offline (SQL script) mode.
"""

from alembic import context

from llmdoctor.server.feedback.database import VERSION_TABLE
from llmdoctor.server.feedback.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run the feedback migrations through llmdoctor.server.feedback.database "
                       "(or `llmdoctor db upgrade|downgrade --db URL`), which passes the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    transactional_ddl=True,  # SQLite can roll DDL back too; Alembic assumes it cannot
)
with context.begin_transaction():  # the caller's transaction: this adds none
    context.run_migrations()
