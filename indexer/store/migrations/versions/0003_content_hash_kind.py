"""The content hash a library's rows were made with, recorded: it was told apart by the digests' length.

Libraries made before xxh3-128 (32 hex digits) hashed with blake2b-160 (40) and keep it, so that their
moved and duplicate files are still recognised; an existing library gets the kind its rows hold.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("library", sa.Column("content_hash_kind", sa.String(16), server_default="xxh3-128",
                                       nullable=False))
    library = sa.table("library", sa.column("content_hash_kind"))
    pictures = sa.table("pictures", sa.column("content_hash"))
    blake2b = sa.exists().where(sa.func.length(pictures.c.content_hash) == 40)
    op.execute(library.update().where(blake2b).values(content_hash_kind="blake2b-160"))


def downgrade() -> None:
    with op.batch_alter_table("library") as batch:
        batch.drop_column("content_hash_kind")
