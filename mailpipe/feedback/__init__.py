"""The feedback loop: what providers report after accepting a message (deliveries, bounces,
complaints), received by webhook or from a bounce mailbox, stored verbatim, then applied.

- :mod:`~mailpipe.feedback.vocabulary`: the normalised kinds and inbox states;
- :mod:`~mailpipe.feedback.providers`: one module per provider (authentication, parsing);
- :mod:`~mailpipe.feedback.receiver`: the ASGI receiver (``mailpipe feedback serve``);
- :mod:`~mailpipe.feedback.dsn`: DSN/ARF messages, Maildir import, VERP return paths;
- :mod:`~mailpipe.feedback.imap`: the bounce mailbox over IMAP (``mailpipe feedback imap``);
- :mod:`~mailpipe.feedback.inbox`: the ``email_feedback_events`` inbox;
- :mod:`~mailpipe.feedback.apply`: applying the inbox in batches (:func:`apply_feedback`);
- :mod:`~mailpipe.feedback.runs`: one ``process_email_feedback`` run and its report.
"""

from __future__ import annotations

from mailpipe.feedback.apply import FeedbackResult, apply_feedback
from mailpipe.feedback.vocabulary import FeedbackKind, FeedbackState

__all__ = ["FeedbackKind", "FeedbackResult", "FeedbackState", "apply_feedback"]
