"""instances.provider, base_url, client_token: the provider API chosen per instance

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every existing instance is a W-API one: the server default says so, nothing to back-fill.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=16), nullable=False, server_default="WAPI"))
        batch.add_column(sa.Column("base_url", sa.String(length=512), nullable=False, server_default=""))
        batch.add_column(sa.Column("client_token", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("client_token")
        batch.drop_column("base_url")
        batch.drop_column("provider")
