"""Preflight's vocabulary: the tables it reads, the shapes it names, and the report it returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from mailpipe.db import Row

TABLES = (
    "communication_events",
    "smtp_provider_configs",
    "smtp_connection_audit",
    "smtp_delivery_confirmations",
    "rate_limit_counters",
)
"""The tables mailpipe creates that the app (or the seed) also has."""

APP_TABLES = ("communication_logs", "email_delivery_confirmations", "email_processing_queue")
"""The app's own tables around the outbox: kept as they are, reported for their locks and RLS."""

MAILPIPE_ROLES = ("mailpipe_app", "mailpipe_analyst")
SUPABASE_ROLES = ("anon", "authenticated", "service_role")

ADOPT = "mailpipe db adopt"
PROVIDER_ADOPT = "mailpipe provider adopt"
# How adoption files are named in schema_migrations (mailpipe.adoption.adopt).
ADOPTION_PREFIX = "adoption/"
OPERATOR = "operator"


class Shape(StrEnum):
    """What one table looks like."""

    ABSENT = "absent"
    MAILPIPE = "mailpipe"
    APP = "app"
    APP_HARDENED = "app_hardened"
    UNKNOWN = "unknown"


class DatabaseShape(StrEnum):
    """What the whole target looks like."""

    FRESH = "fresh"
    MAILPIPE = "mailpipe"
    APP_BEFORE_HARDENING = "app_before_hardening"
    APP_AFTER_HARDENING = "app_after_hardening"
    ADOPTING = "adopting"
    ADOPTED = "adopted"
    UNKNOWN = "unknown"


class ConnectionMode(StrEnum):
    """How we reach Postgres (see :func:`connection_mode` for the heuristic)."""

    DIRECT = "direct"
    SESSION_POOLER = "session_pooler"
    TRANSACTION_POOLER = "transaction_pooler"


@dataclass(frozen=True)
class Blocker:
    """Something that must be settled before adoption can go on, and how."""

    code: str
    message: str
    action: str
    fixed_by: str


@dataclass(frozen=True)
class Finding:
    """Worth knowing before adopting, but not blocking."""

    code: str
    message: str


@dataclass(frozen=True)
class Step:
    """One adoption step on one table: the lock it takes and whether it rewrites rows."""

    table: str
    action: str
    lock: str
    rewrites: str
    implemented: bool = True


@dataclass
class TableReport:
    """One table: its shape, id type, size and row-level security."""

    name: str
    shape: Shape
    id_type: str | None = None
    estimated_rows: int | None = None
    total_bytes: int | None = None
    rls_enabled: bool | None = None
    reason: str | None = None


@dataclass
class PreflightReport:
    """Everything preflight found; ``go`` is True when nothing blocks adoption."""

    shape: DatabaseShape
    connection: dict[str, Any]
    tables: list[TableReport]
    applied_migrations: list[str] = field(default_factory=list)
    pending_migrations: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    status_type: str | None = None
    status_values: list[str] = field(default_factory=list)
    priority_type: str | None = None
    unknown_statuses: dict[str, int] = field(default_factory=dict)
    template_keys: dict[str, int] = field(default_factory=dict)
    plaintext_secrets: dict[str, Any] = field(default_factory=dict)
    policies: list[Row] = field(default_factory=list)
    roles_needing_policies: list[dict[str, Any]] = field(default_factory=list)
    cron: dict[str, Any] = field(default_factory=dict)
    net_queue: int | None = None
    event_writers: list[Row] = field(default_factory=list)
    event_triggers: list[Row] = field(default_factory=list)
    event_references: list[Row] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def go(self) -> bool:
        """True when adoption may proceed: no blocker."""
        return not self.blockers

    def blocker_codes(self) -> list[str]:
        """The blockers' codes, in report order (for scripts and tests)."""
        return [b.code for b in self.blockers]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (pass through :func:`mailpipe.serialization.to_jsonable`)."""
        data = asdict(self)
        data["go"] = self.go
        return data


_APP_SHAPES = (
    DatabaseShape.APP_BEFORE_HARDENING,
    DatabaseShape.APP_AFTER_HARDENING,
    DatabaseShape.ADOPTING,
)
