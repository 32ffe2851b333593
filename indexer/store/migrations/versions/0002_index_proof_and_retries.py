"""What the saved FAISS file was built from (so a file that is not this library's is never trusted), and
retries of failures that may be transient (a decode that timed out, an I/O error while reading).

Failures recorded before this revision are classified by their reason, so a decode that timed out
under load is retried by the next run instead of never.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PROOF = ("index_count", "index_dim", "index_ids_digest")


def upgrade() -> None:
    op.add_column("library", sa.Column("index_count", sa.BigInteger(), nullable=True))
    op.add_column("library", sa.Column("index_dim", sa.Integer(), nullable=True))
    op.add_column("library", sa.Column("index_ids_digest", sa.String(32), nullable=True))
    op.add_column("pictures", sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("pictures", sa.Column("transient", sa.Boolean(), server_default=sa.false(), nullable=False))
    pictures = sa.table("pictures", sa.column("status"), sa.column("error"), sa.column("attempts"),
                        sa.column("transient", sa.Boolean()))
    failed = pictures.c.status == "failed"
    op.execute(pictures.update().where(failed).values(attempts=1))
    op.execute(pictures.update().where(failed, sa.or_(pictures.c.error.like("timed out%"),
                                                      pictures.c.error.like("unreadable:%"))).values(transient=True))


def downgrade() -> None:
    with op.batch_alter_table("pictures") as batch:
        batch.drop_column("transient")
        batch.drop_column("attempts")
    with op.batch_alter_table("library") as batch:
        for column in reversed(PROOF):
            batch.drop_column(column)
