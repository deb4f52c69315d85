"""What the user sees of feedback: the daily snapshot's delivered / bounced / complained, the
bounce_rate and complaint_rate alert rules, and ``mailpipe queue list`` / ``show``."""

from __future__ import annotations

from typing import Any

from mailpipe.alert_rules import evaluate_rules
from mailpipe.alerts import apply_alerts
from mailpipe.config import get_settings
from mailpipe.db import Database
from mailpipe.feedback.apply import apply_feedback
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers.generic import parse_event
from mailpipe.feedback.vocabulary import Verification
from mailpipe.metrics import collect_metrics
from mailpipe.snapshots import snapshot_day, today
from tests.cli_support import fails, ok, ok_json, with_db
from tests.feedback.support import add_sent_message


async def report(db: Database, *events: dict[str, Any]) -> None:
    """Store events as the generic route does (already authenticated), then apply them."""
    await store_events(db, [parse_event(e, Verification.SHARED_SECRET) for e in events])
    await apply_feedback(db)


async def test_snapshot_counts_what_providers_reported_per_provider(db: Database) -> None:
    a1 = await add_sent_message(db, "a1@example.com", provider="alpha")
    a2 = await add_sent_message(db, "a2@example.com", provider="alpha")
    a3 = await add_sent_message(db, "a3@example.com", provider="alpha")
    b1 = await add_sent_message(db, "b1@example.com", provider="beta")
    await report(
        db,
        {"id": "1", "kind": "delivered", "message_id": a1["message_id"]},
        {"id": "2", "kind": "delivered", "message_id": a1["message_id"]},  # counted once
        {"id": "3", "kind": "hard_bounce", "message_id": a2["message_id"]},
        {"id": "4", "kind": "delivered", "message_id": a3["message_id"]},
        {"id": "5", "kind": "complaint", "message_id": a3["message_id"]},
        {"id": "6", "kind": "delivered", "message_id": b1["message_id"]},
        {"id": "7", "kind": "soft_bounce", "message_id": b1["message_id"]},  # no column
        {"id": "8", "kind": "hard_bounce", "message_id": "<not-ours@x.example>"},  # unmatched
    )
    day = await today(db, "UTC")
    snapshot = await snapshot_day(db, day, "UTC")
    rows = {r["provider_name"]: r for r in snapshot.rows}
    figures = {
        k: (r["sent"], r["delivered"], r["bounced"], r["complained"]) for k, r in rows.items()
    }
    assert figures == {
        "*": (4, 3, 1, 1),
        "alpha": (3, 2, 1, 1),
        "beta": (1, 1, 0, 0),
    }
    comments = await db.fetch_all(
        "SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment"
        " FROM pg_attribute AS a WHERE a.attrelid = 'email_health_snapshots'::regclass"
        " AND a.attname IN ('delivered', 'bounced', 'complained')"
    )
    assert {c["attname"] for c in comments if c["comment"]} == {
        "delivered",
        "bounced",
        "complained",
    }
    # Yesterday saw none of it: the counts are per day the reports arrived.
    earlier = await snapshot_day(db, day.fromordinal(day.toordinal() - 1), "UTC")
    assert {r["bounced"] for r in earlier.rows} == {0}


async def test_snapshot_hard_bounce_rate_counts_each_message_once(db: Database) -> None:
    # The day: 10 messages accepted, 3 of them reported bounced later the same day; one message
    # accepted two days ago and reported bounced today; 2 refused with 550 at send time.
    sent = [await add_sent_message(db, f"s{i}@example.com") for i in range(10)]
    old = await add_sent_message(db, "old@example.com")
    await db.execute(
        "UPDATE smtp_delivery_confirmations SET created_at = now() - interval '2 days'"
        " WHERE id = %s",
        (old["confirmation_id"],),
    )
    await db.execute(
        "UPDATE communication_events SET sent_at = now() - interval '2 days',"
        " created_at = now() - interval '2 days' WHERE id = %s",
        (old["event_id"],),
    )
    for i in range(2):
        await db.execute(
            "WITH e AS (INSERT INTO communication_events (event_type, recipient_email,"
            " template_key, status, error_class, provider_name) VALUES ('welcome', %s, 'welcome',"
            " 'failed', 'bounced', 'primary') RETURNING id)"
            " INSERT INTO delivery_attempts (communication_event_id, provider_name, outcome,"
            " smtp_code, error) SELECT id, 'primary', 'bounced', 550, '550 5.1.1 unknown' FROM e",
            (f"refused{i}@example.com",),
        )
    await report(
        db,
        *[
            {"id": f"b{i}", "kind": "hard_bounce", "message_id": m["message_id"]}
            for i, m in enumerate([*sent[:3], old])
        ],
    )
    day = await today(db, "UTC")
    row = next(r for r in (await snapshot_day(db, day, "UTC")).rows if r["provider_name"] == "*")
    assert (row["sent"], row["failed"], row["hard_bounces"], row["bounced"]) == (10, 2, 6, 4)
    # 6 bounces among 13 distinct messages: the 10 accepted (3 of them bounced later), the 2
    # refused, the one accepted earlier. Counting the 3 twice (sent + hard_bounces = 16) made it
    # read 6/16.
    assert row["hard_bounce_rate"] == 6 / 13
    assert row["delivery_success_rate"] == 10 / 12
    comment = await db.fetch_value(
        "SELECT col_description('email_health_snapshots'::regclass, attnum) FROM pg_attribute"
        " WHERE attrelid = 'email_health_snapshots'::regclass AND attname = 'hard_bounce_rate'"
    )
    assert "accepted that same day" in comment


