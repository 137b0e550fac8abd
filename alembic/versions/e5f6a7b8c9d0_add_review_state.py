"""review state on player_image_assets: pending/approved/rejected, who, when, why, guidance, what it replaces

Revision ID: e5f6a7b8c9d0
Revises: d4e5f6a7b8c9
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "e5f6a7b8c9d0"
down_revision: str | None = "d4e5f6a7b8c9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add a foreign key to an existing table, so Alembic rebuilds it there.
    with op.batch_alter_table("player_image_assets") as batch:
        # Every image made before review existed was live on arrival: approved.
        batch.add_column(sa.Column("review_status", sa.String(20), nullable=False, server_default="approved"))
        batch.add_column(sa.Column("reviewed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("review_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("guidance", sa.Text(), nullable=True))
        batch.add_column(sa.Column("replaces_asset_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_asset_replaces", "player_image_assets", ["replaces_asset_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("player_image_assets") as batch:
        batch.drop_constraint("fk_asset_replaces", type_="foreignkey")
        for column in ("replaces_asset_id", "guidance", "review_reason", "reviewed_at", "reviewed_by", "review_status"):
            batch.drop_column(column)
