"""Per-subscription health of outbound webhooks: attempts cut at the timeout, attempts refused.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.add_column(sa.Column("timeouts", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("refused", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.drop_column("refused")
        batch.drop_column("timeouts")
