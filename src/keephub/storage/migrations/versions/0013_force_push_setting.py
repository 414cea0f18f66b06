"""git over HTTP: a per-repo setting that lets `git push --force` rewrite the default branch (off by default).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("repos", sa.Column("allow_force_push", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("repos") as batch:
        batch.drop_column("allow_force_push")
