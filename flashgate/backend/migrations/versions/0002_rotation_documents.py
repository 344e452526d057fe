"""fleet key rotation: keep the signed rotation and retirement commands per epoch

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 22:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fleet_epochs", schema=None) as batch_op:
        # The admin-signed fleet.rotation.start command that dealt this epoch (its sealed
        # shares), and the fleet.rotation.finish command that retired it: republished to
        # the fleet bucket on start, so a node that was away still finds them.
        batch_op.add_column(sa.Column("dealt_by", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retired_by", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fleet_epochs", schema=None) as batch_op:
        batch_op.drop_column("retired_by")
        batch_op.drop_column("dealt_by")
