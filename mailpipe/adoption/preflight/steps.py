"""The adoption steps for each shape: what each would lock and what it would rewrite."""

from __future__ import annotations

from mailpipe.adoption.preflight.model import (
    _APP_SHAPES,
    TABLES,
    DatabaseShape,
    PreflightReport,
    Step,
    TableReport,
)


def _steps(
    report: PreflightReport, tables: dict[str, TableReport], columns: dict[str, dict[str, str]]
) -> list[Step]:
    """The adoption steps for this shape, each with its lock and what it rewrites."""
    if report.shape == DatabaseShape.FRESH:
        return [
            Step(
                "*", "mailpipe db migrate creates every table", "none (new tables)", "nothing", True
            )
        ]
    if report.shape in (DatabaseShape.MAILPIPE, DatabaseShape.ADOPTED):
        return [
            Step("*", f"mailpipe db migrate applies {name}", "per migration", "see the file", True)
            for name in report.pending_migrations
        ]
    if report.shape not in _APP_SHAPES:
        return []
    brief = "ACCESS EXCLUSIVE, brief (catalog only; under lock_timeout)"
    scan = "SHARE UPDATE EXCLUSIVE (reads and writes go on)"
    events = tables["communication_events"].estimated_rows or 0
    steps = [
        Step(
            "communication_events",
            "add mailpipe's columns (message_id, idempotency_key, "
            "lease_expires_at, ...), nullable or with constant defaults",
            brief,
            "no rows",
        ),
        Step(
            "communication_events",
            "map the app's columns: template_id -> template_key, "
            "variables/template_variables/payload -> template data, text priority -> "
            "mailpipe's order (configurable, the app's columns kept)",
            "row locks, batches of 1000",
            f"~{events} rows updated in batches",
        ),
        Step(
            "communication_events",
            "add CHECK constraints NOT VALID, then VALIDATE",
            scan,
            "no rows (one scan)",
        ),
        Step(
            "communication_events",
            "create the claim and idempotency indexes CONCURRENTLY",
            scan,
            "no rows (one scan per index)",
        ),
        Step(
            "smtp_provider_configs",
            "move each password into a Prefect Secret block or an "
            "env var and store the reference (mailpipe provider adopt)",
            "row locks",
            f"{report.plaintext_secrets.get('providers', 0)} rows",
        ),
        Step(
            "smtp_provider_configs",
            "add mailpipe's provider columns (db adopt); the references-only CHECKs NOT VALID + "
            "VALIDATE come with `mailpipe provider adopt --finalize`",
            brief,
            "no rows",
        ),
        Step(
            "smtp_delivery_confirmations",
            "add communication_event_id "
            f"({tables['communication_events'].id_type}) with its foreign key NOT VALID, "
            "then VALIDATE",
            scan,
            "no rows",
        ),
        Step("smtp_connection_audit", "add mailpipe's audit columns", brief, "no rows"),
    ]
    if "status" in columns["communication_events"] and report.status_type != "text":
        steps.insert(
            0,
            Step(
                "communication_events",
                f"ALTER TYPE {report.status_type} ADD VALUE for mailpipe's statuses",
                "none on the table",
                "no rows",
            ),
        )
    if report.shape == DatabaseShape.APP_AFTER_HARDENING:
        steps += [
            Step(
                "communication_events",
                "replace the seed's validate_communication_event "
                "trigger with one that accepts the app's template_id",
                "SHARE ROW EXCLUSIVE, brief",
                "no rows",
            ),
            *(
                Step(
                    table,
                    f"{column} timestamp -> timestamptz (values read as UTC)",
                    "ACCESS EXCLUSIVE for the rewrite",
                    f"whole table (~{tables[table].estimated_rows or 0} rows)",
                )
                for table in TABLES
                for column, data_type in columns[table].items()
                # The audit is big and mailpipe never reads its updated_at: left as it is.
                if data_type == "timestamp without time zone" and table != "smtp_connection_audit"
            ),
        ]
    else:
        steps.append(
            Step(
                "rate_limit_counters",
                "create mailpipe's counters table",
                "none (new table)",
                "nothing",
            )
        )
    return steps
