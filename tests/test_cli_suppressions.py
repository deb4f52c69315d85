"""``mailpipe suppression`` through the real CLI; its effect on the next delivery run."""

from __future__ import annotations

import datetime as dt

from mailpipe.delivery import drain_queue
from mailpipe.testing.smtpd import SMTPTestServer
from tests.cli_support import add_local_provider, execute, fails, ok, ok_json, with_db
from tests.factories import add_template, insert_events


def test_add_list_remove_and_the_flow_obeys(env_database: str, smtpd: SMTPTestServer) -> None:
    result = ok(
        "suppression",
        "add",
        "Ann@Example.com",
        "blocked.example",
        "--reason",
        "complaint",
        "--expires",
        "30d",
    )
    assert "suppressed 2 new entries" in result.output
    again = ok_json("suppression", "add", "ann@example.com", "bob@example.com")
    assert (again["added"], again["already_suppressed"]) == (1, 1)

    listed = {r["address"]: r for r in ok_json("suppression", "list")}
    assert set(listed) == {"ann@example.com", "blocked.example", "bob@example.com"}
    ann = listed["ann@example.com"]
    assert (ann["kind"], ann["reason"], ann["source"]) == ("address", "complaint", "mailpipe cli")
    expires = dt.datetime.fromisoformat(ann["expires_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < expires <= dt.timedelta(days=30)
    assert listed["blocked.example"]["kind"] == "domain"
    assert listed["bob@example.com"]["expires_at"] is None

    add_local_provider(smtpd, "shop@example.com")

    async def deliver(db) -> dict[str, int]:
        await add_template(db)
        await insert_events(db, 2, domain="blocked.example")
        for to in ("ann@example.com", "carl@example.com"):
            await db.execute(
                "INSERT INTO communication_events (event_type, recipient_email,"
                " template_key, payload) VALUES ('w', %s, 'welcome',"
                ' \'{"name": "A"}\')',
                (to,),
            )
        return dict((await drain_queue(db, batch_size=10)).counts)

    assert with_db(env_database, deliver) == {"suppressed": 3, "sent": 1}
    assert [m.rcpt_tos for m in smtpd.accepted] == [["carl@example.com"]]

    ok("suppression", "remove", "ANN@example.com")
    assert "'ann@example.com' is not suppressed" in fails(
        "suppression", "remove", "ann@example.com"
    )
    assert "ann@example.com" not in {r["address"] for r in ok_json("suppression", "list")}
    ok("queue", "retry", "--status", "suppressed")
    assert with_db(env_database, lambda db: drain_queue(db, batch_size=10)).counts == {
        "sent": 1,
        "suppressed": 2,
    }
    assert "complaint" in ok("suppression", "list").output


def test_expired_entries_and_bad_input(env_database: str) -> None:
    ok("suppression", "add", "old@example.com")
    execute(env_database, "UPDATE email_suppressions SET expires_at = now() - interval '1 day'")
    assert ok_json("suppression", "list") == []
    assert [r["address"] for r in ok_json("suppression", "list", "--all")] == ["old@example.com"]

    assert "neither an address" in fails("suppression", "add", "two words@example.com")
    assert "not a domain" in fails("suppression", "add", "localhost")
    assert "--reason 'spam' is not one of hard_bounce" in fails(
        "suppression", "add", "a@example.com", "--reason", "spam"
    )
    assert "is in the past" in fails(
        "suppression", "add", "a@example.com", "--expires", "2020-01-01T00:00:00+00:00"
    )
    assert "has no timezone" in fails(
        "suppression", "add", "a@example.com", "--expires", "2030-01-01"
    )
    assert [r["address"] for r in ok_json("suppression", "list", "--all")] == ["old@example.com"]
