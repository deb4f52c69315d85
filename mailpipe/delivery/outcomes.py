"""What happens to an event after an attempt: one outcome type and the policy that picks it.

The outcome words are the ones the database already stores and every summary and log uses:
``sent``, ``retry``, ``failed``, ``deferred`` and ``suppressed`` (``delivery_attempts.outcome``
and ``communication_events.status``). A ``failed`` outcome says why in ``error_class``:
``invalid``, ``template``, ``bounced``, ``rejected`` or ``retries_exhausted``.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from mailpipe.config import Settings
from mailpipe.errors import MailpipeError
from mailpipe.smtp import Accepted, SMTPError

OUTCOMES = ("sent", "retry", "failed", "deferred", "suppressed")
FAILURE_REASONS = ("invalid", "template", "bounced", "rejected", "retries_exhausted")


@dataclass(frozen=True)
class Outcome:
    """One event's outcome: its new row state and the attempt row that explains it."""

    word: str  # one of OUTCOMES
    status: str  # the event's new status: sent, queued, failed or suppressed
    error: str | None = None
    error_class: str | None = None  # why it failed (FAILURE_REASONS) or was not sent now
    provider: str | None = None  # the provider that accepted it, or last tried it
    scheduled_at: dt.datetime | None = None  # when it is due again (retry, deferred)
    retried: bool = False  # counts against the event's retry_count
    sent_at: dt.datetime | None = None
    duplicate: bool = False  # the provider may already have accepted it (Message-ID reused)
    attempt: str | None = None  # delivery_attempts.outcome; None: no attempt row
    code: int | None = None  # the SMTP reply code of the attempt
    bounce: bool = False  # a hard bounce: suppress the recipient
    attempt_error: str | None = None  # the attempt row's error when it differs from ``error``

    def __post_init__(self) -> None:
        if self.word not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.word!r}: one of {OUTCOMES}")


def sent(accepted: Accepted) -> Outcome:
    """The provider accepted the message."""
    return Outcome("sent", "sent", provider=accepted.provider, sent_at=accepted.at)


def invalid(error: str, error_class: str = "invalid") -> Outcome:
    """The event cannot be sent as it is (bad address, template problem): failed, not tried."""
    return Outcome("failed", "failed", error=error, error_class=error_class)


def suppressed(reason: str) -> Outcome:
    """The recipient is on the suppression list: never sent."""
    error = f"recipient suppressed: {reason}"
    return Outcome(
        "suppressed", "suppressed", error=error, error_class="suppressed", attempt="suppressed"
    )


def deferred(
    reason: str, until: dt.datetime, *, provider: str | None = None, error_class: str | None = None
) -> Outcome:
    """Not sent now (a rate limit, no usable provider): due again at ``until``, not a retry."""
    return Outcome(
        "deferred",
        "queued",
        error=reason,
        error_class=error_class,
        provider=provider,
        scheduled_at=until,
        attempt="deferred",
    )


class RetryPolicy:
    """Exponential backoff with jitter, capped, up to ``max_retries`` transient failures."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._random = rng or random.Random()

    def delay(self, retry_count: int) -> float:
        """Seconds until the next try after ``retry_count`` earlier retries."""
        base = self.settings.retry_base_seconds * 2**retry_count
        delay = min(base, self.settings.retry_max_seconds)
        return delay * (0.5 + self._random.random() / 2)  # jitter: spread retries of one outage

    def after_failure(
        self,
        error: MailpipeError,
        *,
        retry_count: int,
        provider: str | None,
        now: dt.datetime,
    ) -> Outcome:
        """The outcome of an attempt that failed with ``error`` (an SMTP failure, or a message
        that could not be built) for an event that was retried ``retry_count`` times."""
        if not isinstance(error, SMTPError):  # the message could not be built
            return Outcome(
                "failed",
                "failed",
                error=str(error),
                error_class="invalid",
                provider=provider,
                attempt="failed",
            )
        if not error.transient:
            bounced = error.stage == "rcpt"
            return Outcome(
                "failed",
                "failed",
                error=error.message,
                error_class="bounced" if bounced else "rejected",
                provider=provider,
                attempt="bounced" if bounced else "failed",
                code=error.code,
                bounce=bounced,
            )
        if retry_count + 1 > self.settings.max_retries:
            return Outcome(
                "failed",
                "failed",
                error=f"gave up after {retry_count + 1} attempts: {error.message}",
                error_class="retries_exhausted",
                provider=provider,
                retried=True,
                duplicate=error.ambiguous,
                attempt="failed",
                code=error.code,
                attempt_error=error.message,
            )
        message = error.message
        if error.ambiguous:
            message = f"{message} (the provider may have accepted it: possible duplicate)"
        return Outcome(
            "retry",
            "queued",
            error=message,
            error_class="transient",
            provider=provider,
            scheduled_at=now + dt.timedelta(seconds=self.delay(retry_count)),
            retried=True,
            duplicate=error.ambiguous,
            attempt="retry",
            code=error.code,
        )
