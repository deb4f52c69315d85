"""The in-process SMTP test server really misbehaves as told (the other suites rely on it)."""

from __future__ import annotations

import aiosmtplib
import pytest

from mailpipe.testing.smtpd import Behaviour, SMTPTestServer, free_port

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <1@x>\r\nSubject: hi\r\n\r\nbody\r\n"
)


async def send(server: SMTPTestServer, **kwargs) -> tuple[int, str]:
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.port, timeout=5, **kwargs
    ) as client:
        errors, reply = await client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        return errors, reply


async def test_records_accepted_messages(smtpd: SMTPTestServer) -> None:
    await send(smtpd)
    assert smtpd.accepted_message_ids() == ["<1@x>"]
    assert smtpd.messages[0].rcpt_tos == ["b@example.com"]


@pytest.mark.smtpd(data_reply="451 4.3.0 try later")
async def test_data_reply_is_injected(smtpd: SMTPTestServer) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(smtpd)
    assert info.value.code == 451
    assert smtpd.accepted == []


@pytest.mark.smtpd(rcpt_reply="550 5.1.1 no such user")
async def test_rcpt_reply_is_injected(smtpd: SMTPTestServer) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await send(smtpd)


@pytest.mark.smtpd(drop_after_data=True)
async def test_drop_after_data_keeps_the_bytes(smtpd: SMTPTestServer) -> None:
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(smtpd)
    assert smtpd.dropped_after_data == 1 and smtpd.messages[0].message_id == "<1@x>"


@pytest.mark.smtpd(auth=("user", "s3cret"))
async def test_auth_is_checked(smtpd: SMTPTestServer) -> None:
    await send(smtpd, username="user", password="s3cret")
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await send(smtpd, username="user", password="wrong")


@pytest.mark.smtpd(tls="starttls")
async def test_starttls(smtpd: SMTPTestServer, tls_certificate) -> None:
    await send(smtpd, start_tls=True, cert_bundle=str(tls_certificate.cert_file))
    assert len(smtpd.accepted) == 1


async def test_implicit_tls(smtpd_factory, tls_certificate) -> None:
    server = smtpd_factory(tls="implicit")
    await send(server, use_tls=True, cert_bundle=str(tls_certificate.cert_file))
    assert len(server.accepted) == 1


async def test_fault_mix_is_reproducible(smtpd_factory) -> None:
    outcomes = []
    for _ in range(2):
        server = smtpd_factory(Behaviour(fault_mix={"250": 1, "451 4.3.0 later": 1}, fault_seed=7))
        codes = []
        for _ in range(20):
            try:
                await send(server)
                codes.append(250)
            except aiosmtplib.SMTPDataError as exc:
                codes.append(exc.code)
        outcomes.append(codes)
    assert outcomes[0] == outcomes[1] and set(outcomes[0]) == {250, 451}


async def test_refused_port() -> None:
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.SMTP(hostname="127.0.0.1", port=free_port(), timeout=2).connect()