async def test_bounce_and_complaint_rates_count_feedback_once_and_alert(db: Database) -> None:
    sent = [await add_sent_message(db, f"u{i}@example.com") for i in range(50)]
    await report(
        db,
        *[
            {"id": f"b{i}", "kind": "hard_bounce", "message_id": sent[i]["message_id"]}
            for i in range(3)
        ],
        {"id": "c0", "kind": "complaint", "message_id": sent[10]["message_id"]},
    )
    # The bounced attempts feedback records are history, not a second bounce each.
    assert (
        await db.fetch_value("SELECT count(*) FROM delivery_attempts WHERE outcome = 'bounced'")
        == 3
    )
    metrics = await collect_metrics(db, ["24h"])
    window = metrics.window("24h")
    assert window is not None
    assert (window.sent, window.bounced, window.feedback_bounced, window.complaints) == (
        50,
        0,
        3,
        1,
    )
    assert window.bounce_rate == 3 / 50 and window.complaint_rate == 1 / 50
    assert window.failure_rate == 0  # a bounce reported later is not a failed SMTP attempt
    verdicts = {(e.rule, e.scope): e for e in evaluate_rules(metrics, get_settings())}
    bounce, complaint = verdicts["bounce_rate", "all"], verdicts["complaint_rate", "all"]
    assert (bounce.state, bounce.severity, bounce.threshold) == ("firing", "warning", 0.05)
    assert bounce.details["bounced_after_acceptance"] == 3
    assert (complaint.state, complaint.severity, complaint.threshold) == (
        "firing",
        "critical",
        0.005,
    )
    opened = await apply_alerts(db, list(verdicts.values()))
    assert {(t.kind, t.alert.rule) for t in opened} >= {
        ("opened", "bounce_rate"),
        ("opened", "complaint_rate"),
    }


def test_queue_list_and_show_give_an_events_feedback(env_database: str) -> None:
    async def setup(db: Database) -> dict[str, Any]:
        gone = await add_sent_message(db, "gone@example.com")
        await add_sent_message(db, "quiet@example.com")
        await report(
            db,
            {"id": "d", "kind": "delivered", "message_id": gone["message_id"]},
            {
                "id": "b",
                "kind": "hard_bounce",
                "message_id": gone["message_id"],
                "reason": "550 5.1.1 user unknown",
            },
        )
        return gone

    gone = with_db(env_database, setup)
    rows = {r["recipient_email"]: r for r in ok_json("queue", "list")}
    assert rows["quiet@example.com"]["feedback"] is None
    feedback = rows["gone@example.com"]["feedback"]
    assert (feedback["kind"], feedback["events"], feedback["confirmation_status"]) == (
        "hard_bounce",
        2,
        "bounced",
    )
    assert "hard_bounce" in ok("queue", "list").output

    shown = ok_json("queue", "show", str(gone["event_id"]))
    assert shown["event"]["confirmation_status"] == "bounced"
    assert [f["kind"] for f in shown["feedback"]] == ["delivered", "hard_bounce"]
    assert shown["feedback"][1]["effect"] == [
        "status:bounced",
        "suppressed:hard_bounce",
        "attempt:bounced",
    ]
    text = ok("queue", "show", str(gone["event_id"])).output
    assert "latest: hard_bounce" in text and "550 5.1.1 user unknown" in text
    assert fails("queue", "show", "abc").startswith("error: no event 'abc'")
    assert fails("queue", "show", "987654321").startswith("error: no event '987654321'")
