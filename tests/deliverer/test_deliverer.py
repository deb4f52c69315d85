"""The deliverer in this process: woken by the trigger's NOTIFY, by polling without it,
through a database restart, beside other deliverers and the sweeper, and with a priority
lane that a bulk burst does not hold up. Real Postgres, real in-process SMTP servers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from mailpipe.db import Database
from mailpipe.delivery import drain_queue
from mailpipe.delivery.deliverer import APPLICATION_NAME, CHANNEL, DelivererOptions
from mailpipe.queue import enqueue
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer
from tests.deliverer.support import eventually, running
from tests.factories import add_provider, add_template, insert_events, take_events


def recipients(server: SMTPTestServer) -> list[str]:
    return [r for m in server.accepted for r in m.rcpt_tos]


async def test_the_trigger_notifies_once_per_statement_for_rows_due_now(
    db: Database, database_url: str
) -> None:
    async with db.listen(CHANNEL) as session:
        # Scheduled for later: no notification. Then one statement of three due rows.
        await insert_events(db, 2, scheduled_at=await db.fetch_value("SELECT now() + '1h'"))
        await db.execute(
            "INSERT INTO communication_events (event_type, recipient_email, template_key,"
            " priority, payload) SELECT 'welcome', 'u' || p || '@example.com', 'welcome', p,"
            " '{}' FROM unnest(ARRAY[7, 1, 4]) p"
        )
        # Made due by an UPDATE (an app moving scheduled_at, a retry): notifies too.
        await db.execute("UPDATE communication_events SET scheduled_at = now() WHERE priority = 5")
        first = await session.wait(timeout=10)
        second = await session.wait(timeout=10)
    assert [json.loads(p) for p in first + second] == [
        {"count": 3, "priority": "1"},
        {"count": 2, "priority": "5"},
    ]


async def test_a_notification_delivers_at_once_without_any_flow_run(
    ready: Database, database_url: str, smtpd: SMTPTestServer
) -> None:
    async with running(database_url) as deliverer:  # polls once an hour: only NOTIFY wakes it
        await enqueue(ready, "ann@example.com", "welcome", {"name": "Ann"}, priority=0)
        await insert_events(ready, 3, prefix="app")  # the application's own INSERT
        await eventually(lambda: len(smtpd.accepted) == 4, timeout=10, what="4 accepted")
    assert sorted(recipients(smtpd)) == [
        "ann@example.com",
        "app1@example.com",
        "app2@example.com",
        "app3@example.com",
    ]
    assert deliverer.deliverer.stats.notifications >= 1
    assert deliverer.deliverer.stats.counts["sent"] == 4
    rows = await ready.fetch_all("SELECT status, locked_by FROM communication_events")
    assert {(r["status"], r["locked_by"]) for r in rows} == {("sent", None)}


async def test_polling_delivers_when_notifications_are_off(
    ready: Database, database_url: str, smtpd: SMTPTestServer
) -> None:
    await ready.execute(
        "ALTER TABLE communication_events DISABLE TRIGGER notify_due_events_on_insert"
    )
    async with running(database_url, DelivererOptions(poll_seconds=0.2)) as deliverer:
        await insert_events(ready, 5)
        await eventually(lambda: len(smtpd.accepted) == 5, timeout=10, what="5 accepted")
    assert deliverer.deliverer.stats.notifications == 0


async def test_it_listens_again_after_the_database_cut_its_connections(
    ready: Database, database_url: str, smtpd: SMTPTestServer
) -> None:
    async with running(database_url) as deliverer:  # polls once an hour: only NOTIFY wakes it
        killed = await ready.fetch_value(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (APPLICATION_NAME,),
        )
        assert killed >= 2  # the LISTEN session and the pool's connection(s)
        await eventually(lambda: deliverer.deliverer.stats.listens >= 2, what="listening again")
        await eventually(lambda: deliverer.deliverer.idle, what="idle again")
        await insert_events(ready, 2)
        await eventually(lambda: len(smtpd.accepted) == 2, timeout=15, what="2 accepted")
    assert (
        await ready.fetch_value("SELECT count(*) FROM communication_events WHERE status = 'sent'")
    ) == 2


async def test_two_deliverers_and_the_sweeper_never_send_twice(
    ready: Database, database_url: str, smtpd: SMTPTestServer
) -> None:
    options = DelivererOptions(poll_seconds=0.5, batch_size=25, priority_batch_size=5)
    total = 600
    async with running(database_url, options), running(database_url, options):
        sweeping = asyncio.Event()

        async def sweeper() -> None:  # process_email_queue's engine, run after run
            while not sweeping.is_set():
                await drain_queue(ready, batch_size=50, time_budget=5)
                await asyncio.sleep(0)

        sweep = asyncio.create_task(sweeper())
        for i in range(12):  # statements of 50, mixed priorities
            await insert_events(ready, 50, priority=i % 10, prefix=f"s{i}-")
        await eventually(lambda: len(smtpd.accepted) >= total, timeout=60, what="all accepted")
        sweeping.set()
        await sweep
    ids = smtpd.accepted_message_ids()
    assert len(ids) == total and len(set(ids)) == total
    assert Counter(recipients(smtpd)).most_common(1)[0][1] == 1
    rows = await ready.fetch_all(
        "SELECT status, count(*) AS n FROM communication_events GROUP BY status"
    )
    assert rows == [{"status": "sent", "n": total}]


async def test_a_priority_event_is_not_held_up_by_a_bulk_burst(
    db: Database, database_url: str, smtpd_factory: object
) -> None:
    server = smtpd_factory(Behaviour(data_delay=0.004))  # type: ignore[operator]
    await add_provider(db, "primary", server, max_connections=2)
    await add_template(db)
    bulk = 2000
    async with running(database_url, DelivererOptions(poll_seconds=3600, batch_size=200)):
        await insert_events(db, bulk, priority=9, prefix="bulk")
        await eventually(lambda: len(server.accepted) >= 50, what="the burst is being sent")
        await enqueue(db, "reset@example.com", "welcome", {"name": "Ann"}, priority=0)
        await eventually(lambda: "reset@example.com" in recipients(server), what="reset sent")
        bulk_before = len(server.accepted) - 1
        await eventually(lambda: len(server.accepted) == bulk + 1, timeout=60, what="all sent")
    # Sent while most of the burst still waited: it did not queue behind the bulk batches.
    assert recipients(server).index("reset@example.com") <= bulk_before < bulk / 2, bulk_before


async def test_it_reports_started_heartbeats_and_stopped_to_prefect(
    ready: Database,
    database_url: str,
    smtpd: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    prefect_events: Any,
) -> None:
    from mailpipe.cli.deliver import prefect_report

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert prefect_report() is None  # no Prefect API: no events, no Prefect import
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    options = DelivererOptions(poll_seconds=3600, heartbeat_seconds=0.05)
    async with running(database_url, options, report=prefect_report()) as deliverer:
        await insert_events(ready, 2)
        await eventually(lambda: len(smtpd.accepted) == 2, what="2 accepted")
        sent = deliverer.deliverer.stats.heartbeats
        await eventually(lambda: deliverer.deliverer.stats.heartbeats > sent, what="heartbeat")
    events = take_events(prefect_events, "mailpipe.deliverer.")
    names = [e.event for e in events]
    assert names[0] == "mailpipe.deliverer.started" and names[-1] == "mailpipe.deliverer.stopped"
    assert "mailpipe.deliverer.heartbeat" in names
    assert events[-1].payload["sent"] == 2 and events[-1].payload["listens"] == 1
    assert events[-1].resource.id.startswith("mailpipe.deliverer.")


async def test_both_lanes_share_the_providers_quota(
    db: Database, database_url: str, smtpd: SMTPTestServer
) -> None:
    await add_provider(db, "primary", smtpd, per_minute_limit=5)
    await add_template(db)
    async with running(database_url) as deliverer:
        # One statement: 3 urgent and 10 bulk events; either lane may claim the urgent ones.
        await db.execute(
            "INSERT INTO communication_events (event_type, recipient_email, template_key,"
            " priority, payload) SELECT 'welcome', (CASE WHEN g <= 3 THEN 'urgent' ELSE 'bulk'"
            " END) || g || '@example.com', 'welcome', CASE WHEN g <= 3 THEN 0 ELSE 9 END,"
            ' \'{"name": "Ann"}\' FROM generate_series(1, 13) g'
        )
        await eventually(lambda: len(smtpd.accepted) == 5, what="5 accepted")
        await eventually(lambda: deliverer.deliverer.idle, what="idle")
    assert len(smtpd.accepted) == 5  # the minute's quota, for both lanes together
    assert {f"urgent{g}@example.com" for g in (1, 2, 3)} <= set(recipients(smtpd))
    deferred = await db.fetch_all(
        "SELECT last_error FROM communication_events"
        " WHERE status = 'queued' AND scheduled_at > now()"
    )
    assert len(deferred) == 8
    assert all(r["last_error"].startswith("rate limited") for r in deferred)
