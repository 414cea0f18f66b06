"""Executors and agents: where each attempt runs (executor, its ref, the node), the agent's heartbeat, the
log lines stored so far (sequence number and bytes, for resends without gaps or duplicates), and the
sidecar's own credential (records only), apart from the agent's.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch:
        batch.add_column(sa.Column("executor", sa.String(16), nullable=True))
        batch.add_column(sa.Column("executor_ref", sa.String(200), nullable=True))
        batch.add_column(sa.Column("node", sa.String(200), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("log_seq", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("sidecar_credential_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch:
        for column in ("sidecar_credential_hash", "log_bytes", "log_seq", "heartbeat_at", "node", "executor_ref",
                       "executor"):
            batch.drop_column(column)
