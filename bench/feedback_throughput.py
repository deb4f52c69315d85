"""Feedback throughput: verified webhook events stored per second, and inbox events applied per
second, each against a plain INSERT baseline run beside it.

Run by hand (not a test):

    uv run python bench/feedback_throughput.py                  # 4,000 requests, 50,000 applied
    uv run python bench/feedback_throughput.py --requests 1000 --apply 10000   # quicker

(0) CPU: each request passed straight to the ASGI app in-process, one at a time, timed in
    CPU seconds (load on a shared machine does not blur it); baseline: the bare INSERT route.
(1) Receive: the receiver runs under uvicorn in its own process pinned to one core (the load
    generator, a minimal keep-alive HTTP/1.1 client with pre-signed requests, on the other).
    For Mailgun (HMAC), Resend (Svix HMAC), SES (RSA signature through the certificate cache)
    one event per request, and SendGrid (ECDSA) batches of --batch events: each request is
    verified, normalised and stored in one INSERT. Baseline: the same server stack answering
    a bare route that INSERTs the raw body (no verification, no parsing).
    Goal: >= 2,000 verified events stored per second on one core.
(2) Apply: --apply inbox events matched to as many confirmations (half delivered, a quarter
    hard bounces, a quarter complaints) applied by apply_feedback in batches of --apply-batch.
    Baseline: the same number of rows INSERTed into a plain table in batches of the same size.
    Goal: >= 20,000 events applied per second.

Uses its own database on an embedded Postgres in a temporary folder, or on --database-url.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _support import create_database, postgres_server  # noqa: E402

from mailpipe.db import Database, Jsonb  # noqa: E402
from mailpipe.testing.smtpd import free_port  # noqa: E402

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-bench.pem"
MAILGUN_KEY = "key-" + "b" * 32
RESEND_SECRET = "whsec_" + base64.b64encode(b"bench resend secret 0123").decode()


# ------------------------------------------------------------------ servers (child processes)


def plain_app(database_url: str) -> Any:
    """The baseline: the same framework and pool, a bare route doing one plain INSERT."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state: dict[str, Database] = {}

    async def plain(request: Request) -> JSONResponse:
        body = await request.body()
        await state["db"].execute(
            "INSERT INTO bench_plain_inbox (body) VALUES (%s)", (body.decode(),)
        )
        return JSONResponse({"stored": 1})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Database(database_url) as db:
            state["db"] = db
            yield

    return Starlette(routes=[Route("/plain", plain, methods=["POST"])], lifespan=lifespan)


