"""mailpipe's exceptions: one root, and a transient/permanent split retry logic can read."""

from __future__ import annotations


class MailpipeError(Exception):
    """Root of every error mailpipe raises on purpose; its message is meant for a person."""


class ConfigError(MailpipeError):
    """The configuration is missing or wrong; the message says which setting to fix."""


class DatabaseError(MailpipeError):
    """A database operation failed. ``constraint_name`` is set for integrity violations."""

    def __init__(self, message: str, *, constraint_name: str | None = None) -> None:
        super().__init__(message)
        self.constraint_name = constraint_name


class DatabaseUnavailable(DatabaseError, ConnectionError):
    """Postgres cannot be reached or the connection was lost; a later run may succeed."""


class IntegrityViolation(DatabaseError):
    """A constraint refused the write (unique, check, foreign key)."""


class MigrationError(MailpipeError):
    """Migrations cannot be applied as asked (an edited applied file, a failed statement)."""


class TransientError(MailpipeError):
    """A failure worth retrying later (4xx reply, timeout, dropped connection)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PermanentError(MailpipeError):
    """A failure that retrying will not fix (5xx reply, invalid input)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
