"""Email templates: Jinja2 in a sandbox, strict about undefined variables, HTML autoescaped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from mailpipe.db import Database, Row
from mailpipe.errors import PermanentError
from mailpipe.queries import query
from mailpipe.values import is_int


class TemplateProblem(PermanentError):
    """A template cannot be found or rendered; the event fails with this message."""


MAX_POWER_BITS = 4096  # ``a ** b`` results larger than this are refused
MAX_REPEAT_LENGTH = 1_000_000  # ``'x' * n`` / ``[x] * n`` results longer than this too


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox with ``**`` and ``*`` bounded.

    The stock sandbox evaluates ``9 ** (9 ** 9)`` (minutes of CPU; at compile time even, by
    constant folding, so one such template hangs every worker that loads it) and
    ``'x' * 10 ** 10`` (gigabytes). Intercepted operators are also never folded at compile
    time, so the bounds hold for constants too.
    """

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if (
            operator == "**"
            and is_int(left)
            and is_int(right)
            and right > 0
            and abs(left) > 1
            and abs(left).bit_length() * right > MAX_POWER_BITS
        ):
            raise SecurityError(f"{left} ** {right} is too large to compute")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and is_int(times)
                    and len(sequence) * times > MAX_REPEAT_LENGTH
                ):
                    raise SecurityError(
                        f"repeating a sequence {times} times is too large "
                        f"(over {MAX_REPEAT_LENGTH} items)"
                    )
        return super().call_binop(context, operator, left, right)


