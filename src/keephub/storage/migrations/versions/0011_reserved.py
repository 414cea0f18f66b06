"""Case-insensitive repo ids (a unique index on the lowercased name) and redirects from a moved repo's old name.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clashes = op.get_bind().execute(sa.text(
        "SELECT a.name, lower(r.name) FROM repos r JOIN accounts a ON a.id = r.owner_id "
        "GROUP BY r.type, a.name, lower(r.name) HAVING count(*) > 1")).all()
    if clashes:
        names = ", ".join(f"{namespace}/{name}" for namespace, name in clashes)
        raise RuntimeError(f"repo ids are case-insensitive from this version on, and these name more than one repo "
                           f"each: {names}; rename all but one with the previous keephub (move_repo), then upgrade")
    op.create_index("ux_repos_type_owner_lower_name", "repos", ["type", "owner_id", sa.text("lower(name)")],
                    unique=True)
    op.create_table(
        "repo_redirects",
        sa.Column("type", sa.String(8), primary_key=True),
        sa.Column("namespace", sa.String(96), primary_key=True),
        sa.Column("name", sa.String(96), primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("repo_redirects")
    op.drop_index("ux_repos_type_owner_lower_name", "repos")
