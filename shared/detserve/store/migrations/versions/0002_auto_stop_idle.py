"""services.auto_stop_idle_minutes: the idle auto stop (null: off)

Revision ID: 0002_auto_stop_idle
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_auto_stop_idle"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("auto_stop_idle_minutes", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("auto_stop_idle_minutes")
