"""Adopting an existing database: preflight and cutover from pg_cron (issue 16)."""
