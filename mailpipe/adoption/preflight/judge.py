"""The judgement: what preflight found, turned into blockers (with what to do) and findings."""

from __future__ import annotations

from mailpipe.adoption.preflight.model import (
    ADOPT,
    ADOPTION_PREFIX,
    OPERATOR,
    PROVIDER_ADOPT,
    TABLES,
    Blocker,
    ConnectionMode,
    DatabaseShape,
    Finding,
    PreflightReport,
    Shape,
)
from mailpipe.migrations import load_migrations
from mailpipe.queue import STATUSES


def _judge(report: PreflightReport) -> None:
    """Turn what was found into blockers (with what to do) and findings."""
    add = report.blockers.append
    note = report.findings.append
    if report.connection["mode"] == ConnectionMode.TRANSACTION_POOLER:
        add(
            Blocker(
                "transaction_pooler",
                f"connected through a transaction pooler ({report.connection['evidence']}): "
                "migrations take an advisory lock and the workers LISTEN, both need one session",
                "use the session pooler (port 5432 on the pooler host) or the direct connection "
                "for adoption, migrations and workers",
                OPERATOR,
            )
        )

    if report.shape == DatabaseShape.UNKNOWN:
        for table in report.tables:
            if table.shape == Shape.UNKNOWN:
                add(
                    Blocker(
                        "unknown_shape",
                        f"{table.name}: {table.reason}",
                        "preflight does not know this table: adoption refuses it. Point "
                        "DATABASE_URL at the right database, or move this table out of the schema",
                        OPERATOR,
                    )
                )
        if not any(b.code == "unknown_shape" for b in report.blockers):
            shapes = ", ".join(f"{t.name}: {t.shape}" for t in report.tables[: len(TABLES)])
            add(
                Blocker(
                    "mixed_shapes",
                    f"tables of different origins side by side ({shapes})",
                    "adoption only handles a database that is wholly the app's (before or after "
                    "the seed's hardening) or wholly mailpipe's: restore a consistent state first",
                    OPERATOR,
                )
            )
        return

    if report.shape in (DatabaseShape.MAILPIPE, DatabaseShape.ADOPTED):
        known = {m.name for m in load_migrations()}
        unknown = [
            n
            for n in report.applied_migrations
            if n not in known and not n.startswith(ADOPTION_PREFIX)
        ]
        if unknown:
            add(
                Blocker(
                    "unknown_migrations",
                    "schema_migrations records migrations this mailpipe does not have: "
                    + ", ".join(unknown),
                    "run the mailpipe version that applied them (a newer one)",
                    OPERATOR,
                )
            )
        if report.pending_migrations:
            note(
                Finding(
                    "pending_migrations",
                    f"{len(report.pending_migrations)} migrations to apply: "
                    "run `mailpipe db migrate`",
                )
            )
        if report.shape == DatabaseShape.ADOPTED:
            _judge_adopted(report)
        return
    if report.shape == DatabaseShape.FRESH:
        note(Finding("fresh", "no mailpipe table yet: `mailpipe db migrate` creates them"))
        return

    _judge_app(report)


def _judge_adopted(report: PreflightReport) -> None:
    """An adopted database: only what is left of the runbook (secrets, cron) is reported."""
    secrets = report.plaintext_secrets
    if secrets.get("providers"):
        report.blockers.append(
            Blocker(
                "plaintext_credentials",
                f"{secrets['providers']} providers hold credentials in clear "
                f"({', '.join(secrets['provider_names'])}; "
                f"columns {', '.join(secrets['columns'])})",
                "move each into a Prefect Secret block or an env var and store only the reference "
                "(`mailpipe provider adopt`)",
                PROVIDER_ADOPT,
            )
        )
    _note_cron(report)


