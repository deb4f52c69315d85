"""The fifth flow, process_email_feedback: applies the inbox, publishes its artifacts, checks
its rows with the email_feedback_events suite; ``mailpipe run process_email_feedback``."""

from __future__ import annotations

import pytest

from mailpipe.db import Database
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers.generic import parse_event
from mailpipe.feedback.vocabulary import Verification
from tests.cli_support import fetch, ok_json, with_db
from tests.factories import run_artifacts
from tests.feedback.support import add_sent_message


@pytest.fixture(autouse=True, scope="module")
def _prefect_logging_outside_cli_runner() -> None:
    import prefect.main  # noqa: F401  (Prefect's handlers on pytest's streams, not CliRunner's)


async def feedback_for_three_messages(db: Database) -> None:
    """A hard bounce, a complaint and a delivery of our messages, and one event of nobody's."""
    bounced = await add_sent_message(db, "gone@example.com")
    complained = await add_sent_message(db, "angry@example.com")
    delivered = await add_sent_message(db, "happy@example.com")
    events = [
        {"id": "b1", "kind": "hard_bounce", "message_id": bounced["message_id"]},
        {"id": "c1", "kind": "complaint", "message_id": complained["message_id"]},
        {"id": "d1", "kind": "delivered", "message_id": delivered["message_id"]},
        {"id": "x1", "kind": "delivered", "message_id": "<not-ours@elsewhere.example>"},
    ]
    await store_events(db, [parse_event(e, Verification.SHARED_SECRET) for e in events])


async def test_flow_applies_publishes_and_checks_its_rows(
    prefect_harness, db: Database, env_database: str
) -> None:
    from flows.process_email_feedback import process_email_feedback

    await feedback_for_three_messages(db)
    state = await process_email_feedback(batch_size=2, return_state=True)
    assert state.is_completed(), state.message
    summary = await state.aresult()
    assert (summary["applied"], summary["unmatched"], summary["errors"]) == (3, 1, 0)
    assert (summary["status_changes"], summary["suppressions"], summary["attempts"]) == (3, 2, 1)
    assert summary["batches"] == 2
    assert summary["backlog"]["unmatched_retrying"] == 1 and summary["backlog"]["due"] == 0
    by_key = await run_artifacts(state.state_details.flow_run_id)
    assert {"process-email-feedback-summary", "process-email-feedback-report"} <= set(by_key)
    assert "**3 applied**" in by_key["process-email-feedback-report"].data
    check = await db.fetch_one(
        "SELECT flow_name, status, report FROM quality_checks ORDER BY id DESC LIMIT 1"
    )
    assert check is not None
    assert (check["flow_name"], check["status"]) == ("process_email_feedback", "passed")
    suites = {s["suite"]: s for s in check["report"]["suites"]}
    assert {"email_feedback_events", "delivery_attempts"} <= set(suites)
    assert suites["email_feedback_events"]["success"]
    assert suites["email_feedback_events"]["window_since"]  # the run's rows, not the table

    again = await process_email_feedback()
    assert again["applied"] == 0  # nothing due: one effect per event, and no check run
    assert (
        await db.fetch_value(
            "SELECT count(*) FROM quality_checks WHERE flow_name = 'process_email_feedback'"
        )
        == 1
    )


def test_mailpipe_run_process_email_feedback(prefect_harness, env_database: str) -> None:
    with_db(env_database, feedback_for_three_messages)
    summary = ok_json("run", "process_email_feedback", "--param", "check_quality=false")
    assert (summary["applied"], summary["suppressions"]) == (3, 2)
    assert fetch(env_database, "SELECT count(*) AS n FROM quality_checks") == [{"n": 0}]
