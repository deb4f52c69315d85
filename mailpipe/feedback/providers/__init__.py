"""One module per provider: each authenticates requests exactly as the provider documents it
and normalises its events to mailpipe's vocabulary."""

from __future__ import annotations

from mailpipe.feedback.providers.base import Provider, ProviderContext, WebhookRequest
from mailpipe.feedback.providers.generic import GenericProvider
from mailpipe.feedback.providers.mailgun import MailgunProvider
from mailpipe.feedback.providers.postmark import PostmarkProvider
from mailpipe.feedback.providers.resend import ResendProvider
from mailpipe.feedback.providers.sendgrid import SendGridProvider
from mailpipe.feedback.providers.ses import SesProvider

__all__ = [
    "PROVIDERS",
    "Provider",
    "ProviderContext",
    "WebhookRequest",
    "build_providers",
]

#: Route name → provider class (the route is ``POST /feedback/<name>``).
PROVIDERS: dict[str, type] = {
    "ses": SesProvider,
    "sendgrid": SendGridProvider,
    "postmark": PostmarkProvider,
    "mailgun": MailgunProvider,
    "resend": ResendProvider,
    "generic": GenericProvider,
}


def build_providers(context: ProviderContext) -> dict[str, Provider]:
    """Every provider route, sharing one context."""
    return {name: cls(context) for name, cls in PROVIDERS.items()}
