"""envelope provenance: the admin's statement (and any node re-wrap attestation) per envelope

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # JSON of flashgate.events.envelope.Provenance; NULL for rows written before it existed
    # (their envelopes are unproven until the admin re-states them: docs/security-model.md).
    op.add_column("secret_versions", sa.Column("provenance", sa.Text(), nullable=True))
    op.add_column("api_keys", sa.Column("provenance", sa.Text(), nullable=True))
    op.add_column("rewrap_origins", sa.Column("prior_provenance", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("rewrap_origins", "prior_provenance")
    op.drop_column("api_keys", "provenance")
    op.drop_column("secret_versions", "provenance")
