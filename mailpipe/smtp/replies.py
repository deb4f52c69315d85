"""The provider's own message id in its 250 reply to DATA, when it gives one.

Providers that report a message's fate later (webhooks) name the message by their own id; the
reply that accepted it is the only moment mailpipe learns that id. Known shapes:

- Amazon SES: ``250 Ok 0100018c7a8c1b2e-5f0e4f5b-...-000000`` (the SES message id);
- Postfix, SendGrid, Postmark and most relays: ``250 2.0.0 Ok: queued as 4Z3xYk1Rn9z9sKX``;
- Exim: ``250 OK id=1tJ8xY-0003Ab-2C``;
- Mailgun (``250 Great success``), Gmail (``2.0.0 OK 1436801113 x3si... - gsmtp``) and
  Exchange (``2.6.0 <our Message-ID> Queued mail for delivery``) give none: ``None``, and
  feedback is then matched by our Message-ID or the VERP token.
"""

from __future__ import annotations

import re

MAX_PROVIDER_MESSAGE_ID_LENGTH = 255

# "queued as <id>" anywhere in the reply (Postfix, SendGrid, Postmark, Emailit, Haraka...).
_QUEUED_AS = re.compile(r"\bqueued\s+as\s+<?([^\s<>,;]+?)>?(?:[\s,;]|$)", re.IGNORECASE)
# "Ok <id>" and nothing else, with an optional enhanced status code (SES). One token only:
# Gmail's "OK <timestamp> <id> - gsmtp" is a transfer log, not an id a webhook quotes.
_OK_ID = re.compile(
    r"^(?:[245]\.\d{1,3}\.\d{1,3}\s+)?ok:?\s+(?:id=)?<?([A-Za-z0-9][A-Za-z0-9._=+-]{7,})>?\s*$",
    re.IGNORECASE,
)


def provider_message_id(reply: str) -> str | None:
    """The provider's message id in a 250 reply's text (``response.message``), or None.

    A value with ``@`` is a Message-ID (ours, echoed back by Exchange): not the provider's.
    """
    for line in reversed(reply.strip().splitlines()):
        line = line.strip()
        match = _QUEUED_AS.search(line) or _OK_ID.match(line)
        if match:
            value = match.group(1).rstrip(".)")
            if "@" in value or not value or len(value) > MAX_PROVIDER_MESSAGE_ID_LENGTH:
                return None
            return value
    return None
