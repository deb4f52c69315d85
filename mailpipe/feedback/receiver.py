"""The feedback receiver: an ASGI app (Starlette) with one ``POST /feedback/<provider>`` route.

Each request is authenticated the provider's way, then its events are stored verbatim in the
inbox in one INSERT, and only then answered 200; applying them is :mod:`mailpipe.feedback.apply`'s
job. Answers: 200 stored (or already stored: a retried webhook is a no-op), 400 malformed body
or unknown event type (stored for inspection, with the reason), 401 bad credentials or
signature, 403 a refused source (topic, certificate host, stale timestamp, replayed token),
404 unknown route, 413 body too large (refused before it is read whole), 503 not configured or
the database is down (the provider retries). Nothing that failed authentication is stored.
Log lines carry no secret and no full address.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mailpipe.db import Database
from mailpipe.errors import DatabaseError
from mailpipe.feedback.inbox import store_events
from mailpipe.feedback.providers import Provider, ProviderContext, WebhookRequest, build_providers
from mailpipe.feedback.providers.base import body_digest
from mailpipe.feedback.settings import (
    FeedbackSecrets,
    FeedbackSettings,
    get_feedback_settings,
    resolve_secrets,
)
from mailpipe.feedback.vocabulary import (
    FeedbackError,
    FeedbackEvent,
    FeedbackState,
    InvalidFeedback,
    RawJson,
    Verification,
)
from mailpipe.redaction import redact

log = logging.getLogger("mailpipe.feedback.receiver")


class BodyTooLarge(Exception):
    """The request body is over ``max_body_bytes``."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (:class:`BodyTooLarge`) as soon as it is known to exceed ``limit``:
    from Content-Length before reading, else while streaming it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class FeedbackReceiver:
    """The routes' state: the database, the providers and the secrets to redact."""

    def __init__(
        self,
        database_url: str | None,
        settings: FeedbackSettings,
        secrets: FeedbackSecrets | None,
    ) -> None:
        self.database_url = database_url
        self.settings = settings
        self.secrets = secrets
        self.db: Database | None = None
        self.providers: dict[str, Provider] = {}

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Resolve secrets and open the pool once, for the server's life."""
        if self.secrets is None:
            self.secrets = await resolve_secrets(self.settings)
        self.providers = build_providers(ProviderContext(self.settings, self.secrets))
        async with Database(self.database_url, application_name="mailpipe feedback") as db:
            self.db = db
            configured = sorted(self.secrets.values) or ["none"]
            log.info("feedback receiver ready; secrets configured: %s", ", ".join(configured))
            yield
            self.db = None

    def _say(self, text: str) -> str:
        return redact(text, self.secrets.all() if self.secrets else ())

    async def receive(self, request: Request) -> JSONResponse:
        """``POST /feedback/<provider>``."""
        name = request.path_params["provider"]
        provider = self.providers.get(name)
        if provider is None:
            return JSONResponse(
                {"error": f"no feedback route for {name!r}: one of {', '.join(self.providers)}"},
                status_code=404,
            )
        try:
            body = await read_body(request, self.settings.max_body_bytes)
        except BodyTooLarge:
            log.warning("%s: body over %d bytes refused (413)", name, self.settings.max_body_bytes)
            return JSONResponse(
                {"error": f"body over {self.settings.max_body_bytes} bytes"}, status_code=413
            )
        webhook = WebhookRequest(
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            content_type=request.headers.get("content-type"),
        )
        try:
            events = await provider.receive(webhook)
        except InvalidFeedback as exc:
            return await self._invalid(name, webhook, exc)
        except FeedbackError as exc:
            reason = self._say(str(exc))
            log.warning("%s: %s (%d)", name, reason, exc.status)
            return JSONResponse({"error": reason}, status_code=exc.status)
        if b"\\u0000" in webhook.body and events:
            # Valid JSON, but jsonb refuses NUL characters: keep it as text for inspection
            # (storing it as jsonb would fail, and the provider would retry forever).
            refused = InvalidFeedback("JSON with a \\u0000 escape cannot be stored as jsonb")
            refused.verification = events[0].verification
            return await self._invalid(name, webhook, refused)
        for event in events:
            if webhook.is_whole_body(event.payload):
                event.payload = RawJson(webhook.body.decode("utf-8"))
        try:
            stored = await store_events(self._db(), events)
        except FeedbackError as exc:  # a replayed token
            log.warning("%s: %s (%d)", name, exc, exc.status)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except DatabaseError as exc:
            return self._unavailable(name, exc)
        invalid = [e for e in events if e.state is FeedbackState.INVALID]
        log.info(
            "%s: %d event(s) stored, %d already stored, %d invalid",
            name,
            stored.added,
            stored.duplicates,
            len(invalid),
        )
        answer: dict[str, Any] = {"stored": stored.added, "duplicates": stored.duplicates}
        if invalid:
            answer["error"] = "; ".join(sorted({e.error or "invalid" for e in invalid}))
            answer["invalid"] = len(invalid)
            return JSONResponse(answer, status_code=400)
        return JSONResponse(answer)

    async def _invalid(
        self, name: str, webhook: WebhookRequest, exc: InvalidFeedback
    ) -> JSONResponse:
        # Kept for inspection (never applied): the body as text, its digest as event id so a
        # retried bad request stays one row.
        reason = self._say(str(exc))
        event = FeedbackEvent(
            provider=name,
            provider_event_id=f"invalid:{body_digest(webhook.body)}",
            kind=None,
            provider_kind=None,
            verification=exc.verification or Verification.UNVERIFIABLE,
            state=FeedbackState.INVALID,
            raw=webhook.body.decode("utf-8", errors="replace"),
            content_type=webhook.content_type,
            error=reason,
        )
        try:
            await store_events(self._db(), [event])
        except DatabaseError as db_exc:
            return self._unavailable(name, db_exc)
        log.warning("%s: invalid request stored for inspection: %s (400)", name, reason)
        return JSONResponse({"error": reason}, status_code=400)

    def _unavailable(self, name: str, exc: DatabaseError) -> JSONResponse:
        # 503: the provider keeps the event and retries; nothing is lost.
        log.error("%s: cannot store feedback: %s (503)", name, self._say(str(exc)))
        return JSONResponse({"error": "feedback store unavailable, retry later"}, status_code=503)

    def _db(self) -> Database:
        if self.db is None:
            raise DatabaseError("the receiver is not started")
        return self.db

    async def health(self, request: Request) -> JSONResponse:
        """``GET /feedback/health``: the receiver runs and reaches its database."""
        try:
            await self._db().fetch_value("SELECT 1")
        except DatabaseError:
            return JSONResponse({"ok": False}, status_code=503)
        return JSONResponse({"ok": True, "routes": sorted(self.providers)})


def create_app(
    database_url: str | None = None,
    *,
    settings: FeedbackSettings | None = None,
    secrets: FeedbackSecrets | None = None,
) -> Starlette:
    """The receiver as an ASGI app (``secrets`` None: resolved from settings at startup)."""
    receiver = FeedbackReceiver(database_url, settings or get_feedback_settings(), secrets)
    app = Starlette(
        routes=[
            Route("/feedback/health", receiver.health, methods=["GET"]),
            Route("/feedback/{provider}", receiver.receive, methods=["POST"]),
        ],
        lifespan=receiver.lifespan,
    )
    app.state.receiver = receiver
    return app


def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    workers: int = 1,
    settings: FeedbackSettings | None = None,
) -> None:
    """Run the receiver with uvicorn until interrupted (``mailpipe feedback serve``); with
    ``workers`` > 1, that many processes share the port (each its own pool and secrets)."""
    import uvicorn

    settings = settings or get_feedback_settings()
    uvicorn.run(
        "mailpipe.feedback.receiver:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers,
        log_level="info",
        # Providers sign bodies, not client addresses: no proxy headers are trusted. Access
        # log lines carry method, path and status only.
        proxy_headers=False,
    )
