"""Alembic revisions for every table; `gateway.migrate` runs them."""
