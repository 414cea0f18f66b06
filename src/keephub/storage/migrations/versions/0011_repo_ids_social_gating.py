"""Case-insensitive repo ids (a unique index on the lowercased name), redirects from a moved repo's old name, likes,
collections, and gated repos with their access requests.

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

    op.create_table(
        "repo_likes",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(24), nullable=False, unique=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("title", sa.String(60), nullable=False),
        sa.Column("description", sa.String(150), nullable=True),
        sa.Column("private", sa.Boolean, nullable=False),
        sa.Column("theme", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "collection_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.UniqueConstraint("collection_id", "repo_id"),
    )

    op.add_column("repos", sa.Column("gated", sa.String(8), nullable=True))
    op.create_table(
        "access_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repos.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("fields_json", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("repo_id", "user_id"),
    )


def downgrade() -> None:
    op.drop_table("access_requests")
    with op.batch_alter_table("repos") as batch:
        batch.drop_column("gated")
    op.drop_table("collection_items")
    op.drop_table("collections")
    op.drop_table("repo_likes")
    op.drop_table("repo_redirects")
    op.drop_index("ux_repos_type_owner_lower_name", "repos")
