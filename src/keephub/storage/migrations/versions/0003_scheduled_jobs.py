"""Scheduled jobs.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduled_jobs",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("namespace", sa.String(96), nullable=False, index=True),
        sa.Column("owner", sa.String(96), nullable=False),
        sa.Column("owner_token_role", sa.String(8), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("secrets_sealed", sa.LargeBinary, nullable=True),
        sa.Column("schedule", sa.String(100), nullable=False),
        sa.Column("suspend", sa.Boolean, nullable=False),
        sa.Column("concurrency", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_job_id", sa.String(24), nullable=True),
        sa.Column("last_job_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("scheduled_jobs")