# Subjects and text bodies are not HTML: escaping them would show "&amp;" to the reader.
_TEXT_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = _Sandbox(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


@dataclass(frozen=True)
class Rendered:
    """A rendered template: what goes into the message."""

    subject: str
    text: str
    html: str | None
    from_address: str | None


class CompiledTemplate:
    """One template version, compiled once and rendered many times."""

    def __init__(
        self,
        key: str,
        version: int,
        subject: str,
        text_body: str,
        html_body: str | None,
        from_address: str | None,
    ) -> None:
        self.key = key
        self.version = version
        self.from_address = from_address
        try:
            self._subject = _TEXT_ENV.from_string(subject)
            self._text = _TEXT_ENV.from_string(text_body)
            self._html = _HTML_ENV.from_string(html_body) if html_body else None
        except TemplateSyntaxError as exc:
            raise TemplateProblem(
                f"template {key!r} v{version} has a syntax error on line {exc.lineno}: "
                f"{exc.message}"
            ) from None

    @classmethod
    def from_row(cls, row: Row) -> CompiledTemplate:
        """Compile a row of ``email_templates``."""
        return cls(
            row["template_key"],
            row["version"],
            row["subject"],
            row["text_body"],
            row["html_body"],
            row["from_address"],
        )

    def render(self, variables: Any) -> Rendered:
        """Render with the event's payload; raises :class:`TemplateProblem` with the reason."""
        if not isinstance(variables, dict):
            raise TemplateProblem(
                f"template {self.key!r}: payload must be a JSON object, "
                f"not {type(variables).__name__}"
            )
        try:
            subject = self._subject.render(variables)
            text = self._text.render(variables)
            html = self._html.render(variables) if self._html else None
        except UndefinedError as exc:
            raise TemplateProblem(f"template {self.key!r}: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateProblem(
                f"template {self.key!r}: unsafe operation refused ({exc})"
            ) from None
        except TemplateError as exc:
            raise TemplateProblem(f"template {self.key!r}: render error: {exc}") from None
        except Exception as exc:  # user data can make filters raise anything
            raise TemplateProblem(
                f"template {self.key!r}: render error: {type(exc).__name__}: {exc}"
            ) from None
        # A subject is one line: newlines from variables would be header injection.
        return Rendered(subject.strip(), text, html, self.from_address)


class TemplateCache:
    """Active templates by key, loaded in one query per batch for keys not yet seen."""

    def __init__(self) -> None:
        self._templates: dict[str, CompiledTemplate | TemplateProblem] = {}

    async def load(self, db: Database, keys: set[str]) -> None:
        """Fetch and compile the active version of every key not cached yet."""
        missing = sorted(k for k in keys if k not in self._templates)
        if not missing:
            return
        rows = await db.fetch_all(query("active_templates"), (missing,))
        found = {r["template_key"]: r for r in rows}
        for key in missing:
            if key not in found:
                # The key comes from the event: shown escaped (repr) everywhere, so a control
                # character or a line break in it cannot split or forge a log line.
                self._templates[key] = TemplateProblem(
                    f"unknown template {key!r}: no active version in email_templates "
                    "(add it with `mailpipe template add KEY ...`)"
                    if not key.isprintable()
                    else f"unknown template {key!r}: no active version in email_templates "
                    f"(add it with `mailpipe template add {key} ...`)"
                )
                continue
            try:
                self._templates[key] = CompiledTemplate.from_row(found[key])
            except TemplateProblem as exc:
                self._templates[key] = exc

    def get(self, key: str) -> CompiledTemplate:
        """The compiled template, or raise the reason it is unusable."""
        entry = self._templates.get(key)
        if entry is None:
            raise TemplateProblem(f"unknown template {key!r}")
        if isinstance(entry, TemplateProblem):
            raise entry
        return entry


async def save_template(
    db: Database,
    key: str,
    *,
    subject: str,
    text_body: str,
    html_body: str | None = None,
    from_address: str | None = None,
) -> int:
    """Add a template, or a new version of it (the previous one is kept, inactive).

    The template is compiled first, so a syntax error is refused before anything is stored.
    Returns the new version number.
    """
    if not key.strip():
        raise TemplateProblem("a template key cannot be empty")
    for name, value in (
        ("key", key),
        ("subject", subject),
        ("text body", text_body),
        ("HTML body", html_body),
        ("from address", from_address),
    ):
        if value and "\x00" in value:  # Postgres text cannot hold it
            raise TemplateProblem(f"template {key!r}: the {name} contains a NUL character")
    CompiledTemplate(key, 0, subject, text_body, html_body, from_address)
    params = {
        "template_key": key,
        "subject": subject,
        "text_body": text_body,
        "html_body": html_body,
        "from_address": from_address,
    }
    async with db.transaction() as tx:
        # Serialise concurrent updates of one key so version numbers stay unique.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('email_templates:' || %s))", (key,))
        await tx.execute(query("retire_template_versions"), params)
        row = await tx.fetch_one(query("insert_template_version"), params)
    assert row is not None
    return int(row["version"])


# -------------------------------------------------------------- administration (mailpipe template)


class UnknownTemplate(TemplateProblem):
    """No template (or no such version) has this key."""


async def list_templates(db: Database, *, include_removed: bool = False) -> list[Row]:
    """One row per template key: its active version, how many versions exist, its subject."""
    return await db.fetch_all(query("admin_list_templates"), (include_removed,))


async def get_template(db: Database, key: str, version: int | None = None) -> Row:
    """The active version of ``key`` (or the given ``version``, active or not)."""
    if version is None:
        row = await db.fetch_one(query("admin_active_template"), (key,))
    else:
        row = await db.fetch_one(query("admin_template_version"), (key, version))
    if row is None:
        which = (
            f"no version {version} of template {key!r}"
            if version is not None
            else f"no active template {key!r}"
        )
        raise UnknownTemplate(f"{which}: see `mailpipe template list`")
    return row


async def template_versions(db: Database, key: str) -> list[Row]:
    """Every version of ``key``, newest first (the previous ones are kept by updates)."""
    return await db.fetch_all(query("admin_template_versions"), (key,))


async def add_template(
    db: Database,
    key: str,
    *,
    subject: str,
    text_body: str,
    html_body: str | None = None,
    from_address: str | None = None,
) -> int:
    """Add a new template key; refused when the key is in use (use :func:`update_template`)."""
    if await db.fetch_one(query("admin_active_template"), (key,)) is not None:
        raise TemplateProblem(
            f"template {key!r} exists: change it with `mailpipe template update {key} ...`"
        )
    return await save_template(
        db,
        key,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        from_address=from_address,
    )


_KEEP: Any = object()  # "leave this field as it is" for update_template


async def update_template(
    db: Database,
    key: str,
    *,
    subject: str | None = None,
    text_body: str | None = None,
    html_body: str | None = _KEEP,
    from_address: str | None = _KEEP,
) -> int:
    """Save a new version of ``key`` with the given fields changed (``html_body=None`` or
    ``from_address=None`` removes them); the previous version is kept, inactive. Returns the
    new version number."""
    current = await get_template(db, key)
    return await save_template(
        db,
        key,
        subject=current["subject"] if subject is None else subject,
        text_body=current["text_body"] if text_body is None else text_body,
        html_body=current["html_body"] if html_body is _KEEP else html_body,
        from_address=current["from_address"] if from_address is _KEEP else from_address,
    )


async def remove_template(db: Database, key: str, *, force: bool = False) -> int:
    """Deactivate every version of ``key`` (kept for history; ``add`` can bring it back).

    Refused while queued events use the template, since they would then fail as "unknown
    template", unless ``force``. Returns how many queued events use it.
    """
    waiting = await db.fetch_value(query("admin_events_using_template"), (key,))
    if waiting and not force:
        raise TemplateProblem(
            f"{waiting} queued event(s) use template {key!r} and would fail: cancel them "
            f"(`mailpipe queue cancel --template {key}`) or pass --force"
        )
    async with db.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('email_templates:' || %s))", (key,))
        if await tx.execute(query("retire_template_versions"), {"template_key": key}) == 0:
            raise UnknownTemplate(f"no active template {key!r}: see `mailpipe template list`")
    return int(waiting or 0)
