"""Users, identities, inbox, outbox, conversation history, channel state.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("entity_id", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("channel_user_id", sa.String(128), nullable=False),
        sa.Column(
            "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("display_name", sa.String(255)),
        sa.Column("username", sa.String(255)),
        sa.Column("phone", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("channel", "account", "channel_user_id", name="uq_identity_key"),
    )
    op.create_index("ix_identities_user_id", "identities", ["user_id"])

    op.create_table(
        "inbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("native_id", sa.String(255), nullable=False),
        sa.Column(
            "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("conversation_key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("available_at", TS, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint("channel", "account", "native_id", name="uq_inbox_dedupe"),
    )
    op.create_index("ix_inbox_status_seq", "inbox", ["status", "seq"])
    op.create_index("ix_inbox_user_seq", "inbox", ["user_id", "seq"])

    op.create_table(
        "outbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", sa.String(32)),
        sa.Column("user_id", sa.String(32)),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("conversation_key", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("available_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.Column("platform_message_id", sa.String(255)),
        sa.Column("delivery_status", sa.String(16)),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", TS),
    )
    op.create_index("ix_outbox_status_seq", "outbox", ["status", "seq"])
    op.create_index("ix_outbox_conversation_seq", "outbox", ["conversation_key", "seq"])
    op.create_index("ix_outbox_platform_message", "outbox", ["channel", "platform_message_id"])
    op.create_index("ix_outbox_inbox_id", "outbox", ["inbox_id"])
    op.create_index("ix_outbox_user_id", "outbox", ["user_id"])

    op.create_table(
        "history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("conversation_key", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index(
        "ix_history_user_conversation", "history", ["user_id", "conversation_key", "id"]
    )

    op.create_table(
        "channel_state",
        sa.Column("channel", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("channel_state", "history", "outbox", "inbox", "identities", "users"):
        op.drop_table(table)
