"""Token scopes: fine-grained tokens limited to listed repos or namespaces, and job tokens tied to their job.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("scopes_json", sa.Text, nullable=True))
        batch.add_column(sa.Column("is_job_token", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("job_id", sa.String(24), nullable=True))
        batch.add_column(sa.Column("parent_token_id", sa.Integer, nullable=True))
        batch.create_index("ix_tokens_job_id", ["job_id"])
        batch.create_foreign_key("fk_tokens_parent_token_id", "tokens", ["parent_token_id"], ["id"],
                                 ondelete="CASCADE")
    with op.batch_alter_table("scheduled_jobs") as batch:
        batch.add_column(sa.Column("owner_token_id", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduled_jobs") as batch:
        batch.drop_column("owner_token_id")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_constraint("fk_tokens_parent_token_id", type_="foreignkey")
        batch.drop_index("ix_tokens_job_id")
        batch.drop_column("parent_token_id")
        batch.drop_column("job_id")
        batch.drop_column("is_job_token")
        batch.drop_column("scopes_json")
