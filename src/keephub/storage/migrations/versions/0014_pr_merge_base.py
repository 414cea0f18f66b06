"""Pull requests: the commit a merged pull request left its target branch from, so its diff stays readable.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("discussions", sa.Column("merge_base_sha", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("discussions") as batch:
        batch.drop_column("merge_base_sha")
