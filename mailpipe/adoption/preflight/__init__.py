"""Preflight: what adopting a database would meet, read without changing anything.

It classifies the target (fresh, mailpipe's own, the app's shape before or after the seed's
hardening, or unknown), then lists what blocks adoption and what each adoption step would lock
or rewrite. Every query runs in one ``READ ONLY`` transaction with short lock and statement
timeouts, so it is safe on production: it cannot write, and it never queues behind a lock.
Secrets are judged inside Postgres; only provider names and counts come back.

- :mod:`~mailpipe.adoption.preflight.model`: the tables read, the shapes, the report;
- :mod:`~mailpipe.adoption.preflight.shapes`: each table's shape, the database's, the connection
  mode;
- :mod:`~mailpipe.adoption.preflight.inspect`: :func:`preflight` and its read-only queries;
- :mod:`~mailpipe.adoption.preflight.steps`: the adoption steps with their locks and rewrites;
- :mod:`~mailpipe.adoption.preflight.judge`: the blockers and findings.
"""

from __future__ import annotations

from mailpipe.adoption.preflight.inspect import preflight
from mailpipe.adoption.preflight.judge import _judge as _judge
from mailpipe.adoption.preflight.model import OPERATOR as OPERATOR
from mailpipe.adoption.preflight.model import (
    Blocker,
    ConnectionMode,
    DatabaseShape,
    Finding,
    PreflightReport,
    Shape,
    Step,
    TableReport,
)
from mailpipe.adoption.preflight.shapes import connection_mode

__all__ = [
    "Blocker",
    "ConnectionMode",
    "DatabaseShape",
    "Finding",
    "PreflightReport",
    "Shape",
    "Step",
    "TableReport",
    "connection_mode",
    "preflight",
]
