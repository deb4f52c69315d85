"""mailpipe's exceptions: one root, and a transient/permanent split retry logic can read.

Modelled on aiosmtplib's: subclasses also inherit the builtin that fits
(``DatabaseUnavailable`` is a ``ConnectionError``) and carry what a caller acts on (``code``,
``stage``) as attributes, so nobody parses message text. The SMTP errors live beside the
SMTP code (:mod:`mailpipe.smtp.errors`) and derive from :class:`TransientError` /
:class:`PermanentError`.
"""

from __future__ import annotations


class MailpipeError(Exception):
    """Root of every error mailpipe raises on purpose; its message is meant for a person."""


class ConfigError(MailpipeError):
    """The configuration is missing or wrong; the message says which setting to fix."""


class TransientError(MailpipeError):
    """A failure worth retrying later (4xx reply, timeout, dropped connection, lost database).

    ``code`` is the SMTP reply code when there was one; ``stage`` says where it happened
    (``connect``, ``mail``, ``rcpt``, ``data``, ...). The message never contains a secret.
    """

    def __init__(self, message: str, *, code: int | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage


class PermanentError(MailpipeError):
    """A failure that retrying will not fix (5xx reply, invalid input); same attributes as
    :class:`TransientError`."""

    def __init__(self, message: str, *, code: int | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.stage = stage


class DatabaseError(MailpipeError):
    """A database operation failed. ``constraint_name`` is set for integrity violations."""

    def __init__(self, message: str, *, constraint_name: str | None = None) -> None:
        super().__init__(message)
        self.constraint_name = constraint_name


class DatabaseUnavailable(DatabaseError, TransientError, ConnectionError):
    """Postgres cannot be reached or the connection was lost; a later run (or a task retry)
    may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = None
        self.stage = "database"


class DatabaseConflict(DatabaseError, TransientError):
    """A concurrent transaction got in the way (deadlock detected, serialization failure):
    Postgres rolled this one back, and running it again normally succeeds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = None
        self.stage = "database"


class IntegrityViolation(DatabaseError):
    """A constraint refused the write (unique, check, foreign key)."""


class MigrationError(MailpipeError):
    """Migrations cannot be applied as asked (an edited applied file, a failed statement)."""
