"""The SMTP edge: the only place that imports aiosmtplib.

- :mod:`~mailpipe.smtp.errors`: the error vocabulary (transient/permanent, provider-level,
  ambiguous) and :func:`~mailpipe.smtp.errors.classify`;
- :mod:`~mailpipe.smtp.client`: one session (connect, send one message, close);
- :mod:`~mailpipe.smtp.replies`: the provider's message id in a 250 reply;
- :mod:`~mailpipe.smtp.pool`: persistent connections to one provider, used by delivery;
- :mod:`~mailpipe.smtp.probe`: the health probe's session, used by monitoring.
"""

from __future__ import annotations

from mailpipe.smtp.client import Accepted, close_quietly, make_client, open_connection, send_message
from mailpipe.smtp.errors import (
    AUDIT_RESULTS,
    DeliveryUncertain,
    MessageDeferred,
    MessageRejected,
    ProviderRefused,
    ProviderTimeout,
    ProviderUnavailable,
    RecipientRefused,
    SMTPError,
    classify,
    not_attempted,
)
from mailpipe.smtp.pool import ConnectionPool, connection_key
from mailpipe.smtp.probe import ProbeSession, probe_session
from mailpipe.smtp.replies import provider_message_id

__all__ = [
    "AUDIT_RESULTS",
    "Accepted",
    "ConnectionPool",
    "DeliveryUncertain",
    "MessageDeferred",
    "MessageRejected",
    "ProbeSession",
    "ProviderRefused",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RecipientRefused",
    "SMTPError",
    "classify",
    "close_quietly",
    "connection_key",
    "make_client",
    "not_attempted",
    "open_connection",
    "probe_session",
    "provider_message_id",
    "send_message",
]
