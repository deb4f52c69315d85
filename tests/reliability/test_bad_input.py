"""Bad input, property-based: every public entry point either refuses with a clear error or
stores a row that ends sent or failed with a reason. Never a crashed batch, never a lost
row (rows are counted before and after), never code execution, never an injected header.

Entry points: ``mailpipe.enqueue``, ``mailpipe enqueue`` (CLI), plain SQL inserts (what the
application does), template variables, template sources, provider settings.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailpipe.db import Database, Jsonb
from mailpipe.delivery import drain_queue
from mailpipe.errors import DatabaseError, MailpipeError
from mailpipe.providers import (
    InvalidProvider,
    add_provider,
    credentials_reference,
    update_provider,
)
from mailpipe.queue import MAX_PAYLOAD_BYTES, InvalidEvent, enqueue
from mailpipe.templates import TemplateProblem, save_template
from mailpipe.testing.smtpd import SMTPTestServer
from tests import factories
from tests.cli_support import fetch, invoke
from tests.reliability.strategies import (
    CANARY,
    ESCAPES,
    addresses,
    header_values,
    json_values,
    python_payloads,
    template_sources,
)
from tests.reliability.support import Figures

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "40"))
# derandomize=False is not redundant: Hypothesis loads its "ci" profile (derandomize=True)
# when CI, GITHUB_ACTIONS, GITLAB_CI... is set; these properties draw new examples every run.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# The header fields a mailpipe message carries; anything else in a sent message was injected.
HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "x-mailpipe-event",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
_counts: dict[str, int] = {}


def count(entry_point: str) -> None:
    """One more example of ``entry_point`` passed every check (figures for the report)."""
    _counts[entry_point] = _counts.get(entry_point, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _record_examples(figures: Figures):
    yield
    for entry_point, n in sorted(_counts.items()):
        figures.record("bad_input", entry_point, examples=n)


def one_clear_line(error: BaseException) -> None:
    text = str(error)
    assert isinstance(error, MailpipeError), repr(error)
    assert text.strip() and "\n" not in text and "\r" not in text, repr(text)
    assert "Traceback" not in text


async def rows(db: Database) -> int:
    return await db.fetch_value("SELECT count(*) FROM communication_events")


@pytest.fixture
async def ready(db: Database, smtpd: SMTPTestServer) -> Database:
    """A provider and templates using variables in every part (subject, text, HTML)."""
    await factories.add_provider(db, "primary", smtpd, max_connections=2)
    await factories.add_template(db)
    await factories.add_template(
        db, "vars", subject="{{ subject }}", text_body="{{ body }}\n", html_body="<p>{{ body }}</p>"
    )
    return db


# ------------------------------------------------------------------ enqueue (Python API)


@FUZZ
@given(
    to=addresses(),
    template=st.one_of(st.just("welcome"), header_values()),
    data=python_payloads(),
    priority=st.one_of(st.integers(-3, 12), st.sampled_from([True, 5.0, "5", None])),
    event_type=st.one_of(st.none(), header_values()),
    key=st.one_of(st.none(), header_values()),
)
async def test_enqueue_refuses_clearly_or_stores_exactly_one_row(
    ready: Database,
    to: str,
    template: str,
    data: Any,
    priority: Any,
    event_type: Any,
    key: Any,
) -> None:
    before = await rows(ready)
    try:
        queued = await enqueue(
            ready, to, template, data, priority=priority, event_type=event_type, idempotency_key=key
        )
    except InvalidEvent as exc:
        one_clear_line(exc)
        assert await rows(ready) == before
        count("enqueue API")
        return
    assert await rows(ready) == before + (1 if queued.created else 0)
    row = await ready.fetch_one(
        "SELECT recipient_email, template_key, status, last_error,"
        " message_id FROM communication_events WHERE id = %s",
        (queued.id,),
    )
    assert row is not None and row["message_id"] == queued.message_id
    if queued.created:
        assert (row["recipient_email"], row["template_key"]) == (to, template)
    # Stored: queued, or already failed by the database's own validation, with a reason.
    assert row["status"] == "queued" or (row["status"] == "failed" and row["last_error"])
    count("enqueue API")


# ------------------------------------------------------------------ mailpipe enqueue (CLI)


def no_nul(text: str) -> str:
    return text.replace("\x00", "")  # a process's arguments cannot carry NUL


@FUZZ
@given(
    to=addresses().map(no_nul),
    template=header_values().map(no_nul),
    data=st.one_of(
        json_values().map(json.dumps),
        st.text(max_size=40).map(no_nul),
        st.sampled_from(
            ["{", "[]", "null", '"x"', "1e999", "NaN", '{"a": NaN}', '{"a": Infinity}', "{" * 5000]
        ),
    ),
    priority=st.one_of(st.integers(-3, 12).map(str), st.text(max_size=4).map(no_nul)),
    at=st.one_of(
        st.none(),
        st.sampled_from(
            ["10m", "2026-01-01", "2026-01-01T09:00:00Z", "yesterday", "0m", "-5m", "9" * 30 + "d"]
        ),
    ),
)
def test_enqueue_cli_refuses_with_one_line_or_queues_one_row(
    env_database: str,
    to: str,
    template: str,
    data: str,
    priority: str,
    at: str | None,
) -> None:
    before = fetch(env_database, "SELECT count(*) AS n FROM communication_events")[0]["n"]
    args = [
        "enqueue",
        "--to",
        to,
        "--template",
        template or "welcome",
        "--data",
        data,
        "--priority",
        priority,
        "--json",
    ]
    if at is not None:
        args += ["--at", at]
    result = invoke(*args)
    after = fetch(env_database, "SELECT count(*) AS n FROM communication_events")[0]["n"]
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert after in (before, before + 1)
        assert json.loads(result.stdout)["message_id"]
    else:
        assert result.exit_code == 1, result.output  # usage errors too: one line, exit 1
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(
            result.exception
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert after == before
    count("mailpipe enqueue (CLI)")


# ------------------------------------------------------------------ plain SQL inserts + a drain


def check_sent_message(content: bytes, recipient_rows: dict[str, dict]) -> None:
    """A sent message carries only mailpipe's headers, once each, to its event's recipient."""
    message = email.message_from_bytes(content, policy=email.policy.default)
    names = [k.lower() for k in message]
    assert set(names) <= HEADERS, names
    assert len(names) == len(set(names)), names
    row = recipient_rows[message["Message-ID"]]
    assert message["X-Mailpipe-Event"] == str(row["id"])


@FUZZ
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {
                "recipient_email": st.one_of(addresses().map(no_nul), st.none()),
                "template_key": st.sampled_from(["welcome", "vars", "missing", "", "  ", None]),
                "event_type": st.one_of(
                    st.just("welcome"), st.none(), st.just(""), header_values().map(no_nul)
                ),
                "priority": st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 9)),
                "payload": st.one_of(
                    json_values(),
                    st.fixed_dictionaries(
                        {
                            "name": json_values(),
                            "subject": header_values().map(no_nul),
                            "body": header_values().map(no_nul),
                        }
                    ),
                ),
            }
        ),
        min_size=1,
        max_size=8,
    )
)
async def test_rows_inserted_with_plain_sql_all_end_sent_or_failed_with_a_reason(
    ready: Database,
    smtpd: SMTPTestServer,
    events: list[dict[str, Any]],
) -> None:
    before = await rows(ready)
    inserted: list[int] = []
    for event in events:
        try:
            inserted.append(
                await ready.fetch_value(
                    "INSERT INTO communication_events (event_type, recipient_email, template_key,"
                    " priority, payload) VALUES (%(event_type)s, %(recipient_email)s,"
                    " %(template_key)s, %(priority)s, %(payload)s) RETURNING id",
                    {**event, "payload": Jsonb(event["payload"])},
                )
            )
        except DatabaseError as exc:  # Postgres refused the row itself: the app sees why
            one_clear_line(exc)
    assert await rows(ready) == before + len(inserted)
    accepted_before = len(smtpd.accepted)
    await drain_queue(ready, batch_size=5, concurrency=2)  # never raises
    assert await rows(ready) == before + len(inserted)
    done = await ready.fetch_all(
        "SELECT id, status, last_error, error_class, message_id FROM communication_events"
        " WHERE id = ANY(%s)",
        (inserted,),
    )
    assert {r["status"] for r in done} <= {"sent", "failed"}, done
    assert all(r["last_error"] for r in done if r["status"] == "failed"), done
    by_message = {r["message_id"]: r for r in done}
    new = smtpd.accepted[accepted_before:]
    assert sorted(m.message_id for m in new) == sorted(
        r["message_id"] for r in done if r["status"] == "sent"
    )
    for message in new:
        check_sent_message(message.content, by_message)
    count("plain SQL insert + drain")


# ------------------------------------------------------------------ template variables


@FUZZ
@given(
    subject=header_values().map(no_nul),
    body=st.one_of(
        header_values().map(no_nul),
        st.text(max_size=300).map(no_nul),
        st.sampled_from(
            [
                "line\r\n.\r\nQUIT\r\n",
                ".\n",
                "..",
                "From: x\n\nbody",
                "--=_mailpipe_boundary\n",
                "=?utf-8?b?AAAA?=",
                "é" * 5000,
                "a" * 20_000,
            ]
        ),
    ),
    to=st.sampled_from(["ann@example.com", "jörg@example.com"]),
)  # ASCII, SMTPUTF8
async def test_template_variables_never_become_headers_and_arrive_intact(
    ready: Database,
    smtpd: SMTPTestServer,
    subject: str,
    body: str,
    to: str,
) -> None:
    payload = {"subject": subject, "body": body}
    try:
        queued = await enqueue(ready, to, "vars", payload)
    except InvalidEvent as exc:
        # Only a subject that would break the header line is refused, with the reason, before
        # anything is queued; the engine refuses the same event (an application's INSERT).
        one_clear_line(exc)
        assert str(exc).startswith("header injection refused: Subject"), exc
        [event_id] = await factories.insert_events(ready, 1, template="vars", payload=payload)
        accepted_before = len(smtpd.accepted)
        await drain_queue(ready, batch_size=5)
        row = await ready.fetch_one(
            "SELECT status, last_error, error_class FROM communication_events WHERE id = %s",
            (event_id,),
        )
        assert row == {"status": "failed", "last_error": str(exc), "error_class": "invalid"}
        assert len(smtpd.accepted) == accepted_before
        count("template variables")
        return
    accepted_before = len(smtpd.accepted)
    await drain_queue(ready, batch_size=5)
    row = await ready.fetch_one(
        "SELECT id, status, last_error, error_class FROM communication_events WHERE id = %s",
        (queued.id,),
    )
    assert row is not None
    new = smtpd.accepted[accepted_before:]
    assert row["status"] == "sent" and len(new) == 1, row
    check_sent_message(new[0].content, {queued.message_id: row})
    message = email.message_from_bytes(new[0].content, policy=email.policy.default)
    assert message["Subject"] == subject.strip()
    text = message.get_body(("plain",)).get_content()
    expected = (body + "\n").replace("\r\n", "\n").replace("\r", "\n")
    assert text.replace("\r\n", "\n") == expected
    count("template variables")


# ------------------------------------------------------------------ template sources


@FUZZ
@given(source=template_sources())
async def test_template_sources_never_execute_code_or_crash_a_batch(
    ready: Database,
    smtpd: SMTPTestServer,
    source: str,
) -> None:
    key = f"t-{uuid.uuid4().hex[:8]}"
    # Through the API: a template that does not compile is refused before it is stored.
    try:
        await save_template(ready, key, subject="Hi", text_body=source, html_body=source)
    except TemplateProblem as exc:
        one_clear_line(exc)
    # Straight into the table (an old row, a manual fix): the engine must cope at send time.
    raw = f"{key}-raw"
    await ready.execute(
        "INSERT INTO email_templates (template_key, subject, text_body, html_body)"
        " VALUES (%s, %s, %s, %s)",
        (raw, *[no_nul(source)] * 3),
    )
    ids = []
    for k in (key, raw):
        try:  # what delivery would refuse, enqueue refuses first, with the same reason
            await enqueue(ready, "ann@example.com", k, {"name": "Ann"})
        except InvalidEvent as exc:
            one_clear_line(exc)
            reasons = ("template ", "unknown template ", "header injection refused: Subject")
            assert str(exc).startswith(reasons), exc
        # An application's plain INSERT of the same event: the engine must cope at send time.
        ids += await factories.insert_events(ready, 1, template=k, prefix=k)
    good = await enqueue(ready, "bob@example.com", "welcome", {"name": "Bob"})
    await drain_queue(ready, batch_size=10)
    done = await ready.fetch_all(
        "SELECT id, status, last_error, error_class FROM communication_events WHERE id = ANY(%s)",
        ([*ids, good.id],),
    )
    statuses = {r["id"]: r for r in done}
    assert statuses[good.id]["status"] == "sent"  # the batch went on
    for event_id in ids:
        row = statuses[event_id]
        assert row["status"] == "sent" or (
            row["status"] == "failed"
            and row["error_class"] in ("template", "invalid")
            and row["last_error"]
        ), row
    assert not os.path.exists(CANARY)
    count("template sources")


# Rendered, and rightly so: (10**10)**10 is a 101-digit number; a namespace keeps "__class__"
# as a plain key of its own, not as the object's class.
HARMLESS = {"{{ 10 ** 10 ** 10 }}", "{% set x = namespace() %}{% set x.__class__ = 1 %}"}


@pytest.mark.parametrize("source", ESCAPES)
async def test_each_known_escape_is_refused_or_harmless(ready: Database, source: str) -> None:
    # The named escapes one by one (hypothesis samples them; this pins every one).
    try:
        await save_template(ready, "escape", subject="Hi", text_body=source)
    except TemplateProblem as exc:
        one_clear_line(exc)
        count("named sandbox escapes")
        return
    try:
        event = await enqueue(ready, "ann@example.com", "escape", {"name": "Ann"})
    except InvalidEvent as exc:  # refused at enqueue: rendered in the same sandbox
        one_clear_line(exc)
        assert str(exc).startswith("template 'escape'") and source not in HARMLESS, exc
        assert not os.path.exists(CANARY)
        count("named sandbox escapes")
        return
    await drain_queue(ready)
    row = await ready.fetch_one(
        "SELECT status, last_error FROM communication_events WHERE id = %s", (event.id,)
    )
    assert row is not None, source
    # Refused as unsafe, or harmless: an unknown name, or a value rendered as plain text.
    assert row["status"] == "sent" or (
        row["status"] == "failed" and row["last_error"].startswith("template 'escape'")
    ), (source, row)
    if source not in HARMLESS:
        assert row["status"] == "failed", (source, row)
    assert not os.path.exists(CANARY)
    count("named sandbox escapes")


# ------------------------------------------------------------------ huge payloads


async def test_huge_payloads(ready: Database, smtpd: SMTPTestServer) -> None:
    with pytest.raises(InvalidEvent, match="the limit is"):
        await enqueue(
            ready, "ann@example.com", "vars", {"subject": "big", "body": "x" * MAX_PAYLOAD_BYTES}
        )
    # Plain SQL has no such check: a 5 MB body is sent intact, a 52 MB one is refused by the
    # server (552: over its 50 MB limit) and the event fails with that reason; the batch goes on.
    big, huge = "é" * (5 * 1024 * 1024 // 2), "y" * (52 * 1024 * 1024)
    # Tens of megabytes take seconds on a busy machine: no timeout may cut them short.
    await ready.execute("UPDATE smtp_provider_configs SET timeout_seconds = 300")
    ids = [
        await ready.fetch_value(
            "INSERT INTO communication_events (event_type, recipient_email, template_key, payload)"
            " VALUES ('t', 'ann@example.com', 'vars', %s) RETURNING id",
            (Jsonb({"subject": "s", "body": body}),),
        )
        for body in (big, huge)
    ]
    small = await enqueue(ready, "bob@example.com", "welcome", {"name": "Bob"})
    await drain_queue(ready, batch_size=10)
    done = {
        r["id"]: r
        for r in await ready.fetch_all(
            "SELECT id, status, error_class, last_error FROM communication_events"
            " WHERE id = ANY(%s)",
            ([*ids, small.id],),
        )
    }
    assert done[ids[0]]["status"] == "sent" and done[small.id]["status"] == "sent"
    assert (done[ids[1]]["status"], done[ids[1]]["error_class"]) == ("failed", "rejected")
    assert done[ids[1]]["last_error"].startswith("552")
    message = email.message_from_bytes(smtpd.accepted[0].content, policy=email.policy.default)
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == big + "\n"


# ------------------------------------------------------------------ provider settings

PROVIDER_TEXT = st.one_of(
    st.sampled_from(
        [
            "smtp.example.com",
            "127.0.0.1",
            "::1",
            "",
            " ",
            "a b",
            "x" * 300,
            "smtp.example.com\r\nX: y",
            "host\x00",
            "hést.example",
            "localhost",
        ]
    ),
    header_values(),
)


@FUZZ
@given(
    host=PROVIDER_TEXT,
    port=st.one_of(st.integers(-5, 70_000), st.sampled_from([587.0, "587", None, True])),
    tls_mode=st.one_of(
        st.sampled_from(["starttls", "implicit", "none", "STARTTLS", "ssl"]), st.text(max_size=8)
    ),
    username=st.one_of(st.none(), PROVIDER_TEXT),
    secret=st.one_of(
        st.none(), st.tuples(st.sampled_from(["secret_block", "password_env"]), PROVIDER_TEXT)
    ),
    from_address=st.one_of(st.none(), addresses(), header_values()),
    numbers=st.fixed_dictionaries(
        {
            "priority": st.one_of(st.integers(-(2**40), 2**40), st.just("1")),
            "timeout_seconds": st.one_of(st.floats(allow_nan=True), st.integers(-1, 1000)),
            "max_connections": st.integers(-1, 200),
            "per_minute_limit": st.one_of(st.none(), st.integers(-5, 2**40)),
        }
    ),
)
async def test_provider_settings_are_validated_before_anything_is_written(
    db: Database,
    host: Any,
    port: Any,
    tls_mode: Any,
    username: Any,
    secret: Any,
    from_address: Any,
    numbers: dict[str, Any],
) -> None:
    before = await db.fetch_all("SELECT * FROM smtp_provider_configs ORDER BY id")
    name = f"p-{uuid.uuid4().hex[:8]}"
    try:
        credentials = credentials_reference(**{secret[0]: secret[1]}) if secret else None
        provider = await add_provider(
            db,
            name,
            host=host,
            port=port,
            tls_mode=tls_mode,
            username=username,
            credentials=credentials,
            from_address=from_address,
            **numbers,
        )
    except InvalidProvider as exc:
        one_clear_line(exc)
        assert await db.fetch_all("SELECT * FROM smtp_provider_configs ORDER BY id") == before
    else:
        assert (provider.host, provider.port, provider.tls_mode) == (host, port, tls_mode)
    # And as a change to an existing, valid provider: refused whole, or applied whole.
    if not before:
        await add_provider(db, "stable", host="smtp.example.com", from_address="a@example.com")
    stable = await db.fetch_one(
        "SELECT * FROM smtp_provider_configs WHERE provider_name = 'stable'"
    )
    try:
        await update_provider(
            db,
            "stable",
            host=host,
            port=port,
            tls_mode=tls_mode,
            from_address=from_address,
            **numbers,
        )
    except InvalidProvider as exc:
        one_clear_line(exc)
        assert (
            await db.fetch_one("SELECT * FROM smtp_provider_configs WHERE provider_name = 'stable'")
            == stable
        )
    count("provider settings")
