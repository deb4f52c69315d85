"""What ``process_email_queue`` would send: the message bytes of an event, and a preview."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mailpipe.db import Database
from mailpipe.errors import MailpipeError
from mailpipe.messages import InvalidMessage, Recipient, build_message, validate_recipient
from mailpipe.providers import Provider, UnknownProvider, load_providers, usable_providers
from mailpipe.queries import query
from mailpipe.templates import CompiledTemplate, Rendered, TemplateCache, UnknownTemplate
from mailpipe.values import EventId


def build_event_message(
    *,
    event_id: EventId | str,
    message_id: str,
    template_key: str,
    recipient: Recipient,
    rendered: Rendered,
    provider: Provider | None,
) -> bytes:
    """The bytes ``process_email_queue`` hands to SMTP for one event sent via ``provider``.

    From is the template's from address, else the provider's; the event id goes in the
    ``X-Mailpipe-Event`` header. ``mailpipe template render`` previews through this same
    function, so a preview differs from the sent message only in its Date header.
    """
    sender = rendered.from_address or (provider.from_address if provider else None)
    if not sender:
        where = (
            f"provider {provider.name!r}"
            if provider
            else "a provider (`mailpipe provider add ... --from ADDRESS`)"
        )
        raise InvalidMessage(f"no from address: set one on template {template_key!r} or on {where}")
    return build_message(
        sender=sender,
        recipient=recipient,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        headers={"X-Mailpipe-Event": str(event_id)},
    )


PREVIEW_RECIPIENT = "recipient@example.com"


@dataclass(frozen=True)
class Preview:
    """A message as ``process_email_queue`` would send it now (only Date will differ)."""

    template_key: str
    version: int
    provider: str | None  # the provider it would go through (None: none usable)
    recipient: str
    message_id: str
    event_id: str  # the X-Mailpipe-Event header ("preview" without an event)
    rendered: Rendered
    message: bytes


async def preview_message(
    db: Database,
    template_key: str | None = None,
    data: Any = None,
    *,
    recipient: str | None = None,
    event_id: EventId | None = None,
    provider_name: str | None = None,
    version: int | None = None,
) -> Preview:
    """Render and build a message exactly as the flow would, without sending or writing.

    Same template lookup and sandboxed render, same recipient validation, same provider
    choice (the best usable one unless ``provider_name``) and :func:`build_event_message`.
    With ``event_id`` the event's template, recipient, payload and Message-ID are used
    (arguments override them). Failures raise what the flow would record on the event:
    :class:`TemplateProblem` or :class:`InvalidMessage`, with the same message.
    """
    domain = await db.fetch_value(query("admin_message_id_domain"))
    message_id = f"<preview@{domain}>"
    header_id = "preview"
    if event_id is not None:
        event = await db.fetch_one(query("admin_preview_event"), (event_id,))
        if event is None:
            raise MailpipeError(f"no event {event_id}: see `mailpipe queue list`")
        template_key = template_key or event["template_key"] or ""
        data = event["payload"] if data is None else data
        recipient = recipient or event["recipient_email"] or ""
        message_id, header_id = event["message_id"], str(event_id)
    if not template_key:
        raise MailpipeError("which template? give a template key or --event ID")
    if version is None:
        cache = TemplateCache()
        await cache.load(db, {template_key})
        template = cache.get(template_key)
    else:
        row = await db.fetch_one(query("admin_template_version"), (template_key, version))
        if row is None:
            raise UnknownTemplate(
                f"template {template_key!r} has no version {version}: see "
                f"`mailpipe template show {template_key}`"
            )
        template = CompiledTemplate.from_row(row)
    to = validate_recipient(recipient if recipient is not None else PREVIEW_RECIPIENT)
    rendered = template.render({} if data is None else data)
    providers = await load_providers(db)
    if provider_name is not None:
        chosen = next((p for p in providers if p.name == provider_name), None)
        if chosen is None:
            raise UnknownProvider(
                f"no provider named {provider_name!r}: see `mailpipe provider list`"
            )
    else:
        usable = usable_providers(providers, dt.datetime.now(dt.UTC))
        chosen = usable[0] if usable else None
    message = build_event_message(
        event_id=header_id,
        message_id=message_id,
        template_key=template_key,
        recipient=to,
        rendered=rendered,
        provider=chosen,
    )
    return Preview(
        template_key,
        template.version,
        chosen.name if chosen else None,
        to.address,
        message_id,
        header_id,
        rendered,
        message,
    )
