"""The feedback tables: completions, votes, vote_items.

Revision ID: cb9494d405dd
Revises:
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "cb9494d405dd"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("choice_index", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("prompt_key", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("output_text", sa.Text(), nullable=False),
        sa.Column("output_token_ids", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("patient_adapter", sa.String(), nullable=True),
        sa.Column("guidance", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("guidance_key", sa.String(), nullable=False),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('finished', 'aborted')", name=op.f("ck_completions_status")),
        sa.CheckConstraint("choice_index >= 0", name=op.f("ck_completions_choice_index")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
        sa.UniqueConstraint("request_id", "choice_index", name=op.f("uq_completions_request_id_choice_index")),
    )
    op.create_index(op.f("ix_completions_guidance_key"), "completions", ["guidance_key"])
    op.create_index(op.f("ix_completions_prompt_key"), "completions", ["prompt_key"])
    op.create_index(op.f("ix_completions_request_id"), "completions", ["request_id"])

    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("annotator", sa.String(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("prompt_key", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.CheckConstraint("kind IN ('pairwise', 'tie', 'both_bad', 'ranking')", name=op.f("ck_votes_kind")),
        sa.CheckConstraint("source IN ('log', 'external')", name=op.f("ck_votes_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_votes_idempotency_key")),
    )
    op.create_index(op.f("ix_votes_annotator"), "votes", ["annotator"])
    op.create_index(op.f("ix_votes_created_at"), "votes", ["created_at"])
    op.create_index(op.f("ix_votes_prompt_key"), "votes", ["prompt_key"])

    op.create_table(
        "vote_items",
        sa.Column("vote_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("completion_id", sa.String(), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("ck_vote_items_position")),
        sa.ForeignKeyConstraint(["completion_id"], ["completions.id"],
                                name=op.f("fk_vote_items_completion_id_completions")),
        sa.ForeignKeyConstraint(["vote_id"], ["votes.id"], name=op.f("fk_vote_items_vote_id_votes"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vote_id", "position", name=op.f("pk_vote_items")),
    )
    op.create_index(op.f("ix_vote_items_completion_id"), "vote_items", ["completion_id"])


def downgrade() -> None:
    # dropping a table drops its indexes and constraints; the referencing table goes first
    op.drop_table("vote_items")
    op.drop_table("votes")
    op.drop_table("completions")
