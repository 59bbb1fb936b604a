"""services.traffic and services.pending_traffic: several versions with traffic weights

Revision ID: 0004_versions
Revises: 0003_traffic_limit
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_versions"
down_revision = "0003_traffic_limit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # null traffic keeps its meaning for existing rows: all traffic to services.version_id
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("traffic", sa.JSON, nullable=True))
        batch.add_column(sa.Column("pending_traffic", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("pending_traffic")
        batch.drop_column("traffic")
