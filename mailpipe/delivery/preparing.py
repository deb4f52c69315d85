"""Preparing a claimed batch: validate each recipient, render each template, drop suppressed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailpipe.db import Database, Row
from mailpipe.delivery import outcomes
from mailpipe.errors import MailpipeError
from mailpipe.messages import InvalidMessage, Recipient, validate_recipient
from mailpipe.suppressions import find_suppressed
from mailpipe.templates import Rendered, TemplateCache, TemplateProblem
from mailpipe.values import EventId

if TYPE_CHECKING:
    from mailpipe.delivery.recording import BatchRecord


@dataclass
class Job:
    """One claimed event on its way through a batch."""

    row: Row
    recipient: Recipient | None = None
    rendered: Rendered | None = None
    tried: list[str] = field(default_factory=list)  # providers tried, in order
    last_error: MailpipeError | None = None  # the provider-level failure that moved it on

    @property
    def id(self) -> EventId:
        """The event's id (int or UUID: the database's id type, passed through as it is)."""
        return self.row["id"]

    @property
    def last_provider(self) -> str | None:
        """The provider it was last handed to (None: none yet)."""
        return self.tried[-1] if self.tried else None


async def prepare(
    db: Database,
    templates: TemplateCache,
    rows: list[Row],
    record: BatchRecord,
    now: dt.datetime,
) -> list[Job]:
    """The jobs of ``rows`` that can be sent, in claim order. Each other one is finished in
    ``record``: failed (bad address, template problem, with the reason) or suppressed."""
    jobs = [Job(r) for r in rows]
    await templates.load(db, {str(j.row["template_key"]) for j in jobs if j.row["template_key"]})
    ready = []
    for job in jobs:
        try:
            job.recipient = validate_recipient(job.row["recipient_email"] or "")
        except InvalidMessage as exc:
            record.finish(job, outcomes.invalid(str(exc)), now)
            continue
        try:
            template = templates.get(job.row["template_key"] or "")
            job.rendered = template.render(job.row["payload"])
        except TemplateProblem as exc:
            record.finish(job, outcomes.invalid(str(exc), "template"), now)
            continue
        ready.append(job)
    suppressed = await find_suppressed(db, [j.recipient.address for j in ready if j.recipient])
    if not suppressed:
        return ready
    still = []
    for job in ready:
        assert job.recipient is not None
        reason = suppressed.get(job.recipient.address.lower())
        if reason:
            record.finish(job, outcomes.suppressed(reason), now)
        else:
            still.append(job)
    return still
