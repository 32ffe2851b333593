"""Alembic's entry point for the library's migrations: run on the connection `indexer.migrate` hands over,
inside the transaction it holds, so an upgrade is all or nothing."""

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