def _judge_app(report: PreflightReport) -> None:
    """Blockers and findings on the app's shape (before or after the seed's hardening)."""
    add = report.blockers.append
    tables = {t.name: t for t in report.tables}
    events = tables["communication_events"]
    if report.shape == DatabaseShape.ADOPTING:
        report.findings.append(
            Finding(
                "adoption_incomplete",
                "`mailpipe db adopt` started here and did not finish: run it again (each of its "
                "statements is idempotent)",
            )
        )

    if report.applied_migrations and report.shape != DatabaseShape.ADOPTING:
        add(
            Blocker(
                "mailpipe_partially_applied",
                f"schema_migrations records {', '.join(report.applied_migrations)} on the app's "
                "tables: an earlier `mailpipe db migrate` ran here, skipped the app's existing "
                "tables (CREATE TABLE IF NOT EXISTS) and stopped",
                "those records changed nothing the app uses: delete them (DELETE FROM "
                "schema_migrations) before adopting; on the app's database run `mailpipe db "
                "adopt`, never `mailpipe db migrate` first",
                OPERATOR,
            )
        )
    if events.id_type and events.id_type not in ("bigint", "integer"):
        add(
            Blocker(
                "uuid_ids" if events.id_type == "uuid" else "id_type",
                f"communication_events.id is {events.id_type}; mailpipe's engine and migrations "
                "assume bigint ids (claims, --id, confirmations' foreign keys)",
                "mailpipe works with either id type (event_ids()); `mailpipe db adopt` types "
                "its new references like this id",
                ADOPT,
            )
        )
    missing = [s for s in STATUSES if s not in report.status_values]
    if report.status_values and missing:
        add(
            Blocker(
                "enum_status",
                f"communication_events.status is the enum {report.status_type} without "
                f"the values mailpipe writes: {', '.join(missing)}",
                "adoption adds them (ALTER TYPE ... ADD VALUE: no table lock, cannot be "
                "undone); the app's code that reads status must accept them",
                ADOPT,
            )
        )
    if report.unknown_statuses:
        counted = ", ".join(f"{s} ({n})" for s, n in sorted(report.unknown_statuses.items()))
        add(
            Blocker(
                "unknown_statuses",
                f"statuses in use that mailpipe does not know: {counted}",
                "map each to one of mailpipe's statuses (" + ", ".join(STATUSES) + ") or settle "
                "those rows before adopting: `mailpipe db adopt` refuses while they remain "
                "(mailpipe would neither send nor report them)",
                OPERATOR,
            )
        )
    if report.priority_type == "text":
        add(
            Blocker(
                "text_priority",
                "communication_events.priority is text (low, normal, high, urgent); mailpipe "
                "orders claims by an integer 0-9",
                "adoption maps the app's priorities to mailpipe's order, keeping the app's column",
                ADOPT,
            )
        )
    key_less = [w["function"] for w in report.event_writers if not w["sets_template_key"]]
    counts = report.template_keys
    add(
        Blocker(
            "template_columns",
            "template data is in variables, template_variables or payload, and "
            f"{counts.get('without_key', 0)} events have no template_key "
            f"({counts.get('pending_without_key', 0)} still queued or processing)"
            + (f"; writers that set none: {', '.join(key_less)}" if key_less else ""),
            "adoption maps template_id to template_key and the app's data columns to mailpipe's, "
            "so the app's writers keep producing deliverable events",
            ADOPT,
        )
    )
    secrets = report.plaintext_secrets
    if secrets.get("providers"):
        add(
            Blocker(
                "plaintext_credentials",
                f"{secrets['providers']} providers hold credentials in clear "
                f"({', '.join(secrets['provider_names'])}; "
                f"columns {', '.join(secrets['columns'])})",
                "move each into a Prefect Secret block or an env var and store only the reference "
                "(`mailpipe provider adopt`, after `mailpipe db adopt`); the references-only CHECK "
                "is refused while any remains",
                PROVIDER_ADOPT,
            )
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        report.findings.append(
            Finding(
                "timestamp_left",
                "smtp_connection_audit.updated_at stays timestamp without time zone: the audit "
                "is big and mailpipe never reads that column (no rewrite)",
            )
        )
    naive = [s for s in report.steps if s.action.endswith("timestamptz (values read as UTC)")]
    if naive:
        add(
            Blocker(
                "timestamp_without_time_zone",
                "columns stored as timestamp without time zone: "
                + ", ".join(f"{s.table}.{s.action.split()[0]}" for s in naive),
                "adoption converts them to timestamptz reading the values as UTC (a rewrite of "
                "these small tables); check the app wrote them in UTC",
                ADOPT,
            )
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        failed = report.template_keys.get("failed_by_validation", 0)
        add(
            Blocker(
                "validation_trigger",
                "the seed's validate_communication_event trigger (BEFORE INSERT OR UPDATE) fails "
                f"every event without template_key; {failed} events were failed that way",
                "adoption replaces it with one that accepts template_id; the failed events can be "
                "re-queued after (`mailpipe queue retry`)",
                ADOPT,
            )
        )

    # Findings: what adoption and cutover must respect, not blocking.
    _note_cron(report)
    _note_app(report)


def _note_cron(report: PreflightReport) -> None:
    """Findings about pg_cron and pg_net (before and after adoption)."""
    note = report.findings.append
    jobs = report.cron.get("jobs", [])
    active_seed = [j["job_name"] for j in jobs if j["seed_job"] and j["active"]]
    if active_seed:
        note(
            Finding(
                "cron_jobs_active",
                f"pg_cron runs {', '.join(active_seed)}: run `mailpipe cutover` before starting "
                "mailpipe's deployments (never both pipelines at once)",
            )
        )
    others = [j["job_name"] for j in jobs if not j["seed_job"] and j["touches_email"]]
    if others:
        note(
            Finding(
                "other_email_jobs",
                f"other pg_cron jobs touch email: {', '.join(others)}: pause them too "
                "(`mailpipe cutover --job NAME`) if they send from communication_events",
            )
        )
    tokens = [j["job_name"] for j in jobs if j["inline_bearer_token"]]
    if tokens:
        note(
            Finding(
                "bearer_tokens_in_cron",
                f"{len(tokens)} pg_cron job commands carry a bearer key in clear "
                f"({', '.join(tokens)}); `mailpipe cutover --finalize` removes them, then rotate "
                "the key",
            )
        )
    if report.net_queue:
        note(
            Finding("net_queue", f"{report.net_queue} HTTP calls queued in net.http_request_queue")
        )


def _note_app(report: PreflightReport) -> None:
    """Findings about the app's triggers, references and policies."""
    note = report.findings.append
    for trigger in report.event_triggers:
        if trigger["notifies"]:
            note(
                Finding(
                    "instant_notify",
                    f"trigger {trigger['trigger_name']} notifies '{trigger['notifies']}' "
                    "on insert: "
                    "if something still listens and sends, mail goes out twice; stop that listener "
                    "at cutover",
                )
            )
    for ref in report.event_references:
        if ref["on_delete"] == "CASCADE":
            note(
                Finding(
                    "cascade_delete",
                    f"{ref['table_name']} rows are deleted with their event (ON DELETE CASCADE): "
                    "purging events also purges the app's rows there",
                )
            )
    by_roles: dict[tuple[str, ...], list[str]] = {}
    for need in report.roles_needing_policies:
        by_roles.setdefault(tuple(need["roles"]), []).append(need["table"])
    for roles, tables_without in by_roles.items():
        note(
            Finding(
                "rls_policy_needed",
                f"row-level security gives {', '.join(roles)} no rows on "
                f"{', '.join(tables_without)}: adoption adds policies for them",
            )
        )
