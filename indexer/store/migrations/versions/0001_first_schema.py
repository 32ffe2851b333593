"""The schema of every release before versions were recorded (commit 24155e8): pictures, roots, unreadable
folders, the model record, tags.

Tables were added over those releases (unreadable_folders, picture_tags, tag_runs), so a library made
by one of them may lack some: each table is created only where it is missing, which also makes this
the upgrade of an unversioned library. Written out here, not taken from the models, so that it stays
what it was when the models change.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[tuple[str, list, list[tuple[str, list[str]]]]]:
    """(name, columns and constraints, indexes) of each table, in creation order."""
    return [
        ("pictures", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("path", sa.LargeBinary(), nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
            sa.Column("content_hash", sa.String(64), nullable=True),
            sa.Column("width", sa.Integer(), nullable=True),
            sa.Column("height", sa.Integer(), nullable=True),
            sa.Column("taken_at", sa.DateTime(), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("vector", sa.LargeBinary(), nullable=True),
            sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("path"),
        ], [("ix_pictures_status", ["status"]), ("ix_pictures_content_hash", ["content_hash"])]),
        ("roots", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("path", sa.LargeBinary(), nullable=False),
            sa.Column("last_indexed_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("path"),
        ], []),
        ("unreadable_folders", [
            sa.Column("path", sa.LargeBinary(), nullable=False),
            sa.Column("error", sa.Text(), nullable=False),
            sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("path"),
        ], []),
        ("library", [
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("architecture", sa.String(200), nullable=False),
            sa.Column("weights", sa.Text(), nullable=False),
            sa.Column("fingerprint", sa.String(64), nullable=False),
            sa.Column("weights_digest", sa.Text(), nullable=False),
            sa.Column("embed_dim", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("generation", sa.BigInteger(), nullable=False),
            sa.Column("index_generation", sa.BigInteger(), nullable=True),
            sa.Column("last_indexed_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        ], []),
        ("picture_tags", [
            sa.Column("picture_id", sa.Integer(), nullable=False),
            sa.Column("tag", sa.String(200), nullable=False),
            sa.Column("score", sa.Float(), nullable=False),
            sa.Column("labelset", sa.String(64), nullable=False),
            sa.ForeignKeyConstraint(["picture_id"], ["pictures.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("picture_id", "tag"),
        ], [("ix_picture_tags_labelset", ["labelset"]), ("ix_picture_tags_tag", ["tag"])]),
        ("tag_runs", [
            sa.Column("picture_id", sa.Integer(), nullable=False),
            sa.Column("labelset", sa.String(64), nullable=False),
            sa.Column("content_hash", sa.String(64), nullable=True),
            sa.Column("tagged_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["picture_id"], ["pictures.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("picture_id", "labelset"),
        ], []),
    ]


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, columns, indexes in _tables():
        if name in existing:
            continue
        op.create_table(name, *columns)
        for index, indexed in indexes:
            op.create_index(index, name, indexed)


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
