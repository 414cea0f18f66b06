"""Reserved for storage management and hub parity (likes, collections, gated repos) (being built in parallel; keeps one linear history of revisions).

Revision ID: 0011
Revises: 0010
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
