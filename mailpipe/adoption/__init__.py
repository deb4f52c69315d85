"""Adopting an existing database (issue 16): read what is there, then take over from pg_cron.

``preflight`` inspects a target read-only and says what adoption would do and what blocks it;
``cutover`` hands the four seed jobs over from pg_cron to mailpipe's deployments.
"""

from __future__ import annotations

SEED_JOBS: tuple[str, ...] = (
    "process_email_queue",
    "monitor_smtp_health",
    "monitor_email_production",
    "snapshot_email_health",
)
"""The pg_cron jobs the seed's hardening migration describes; mailpipe's flows carry their names."""
