"""Message building: standard MIME that any parser reads back exactly, and no injection."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe.messages import InvalidMessage, build_message, validate_recipient

RECIPIENT = validate_recipient("first.last+tag@example.com")
printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=300)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


@settings(max_examples=150, deadline=None)
@given(
    subject=printable.filter(
        lambda s: s.strip() == s and s and "\u2028" not in s and "\u2029" not in s
    ),  # line separators: refused
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=3000),
    html=st.none() | printable,
    name=st.sampled_from(["", "Shop", "Bür o", "Zoë & Co"]),
)
def test_round_trip(subject: str, text: str, html: str | None, name: str) -> None:
    sender = f"{name} <shop@example.com>" if name else "shop@example.com"
    data = build_message(
        sender=sender,
        recipient=RECIPIENT,
        subject=subject,
        text=text,
        html=html,
        message_id="<id-1@example.com>",
        headers={"X-Mailpipe-Event": "1"},
    )
    assert data.isascii()
    assert max(len(line) for line in data.split(b"\n")) <= 998
    msg = parse(data)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].addr_spec == "shop@example.com"
    assert msg["From"].addresses[0].display_name == name
    assert msg["Message-ID"] == "<id-1@example.com>" and msg["X-Mailpipe-Event"] == "1"
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert msg.get_body(("plain",)).get_content() == expected
    if html is None:
        assert msg.get_content_type() == "text/plain"
    else:
        assert msg.get_content_type() == "multipart/alternative"
        assert msg.get_body(("html",)).get_content() == html


def test_the_same_event_builds_the_same_bytes_apart_from_date() -> None:
    kwargs = dict(
        sender="shop@example.com",
        recipient=RECIPIENT,
        subject="Hi",
        text="t",
        html="<p>h</p>",
        message_id="<same@example.com>",
    )
    first, second = (
        b"\n".join(
            line for line in build_message(**kwargs).split(b"\n") if not line.startswith(b"Date:")
        )
        for _ in range(2)
    )
    assert first == second


@pytest.mark.parametrize("field", ["subject", "sender"])
@pytest.mark.parametrize("bad", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
def test_header_injection_is_refused(field: str, bad: str) -> None:
    kwargs = dict(
        sender="shop@example.com",
        recipient=RECIPIENT,
        subject="Hi",
        text="t",
        html=None,
        message_id="<x@example.com>",
    )
    kwargs[field] = bad if field == "subject" else f"{bad} <shop@example.com>"
    with pytest.raises(InvalidMessage, match="header injection refused"):
        build_message(**kwargs)


def test_custom_header_injection_and_bad_message_id_are_refused() -> None:
    base = dict(sender="shop@example.com", recipient=RECIPIENT, subject="Hi", text="t", html=None)
    with pytest.raises(InvalidMessage, match="header injection refused: X-Tag"):
        build_message(**base, message_id="<x@example.com>", headers={"X-Tag": "a\r\nb: c"})
    with pytest.raises(InvalidMessage, match="malformed Message-ID"):
        build_message(**base, message_id="<no at sign>")


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at",
        "a@b@c.com",
        "a b@example.com",
        "x@example.com\r\nBcc: y@example.com",
        "a\x00@example.com",
    ],
)
def test_invalid_recipients(address: str) -> None:
    with pytest.raises(InvalidMessage, match="Invalid recipient_email"):
        validate_recipient(address)


def test_idn_recipients() -> None:
    assert validate_recipient("joerg@bücher.de").address == "joerg@xn--bcher-kva.de"
    utf8 = validate_recipient("jörg@bücher.de")
    assert utf8.smtputf8 and utf8.domain == "xn--bcher-kva.de"
