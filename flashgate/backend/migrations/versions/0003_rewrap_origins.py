"""fleet key rotation: keep each re-wrapped envelope's original until the old epoch retires

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A re-wrap that no node can open (a faulty or byzantine re-wrapping node) is put back
    # to its original on a node's dispute; the disputed node may not re-wrap it again.
    op.create_table(
        "rewrap_origins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("to_epoch", sa.Integer(), nullable=False),
        sa.Column("prior_jwe", sa.Text(), nullable=True),
        sa.Column("rewrapped_by", sa.String(length=64), nullable=True),
        sa.Column("barred", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_rewrap_origins_fleet_id_fleets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rewrap_origins")),
        sa.UniqueConstraint(
            "fleet_id", "key", "version", "to_epoch", name=op.f("uq_rewrap_origins_fleet_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("rewrap_origins")
