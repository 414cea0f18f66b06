"""Buckets: files without history (path -> Xet content), the content each bucket's write tokens uploaded, and
`xet_files.sha256` made optional (content only buckets hold is never named by sha256, so it is not computed).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "buckets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("name", sa.String(96), nullable=False),
        sa.Column("private", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner_id", "name"),
    )
    op.create_table(
        "bucket_files",
        sa.Column("bucket_id", sa.Integer, sa.ForeignKey("buckets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("xet_hash", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ms", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(200), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_bucket_files_content", "bucket_files", ["bucket_id", "xet_hash"])
    op.create_table(
        "bucket_uploads",
        sa.Column("bucket_id", sa.Integer, sa.ForeignKey("buckets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("file_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("xet_files") as batch:
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM xet_files WHERE sha256 IS NULL")  # content only the dropped buckets held
    with op.batch_alter_table("xet_files") as batch:
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=False)
    op.drop_table("bucket_uploads")
    op.drop_index("ix_bucket_files_content", "bucket_files")
    op.drop_table("bucket_files")
    op.drop_table("buckets")
