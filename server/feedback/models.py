"""The feedback tables, portable across SQLite and PostgreSQL.

completions: one row per served completion choice (or, later, an external text to vote on).
votes:       one judgement by a person: pairwise, tie, both_bad or a full ranking.
vote_items:  the completions a vote names, in order: pairwise 0 = chosen, 1 = rejected; ranking best
             first; tie and both_bad the two ids.

A change to these models needs a new revision in migrations/versions/ (database.py's docstring says how).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

STATUSES = ("finished", "aborted")
VOTE_KINDS = ("pairwise", "tie", "both_bad", "ranking")
VOTE_SOURCES = ("log", "external")
COMPLETION_ID_PREFIX = "cmpl-choice-"

# Named constraints: Alembic can only drop or alter a constraint it can name (SQLite batch mode too).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_completion_id() -> str:
    """A fresh completions.id: the server names each choice it serves."""
    return f"{COMPLETION_ID_PREFIX}{uuid.uuid4().hex}"


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """sha256 hex of the canonical JSON of a string prompt or a messages list: equal prompts, equal keys."""
    canonical = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def guidance_key(guidance: dict | None, patient_adapter: str | None) -> str:
    """A short canonical name of a guidance setting, the same whatever order the doctors came in.

    "patient" (no doctor, alpha 1); "positivity@2"; "helpful@0.8+terse@1.5:ratio" (mode shown when not
    product); prefixed "alpha=0.5," and suffixed ",max_kl=0.1" when set; "adapter=NAME," first when a
    patient adapter served it. Doctors with beta 0 are left out: they do not move the distribution.
    `guidance` is the request's guidance JSON (doctors as a list or a {name: beta} mapping); `explain`
    does not change what is sampled, so it is not part of the key.
    """
    guidance = guidance or {}
    doctors = guidance.get("doctors") or []
    if isinstance(doctors, dict):
        doctors = [{"name": name, "beta": beta} for name, beta in doctors.items()]
    terms = sorted(
        f"{d['name']}@{_number(d['beta'])}" + ("" if d.get("mode", "product") == "product" else f":{d['mode']}")
        for d in doctors if float(d["beta"]) != 0
    )
    parts = [f"adapter={patient_adapter}"] if patient_adapter else []
    alpha = float(guidance.get("alpha", 1.0))
    if alpha != 1.0:
        parts.append(f"alpha={_number(alpha)}")
    parts.append("+".join(terms) if terms else "patient")
    if guidance.get("max_kl") is not None:
        parts.append(f"max_kl={_number(guidance['max_kl'])}")
    return ",".join(parts)


def _number(value: float) -> str:
    """Shortest exact text of a float, without a trailing ".0" (2.0 -> "2", 0.8 -> "0.8")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both backends. SQLite keeps no zone (it would hand back naive values),
    PostgreSQL's timestamptz hands back the session's zone: both come back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: expected a timezone-aware one (e.g. utc_now())")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Completion(Base):
    """One served completion choice. `endpoint` is "chat" | "completions" (later also "external")."""

    __tablename__ = "completions"
    __table_args__ = (
        UniqueConstraint("request_id", "choice_index"),
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        CheckConstraint("choice_index >= 0", name="choice_index"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    request_id: Mapped[str] = mapped_column(String, index=True)  # the response's id
    choice_index: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String)
    prompt_key: Mapped[str] = mapped_column(String(64), index=True)  # prompt_key(prompt)
    prompt: Mapped[str | list] = mapped_column(JSON)  # the string prompt or the messages list
    output_text: Mapped[str] = mapped_column(Text)
    output_token_ids: Mapped[list[int]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String)  # the requested model name
    patient_adapter: Mapped[str | None] = mapped_column(String)
    guidance: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))  # alpha, doctors, max_kl ...
    guidance_key: Mapped[str] = mapped_column(String, index=True)  # guidance_key(guidance, patient_adapter)
    sampling: Mapped[dict] = mapped_column(JSON)  # temperature, top_p, seed ...
    finish_reason: Mapped[str | None] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class Vote(Base):
    """One person's judgement; its completions are in `items`, in position order."""

    __tablename__ = "votes"
    __table_args__ = (
        CheckConstraint(_one_of("kind", VOTE_KINDS), name="kind"),
        CheckConstraint(_one_of("source", VOTE_SOURCES), name="source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)  # drift over time
    annotator: Mapped[str | None] = mapped_column(String, index=True)
    note: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String, unique=True)  # a retried POST stores one vote
    prompt_key: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))  # "log": served completions; "external": texts sent in

    # passive_deletes: the database's ON DELETE CASCADE removes the items, also for a bulk delete
    items: Mapped[list[VoteItem]] = relationship(
        back_populates="vote", order_by="VoteItem.position", cascade="all, delete-orphan", passive_deletes=True
    )


class VoteItem(Base):
    __tablename__ = "vote_items"
    __table_args__ = (CheckConstraint("position >= 0", name="position"),)

    vote_id: Mapped[int] = mapped_column(ForeignKey("votes.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    # no cascade: a completion some vote names cannot be deleted
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"), index=True)

    vote: Mapped[Vote] = relationship(back_populates="items")
    completion: Mapped[Completion] = relationship()

