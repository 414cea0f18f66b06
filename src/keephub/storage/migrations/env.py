"""Alembic environment: keephub runs migrations itself at start-up, on the connection it hands over."""

from alembic import context

from keephub.storage.schema import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("keephub migrations run through keephub.storage.db.migrate(), which supplies a connection")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