def serve(kind: str, database_url: str, port: int) -> None:
    """Child process: one uvicorn worker on core 0 serving the receiver or the baseline."""
    import uvicorn

    from mailpipe.feedback.receiver import create_app

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    app = create_app(database_url) if kind == "mailpipe" else plain_app(database_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", access_log=False)


def start_server(kind: str, database_url: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--database-url",
            database_url,
            "--port",
            str(port),
        ],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "Uvicorn running on" in line:
            return process, port
    raise RuntimeError(f"{kind} server did not start (exit {process.wait()})")


# ------------------------------------------------------------------ load generator


async def send_all(port: int, requests: list[bytes], connections: int) -> float:
    """Send pre-built HTTP/1.1 requests over keep-alive connections; seconds taken."""
    queue = list(reversed(requests))
    failures: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            writer.write(queue.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            if status != b"200":
                failures.append(f"{status.decode()} {body[:200].decode()}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return elapsed


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------ signed requests


class Signers:
    """Keys for each provider, and the environment that configures the receiver with them."""

    def __init__(self, folder: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from mailpipe.feedback.providers.ses import SigningCertificates
        from mailpipe.testing.feedback import make_sns_pki, pem

        self.sendgrid = ec.generate_private_key(ec.SECP256R1())
        der = self.sendgrid.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.pki = make_sns_pki(folder / "pki")
        cache = folder / "sns-certs"
        path = SigningCertificates(cache).cache_path(CERT_URL)
        path.parent.mkdir(parents=True)
        path.write_bytes(pem(self.pki.cert))
        self.env = {
            "MAILPIPE_FEEDBACK_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
            "MAILPIPE_FEEDBACK_RESEND_SECRET": RESEND_SECRET,
            "MAILPIPE_FEEDBACK_SENDGRID_PUBLIC_KEY": base64.b64encode(der).decode(),
            "MAILPIPE_FEEDBACK_SES_TOPIC_ARNS": json.dumps([TOPIC]),
            "MAILPIPE_FEEDBACK_SES_CERT_CA_FILE": str(self.pki.ca_file),
            "MAILPIPE_FEEDBACK_SES_CERT_CACHE_DIR": str(cache),
            "MAILPIPE_FEEDBACK_MAX_BODY_BYTES": str(8 * 1024 * 1024),
        }

    def mailgun(self, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
        from mailpipe.testing.feedback import mailgun_body

        out = []
        for i in range(n):
            event = {
                "event": "delivered",
                "id": uuid.uuid4().hex,
                "timestamp": time.time(),
                "recipient": f"user{i}@example.com",
                "message": {"headers": {"message-id": f"{uuid.uuid4()}@mailpipe.local"}},
                "delivery-status": {"code": 250, "message": "OK"},
            }
            out.append(("/feedback/mailgun", mailgun_body(MAILGUN_KEY, event), {}))
        return out

    def resend(self, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
        from mailpipe.testing.feedback import svix_headers

        out = []
        for i in range(n):
            body = json.dumps(
                {
                    "type": "email.delivered",
                    "created_at": "2026-12-05T20:01:00.000Z",
                    "data": {"email_id": str(uuid.uuid4()), "to": [f"user{i}@example.com"]},
                }
            ).encode()
            out.append(("/feedback/resend", body, svix_headers(RESEND_SECRET, body)))
        return out

    def ses(self, n: int) -> list[tuple[str, bytes, dict[str, str]]]:
        from mailpipe.testing.feedback import ses_delivery, sns_message

        return [
            (
                "/feedback/ses",
                json.dumps(
                    sns_message(
                        ses_delivery(f"user{i}@example.com", uuid.uuid4().hex),
                        self.pki.key,
                        cert_url=CERT_URL,
                        version="2",
                        topic=TOPIC,
                    )
                ).encode(),
                {},
            )
            for i in range(n)
        ]

    def sendgrid_batches(self, n: int, batch: int) -> list[tuple[str, bytes, dict[str, str]]]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        out = []
        for _ in range(n):
            body = json.dumps(
                [
                    {
                        "email": f"user{i}@example.com",
                        "timestamp": int(time.time()),
                        "smtp-id": f"<{uuid.uuid4()}@mailpipe.local>",
                        "event": "delivered",
                        "sg_event_id": uuid.uuid4().hex,
                        "sg_message_id": f"{uuid.uuid4().hex}.f0",
                    }
                    for i in range(batch)
                ]
            ).encode()
            stamp = str(int(time.time()))
            signature = self.sendgrid.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            out.append(
                (
                    "/feedback/sendgrid",
                    body,
                    {
                        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(
                            signature
                        ).decode(),
                        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                    },
                )
            )
        return out


def receive_bench(url: str, args: argparse.Namespace, folder: Path) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    signers = Signers(folder)
    n = args.requests
    batches = max(1, n // args.batch)
    cases = [
        ("mailgun (HMAC)", signers.mailgun, n, 1),
        ("resend (Svix)", signers.resend, n, 1),
        ("ses (SNS RSA v2)", signers.ses, n, 1),
        (
            f"sendgrid (ECDSA, {args.batch}/request)",
            lambda k: signers.sendgrid_batches(k, args.batch),
            batches,
            args.batch,
        ),
    ]
    baseline, base_port = start_server("plain", url, {})
    server, port = start_server("mailpipe", url, signers.env)
    print(
        f"\n(1) receive: server on one core, {args.connections} keep-alive connections;"
        f" best of {args.repeat}, each run right after a baseline run of as many requests"
    )
    print("    baseline: the same server stack, a bare route doing one plain INSERT per request")
    try:
        warm = signers.mailgun(max(10, n // 10))
        asyncio.run(send_all(port, [http_request(p, b, h) for p, b, h in warm], args.connections))
        plain_warm = [http_request("/plain", b, {}) for _, b, _ in warm]
        asyncio.run(send_all(base_port, plain_warm, args.connections))
        for name, build, count, per_request in cases:
            best = (0.0, 0.0)
            for _ in range(args.repeat):
                requests = build(count)  # fresh ids, tokens and timestamps for every run
                plain = [http_request("/plain", b, {}) for _, b, _ in requests]
                base_rate = len(plain) / asyncio.run(send_all(base_port, plain, args.connections))
                raw = [http_request(p, b, h) for p, b, h in requests]
                rate = len(raw) / asyncio.run(send_all(port, raw, args.connections))
                best = max(best, (rate, base_rate))
            rate, base_rate = best
            print(
                f"  {name:<34} {rate:7.0f} requests/s {rate * per_request:8.0f} verified"
                f" events/s  (baseline {base_rate:5.0f} requests/s: {rate / base_rate:.2f}x)"
            )
    finally:
        for process in (server, baseline):
            process.terminate()
            process.wait()


async def asgi_post(app: Any, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One request straight into the ASGI app (no socket, no HTTP parser); its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def cpu_bench(url: str, args: argparse.Namespace, folder: Path) -> None:
    """CPU time per request of the app itself, requests sent one at a time in-process: the
    figure the machine's load does not blur (wall-clock rates do, on a shared machine)."""
    from mailpipe.feedback.receiver import create_app
    from mailpipe.feedback.settings import FeedbackSettings

    signers = Signers(folder / "cpu")
    os.environ.update(signers.env)
    n = args.requests

    async def measure(app: Any, requests: list[tuple[str, bytes, dict[str, str]]]) -> float:
        async with app.router.lifespan_context(app):
            for path, body, headers in requests[: max(10, len(requests) // 10)]:
                await asgi_post(app, path, body, headers)  # warm-up (repeats: no-ops)
            started = time.process_time()
            for path, body, headers in requests:
                status = await asgi_post(app, path, body, headers)
                assert status == 200, status
            return time.process_time() - started

    print("\n(0) CPU of the app per request (in-process ASGI, no HTTP parsing; one at a time)")
    plain = [("/plain", body, {}) for _, body, _ in signers.mailgun(n)]
    base = asyncio.run(measure(plain_app(url), plain)) / len(plain)
    print(f"  baseline: bare route, one plain INSERT        {base * 1e3:6.3f} ms/request")
    cases = [
        ("mailgun (HMAC)", signers.mailgun(n), 1),
        ("resend (Svix)", signers.resend(n), 1),
        ("ses (SNS RSA v2)", signers.ses(n), 1),
        (
            f"sendgrid (ECDSA, {args.batch}/request)",
            signers.sendgrid_batches(max(1, n // args.batch), args.batch),
            args.batch,
        ),
    ]
    for name, requests, per_request in cases:
        app = create_app(url, settings=FeedbackSettings())
        cpu = asyncio.run(measure(app, requests)) / len(requests)
        print(
            f"  {name:<34} {cpu * 1e3:6.3f} ms/request  {per_request / cpu:8.0f} verified"
            f" events per CPU-second  ({cpu / base:.2f}x the baseline's CPU per request)"
        )


# ------------------------------------------------------------------ apply


async def apply_bench(url: str, args: argparse.Namespace) -> None:
    from mailpipe.feedback.apply import apply_feedback

    n, batch = args.apply, args.apply_batch
    async with Database(url, min_size=1, max_size=2) as db:
        for statement in (
            "ALTER TABLE communication_events DISABLE TRIGGER USER",
            "INSERT INTO communication_events (event_type, recipient_email, template_key,"
            " status, sent_at, provider_name)"
            " SELECT 'welcome', 'user' || i || '@example.com', 'welcome', 'sent', now(), 'p'"
            " FROM generate_series(1, %(n)s) AS i",
            "ALTER TABLE communication_events ENABLE TRIGGER USER",
            "INSERT INTO smtp_delivery_confirmations (communication_event_id, recipient_email,"
            " provider_name, message_id, status, smtp_code, provider_message_id)"
            " SELECT id, recipient_email, 'p', message_id, 'accepted', 250, 'pm-' || id"
            " FROM communication_events",
            # Half matched by our Message-ID, half by the provider's id; a quarter each of
            # hard bounces and complaints (suppressions, attempts), the rest deliveries.
            "INSERT INTO email_feedback_events (provider, provider_event_id, verification,"
            " state, kind, recipient, message_id, provider_message_id, payload, next_attempt_at)"
            " SELECT 'generic', 'e' || c.id, 'signature', 'received',"
            " CASE WHEN c.id %% 4 = 0 THEN 'hard_bounce' WHEN c.id %% 4 = 1 THEN 'complaint'"
            " ELSE 'delivered' END,"
            " c.recipient_email, CASE WHEN c.id %% 2 = 0 THEN c.message_id END,"
            " CASE WHEN c.id %% 2 = 1 THEN c.provider_message_id END,"
            " jsonb_build_object('id', 'e' || c.id), now()"
            " FROM smtp_delivery_confirmations AS c",
            "CREATE TABLE bench_plain_apply (id bigint, kind text, recipient text, payload jsonb)",
            "VACUUM ANALYZE",
        ):
            await db.execute(statement, {"n": n})
        rows = [
            {"id": i, "kind": "delivered", "recipient": f"user{i}@example.com", "payload": {"i": i}}
            for i in range(n)
        ]
        started = time.perf_counter()
        for i in range(0, n, batch):
            await db.execute(
                "INSERT INTO bench_plain_apply SELECT * FROM jsonb_to_recordset(%s::jsonb)"
                " AS r(id bigint, kind text, recipient text, payload jsonb)",
                (Jsonb(rows[i : i + batch]),),
            )
        base = time.perf_counter() - started
        result = await apply_feedback(db, batch_size=batch)
        assert result.applied == n, result.as_dict()
        rate, base_rate = n / result.elapsed_seconds, n / base
        print(f"\n(2) apply {n} events in batches of {batch}")
        print(f"  baseline: plain INSERT of the same rows     {base_rate:9.0f} rows/s")
        print(
            f"  apply_feedback (match, status, suppress, history) {rate:9.0f} events/s"
            f"  ({rate / base_rate:.2f}x the baseline)  {result.as_dict()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="Requests per provider.")
    parser.add_argument("--batch", type=int, default=100, help="SendGrid events per request.")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each case (best kept).")
    parser.add_argument("--apply", type=int, default=50_000, help="Events to apply.")
    parser.add_argument("--apply-batch", type=int, default=5000)
    parser.add_argument("--database-url", help="A Postgres server (default: embedded).")
    parser.add_argument("--serve", choices=["mailpipe", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.database_url, args.port)
        return
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-feedback-") as tmp:
        folder = Path(tmp)
        with postgres_server(args.database_url, folder / "pg") as admin:
            url = create_database(admin, "mailpipe_bench_feedback")
            asyncio.run(_plain_table(url))
            cpu_bench(url, args, folder)
            receive_bench(url, args, folder)
            url = create_database(admin, "mailpipe_bench_feedback_apply")
            asyncio.run(apply_bench(url, args))


async def _plain_table(url: str) -> None:
    async with Database(url, min_size=1, max_size=1) as db:
        await db.execute(
            "CREATE TABLE bench_plain_inbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " body text NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
        )


if __name__ == "__main__":
    main()
