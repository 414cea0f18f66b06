"""Storage: the metadata database (SQLAlchemy + Alembic), git objects in it, and the blob store for large files."""
