"""services.traffic_limit_qps: the per-service traffic limit (null: none)

Revision ID: 0003_traffic_limit
Revises: 0002_auto_stop_idle
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_traffic_limit"
down_revision = "0002_auto_stop_idle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("traffic_limit_qps", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("traffic_limit_qps")
