"""Feedback fixtures: the receiver running in-process under uvicorn on a free port, with the
keys, certificates and secrets the tests sign requests with."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from mailpipe.feedback.providers.ses import SigningCertificates
from mailpipe.feedback.receiver import create_app
from mailpipe.feedback.settings import FeedbackSecrets, FeedbackSettings
from mailpipe.testing.feedback import (
    CERT_URL,
    TOPIC,
    SendGridKey,
    SnsPki,
    make_sns_pki,
    new_sendgrid_key,
    pem,
)
from mailpipe.testing.smtpd import Certificate
from tests.feedback.dovecot import DOVECOT, Dovecot

MAILGUN_KEY = "key-" + "7" * 32
RESEND_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
GENERIC_SECRET = "generic-" + "s3cr3t" * 4
POSTMARK_USER, POSTMARK_PASSWORD, POSTMARK_TOKEN = (
    "postmark",
    "pm-pass-" + "x" * 12,
    "pm-token-" + "y" * 12,
)


@pytest.fixture(scope="session")
def sns_pki(tmp_path_factory: pytest.TempPathFactory) -> SnsPki:
    return make_sns_pki(tmp_path_factory.mktemp("sns-pki"))


@pytest.fixture(scope="session")
def sendgrid_key() -> SendGridKey:
    return new_sendgrid_key()


@pytest.fixture
def feedback_settings(tmp_path: Path, sns_pki: SnsPki) -> FeedbackSettings:
    """Settings trusting the test CA, with the signing certificate already in the cache (the
    production path fetches it once over HTTPS from the SNS host and caches it there)."""
    settings = FeedbackSettings(
        ses_topic_arns=[TOPIC],
        ses_cert_ca_file=sns_pki.ca_file,
        ses_cert_cache_dir=tmp_path / "sns-certs",
        ses_confirm_subscriptions=False,
        postmark_username=POSTMARK_USER,
        max_body_bytes=64 * 1024,
    )
    cache = SigningCertificates(settings.cert_cache_dir).cache_path(CERT_URL)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(pem(sns_pki.cert))
    return settings


@pytest.fixture
def feedback_secrets(sendgrid_key: SendGridKey) -> FeedbackSecrets:
    return FeedbackSecrets(
        {
            "sendgrid_public_key": sendgrid_key.public_base64,
            "postmark_password": POSTMARK_PASSWORD,
            "postmark_token": POSTMARK_TOKEN,
            "mailgun_signing_key": MAILGUN_KEY,
            "resend_secret": RESEND_SECRET,
            "generic_secret": GENERIC_SECRET,
        }
    )


class _Server(uvicorn.Server):
    """uvicorn in a thread, telling the test when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@dataclass
class Receiver:
    """The running receiver: its base URL and a client for real HTTP requests."""

    url: str

    async def post(
        self,
        route: str,
        body: bytes | AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        **kw: object,
    ) -> httpx.Response:
        """POST ``body`` (bytes, or chunks sent without Content-Length) to ``route``."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            return await client.post(route, content=body, headers=headers or {}, **kw)


def start_receiver(app: object) -> tuple[_Server, threading.Thread, str]:
    """Start uvicorn on a free port in a thread; returns once it listens."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="feedback-receiver", daemon=True)
    thread.start()
    if not server.ready.wait(timeout=60) or not server.servers:
        server.should_exit = True
        thread.join(timeout=10)
        raise RuntimeError("the feedback receiver did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def receiver(
    database_url: str, feedback_settings: FeedbackSettings, feedback_secrets: FeedbackSecrets
) -> Iterator[Receiver]:
    """The receiver on this test's database, under uvicorn on a free port."""
    app = create_app(database_url, settings=feedback_settings, secrets=feedback_secrets)
    server, thread, url = start_receiver(app)
    try:
        yield Receiver(url)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def dovecot(tls_certificate: Certificate) -> Iterator[Dovecot]:
    """A real IMAP server (dovecot) for this session; each test adds its own user."""
    if DOVECOT is None:
        pytest.skip(
            "the dovecot binary is not installed: scripts/install-dovecot.sh installs Debian's "
            "dovecot-imapd (IMAP tests of the bounce mailbox)"
        )
    server = Dovecot.start(tls_certificate)
    try:
        yield server
    finally:
        server.stop()
