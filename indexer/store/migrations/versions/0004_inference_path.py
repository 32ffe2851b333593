"""The inference path that fills a library (encoders/inference.py), recorded: later runs keep it.

A path keeps embeddings within cosine 0.999 of the model as built, not bit for bit; so a library keeps the one it
was filled with, and a resumed run ends like an uninterrupted one. Every library made before this revision was
filled by the model as built: fp32-eager.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("library", sa.Column("inference", sa.String(32)))
    library = sa.table("library", sa.column("inference"))
    op.execute(library.update().values(inference="fp32-eager"))


def downgrade() -> None:
    with op.batch_alter_table("library") as batch:
        batch.drop_column("inference")
