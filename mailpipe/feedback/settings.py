"""Feedback settings (``MAILPIPE_FEEDBACK_*``) and the provider secrets they name.

Kept apart from :mod:`mailpipe.config` so the receiver reads only what it needs. Each secret is
either the value itself (``MAILPIPE_FEEDBACK_SENDGRID_PUBLIC_KEY``) or the name of a Prefect
Secret block holding it (``MAILPIPE_FEEDBACK_SENDGRID_PUBLIC_KEY_BLOCK``), like SMTP credentials.
Secrets are never logged nor put in an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailpipe.config import get_settings

#: Secret settings, by name (each also has a ``<name>_block`` twin naming a Secret block).
SECRET_NAMES = (
    "sendgrid_public_key",
    "postmark_password",
    "postmark_token",
    "mailgun_signing_key",
    "resend_secret",
    "generic_secret",
)


class FeedbackSettings(BaseSettings):
    """How the feedback receiver authenticates providers and how feedback is applied."""

    model_config = SettingsConfigDict(
        env_prefix="MAILPIPE_FEEDBACK_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    host: str = Field(default="127.0.0.1", description="Address `mailpipe feedback serve` binds.")
    port: int = Field(default=8025, ge=0, le=65535, description="Port it listens on.")
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Larger request bodies are refused (413)."
    )
    timestamp_tolerance_seconds: int = Field(
        default=300, ge=1, description="Signed timestamps older or newer than this are refused."
    )

    # Amazon SES through SNS
    ses_topic_arns: list[str] = Field(
        default_factory=list,
        description='SNS topics allowed to post, e.g. ["arn:aws:sns:eu-west-1:123:ses-feedback"]; '
        "empty: every SES request is refused.",
    )
    ses_confirm_subscriptions: bool = Field(
        default=True,
        description="Confirm an allowed topic's subscription by fetching its SubscribeURL.",
    )
    ses_cert_ca_file: Path | None = Field(
        default=None,
        description="PEM CA that must have issued the SNS signing certificate (tests, private "
        "setups). Unset: a certificate fetched over verified HTTPS from an SNS host is trusted.",
    )
    ses_cert_cache_dir: Path | None = Field(
        default=None,
        description="Where fetched SNS signing certificates are cached; unset: "
        "<data_dir>/feedback/sns-certs.",
    )

    # Secrets (value or Secret block name)
    sendgrid_public_key: SecretStr | None = Field(
        default=None, description="SendGrid's verification key (base64 DER or PEM)."
    )
    sendgrid_public_key_block: str | None = None
    postmark_username: str | None = Field(
        default=None, description="User of the credentials in Postmark's webhook URL."
    )
    postmark_password: SecretStr | None = None
    postmark_password_block: str | None = None
    postmark_token: SecretStr | None = Field(
        default=None, description="Value of the custom header Postmark sends (token mode)."
    )
    postmark_token_block: str | None = None
    postmark_token_header: str = Field(default="X-Mailpipe-Token")
    mailgun_signing_key: SecretStr | None = Field(
        default=None, description="Mailgun's HTTP webhook signing key."
    )
    mailgun_signing_key_block: str | None = None
    resend_secret: SecretStr | None = Field(
        default=None, description="Resend's webhook signing secret (whsec_...)."
    )
    resend_secret_block: str | None = None
    generic_secret: SecretStr | None = Field(
        default=None, description="Shared secret of the generic JSON route (HMAC or bearer)."
    )
    generic_secret_block: str | None = None

    # Correlation and processing
    verp_prefix: str = Field(default="bounces", description="Local part before + in VERP paths.")
    soft_bounce_threshold: int = Field(
        default=3, ge=1, description="Soft bounces within the window that suppress an address."
    )
    soft_bounce_window_days: float = Field(default=7.0, gt=0)
    soft_bounce_suppression_days: float | None = Field(
        default=30.0, gt=0, description="How long soft bounces suppress; unset: forever."
    )
    unmatched_retry_minutes: float = Field(
        default=60.0,
        ge=0,
        description="An event matching no message is retried this long (its confirmation may "
        "not be recorded yet), then kept as unmatched.",
    )
    max_attempts: int = Field(
        default=10, ge=1, description="Failed processing attempts before an event is given up."
    )

    # The bounce mailbox over IMAP (`mailpipe feedback imap`)
    imap_host: str | None = Field(default=None, description="IMAP server of the bounce mailbox.")
    imap_port: int | None = Field(
        default=None, ge=1, le=65535, description="Its port; unset: 993 (tls) or 143."
    )
    imap_security: Literal["tls", "starttls", "plain"] = Field(
        default="tls",
        description="tls (implicit, port 993), starttls, or plain (refused unless the host is "
        "a loopback address).",
    )
    imap_username: str | None = Field(default=None, description="The mailbox's login.")
    imap_password: SecretStr | None = None
    imap_password_block: str | None = None
    imap_folder: str = Field(default="INBOX", description="Folder whose unseen messages are read.")
    imap_after: Literal["seen", "move", "delete"] = Field(
        default="seen",
        description="What happens to a message once stored: flagged \\Seen, moved to "
        "imap_move_to (flagged \\Seen), or deleted.",
    )
    imap_move_to: str | None = Field(default=None, description="Folder for imap_after=move.")
    imap_ca_file: Path | None = Field(
        default=None, description="Extra CA bundle for an IMAP server with a private CA."
    )
    imap_timeout_seconds: float = Field(default=30.0, gt=0, description="Network timeout.")

    @property
    def cert_cache_dir(self) -> Path:
        """The SNS certificate cache folder."""
        return self.ses_cert_cache_dir or get_settings().data_dir / "feedback" / "sns-certs"


@lru_cache(maxsize=1)
def get_feedback_settings() -> FeedbackSettings:
    """The process-wide feedback settings, read once."""
    return FeedbackSettings()


@dataclass(frozen=True)
class FeedbackSecrets:
    """The provider secrets, resolved once at startup (values; never printed)."""

    values: dict[str, str]

    def get(self, name: str) -> str | None:
        """The secret, or None when it is not configured."""
        return self.values.get(name)

    def all(self) -> list[str]:
        """Every value, to redact from any text that could reach a log."""
        return list(self.values.values())


async def resolve_secret(settings: FeedbackSettings, name: str) -> str | None:
    """One secret: the environment value, else the named Secret block, else None."""
    direct: SecretStr | None = getattr(settings, name)
    block: str | None = getattr(settings, f"{name}_block")
    if direct is not None and direct.get_secret_value():
        return direct.get_secret_value()
    if block:
        from mailpipe.runtime import aread_secret_block  # imports Prefect, only here

        return await aread_secret_block(block, purpose=f"MAILPIPE_FEEDBACK_{name.upper()}_BLOCK")
    return None


async def resolve_secrets(settings: FeedbackSettings) -> FeedbackSecrets:
    """Every configured receiver secret: the environment value, else the named Secret block."""
    values: dict[str, str] = {}
    for name in SECRET_NAMES:
        value = await resolve_secret(settings, name)
        if value is not None:
            values[name] = value
    return FeedbackSecrets(values)
