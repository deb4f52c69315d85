"""The feedback receiver over real HTTP (uvicorn on a free port), each provider's requests
signed as it documents them: accepted, refused, malformed, repeated, oversized."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from mailpipe.db import Database
from mailpipe.feedback.providers.generic import sign as generic_sign
from mailpipe.feedback.providers.ses import SigningCertificates, string_to_sign
from mailpipe.feedback.settings import FeedbackSettings
from mailpipe.testing.feedback import (
    SendGridKey,
    SnsPki,
    mailgun_body,
    pem,
    ses_bounce,
    sns_message,
    svix_headers,
)
from tests.feedback.conftest import (
    GENERIC_SECRET,
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_TOKEN,
    POSTMARK_USER,
    RESEND_SECRET,
    Receiver,
)
from tests.feedback.support import dumps, inbox

# ---------------------------------------------------------------- Amazon SES through SNS


@pytest.mark.parametrize("version", ["1", "2"])
async def test_ses_bounce_signed_with_either_version_is_stored(
    receiver: Receiver, db: Database, sns_pki: SnsPki, version: str
) -> None:
    body = sns_message(
        ses_bounce("Ann@Example.com", message_id="<m1@mailpipe.local>"),
        sns_pki.key,
        version=version,
    )
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1, "duplicates": 0}
    [row] = await inbox(db)
    assert (row["provider"], row["state"], row["kind"], row["verification"]) == (
        "ses",
        "received",
        "hard_bounce",
        "signature",
    )
    assert row["recipient"] == "ann@example.com"
    assert row["message_id"] == "<m1@mailpipe.local>"
    assert row["provider_message_id"].startswith("0000014644fe5ef6")
    assert row["provider_event_id"] == f"{body['MessageId']}:Ann@Example.com"
    assert row["payload"] == body  # verbatim


async def test_ses_subscription_confirmation_of_an_allowed_topic(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    body = sns_message("You have chosen to subscribe", sns_pki.key, kind="SubscriptionConfirmation")
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 200, response.text
    [row] = await inbox(db)
    assert (row["state"], row["kind"], row["provider_kind"]) == (
        "ignored",
        None,
        "SubscriptionConfirmation",
    )


async def test_ses_tampered_message_is_401_and_not_stored(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    body = sns_message(ses_bounce("ann@example.com"), sns_pki.key)
    body["Message"] = body["Message"].replace("ann@example.com", "victim@example.com")
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 401
    assert "does not verify" in response.json()["error"]
    assert await inbox(db) == []


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com.pem",
        "https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-test.pem",
    ],
)
async def test_ses_certificate_url_outside_sns_hosts_is_403(
    receiver: Receiver, db: Database, sns_pki: SnsPki, cert_url: str
) -> None:
    body = sns_message(ses_bounce("ann@example.com"), sns_pki.key, cert_url=cert_url)
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 403
    assert "not HTTPS on an SNS host" in response.json()["error"]
    assert await inbox(db) == []


async def test_ses_topic_not_allowed_is_403(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    other = "arn:aws:sns:eu-west-1:999999999999:someone-else"
    body = sns_message(ses_bounce("ann@example.com"), sns_pki.key, topic=other)
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 403 and other in response.json()["error"]
    assert await inbox(db) == []


@pytest.mark.parametrize("which", ["rogue", "expired"])
async def test_ses_certificate_not_from_the_trusted_ca_or_expired_is_403(
    receiver: Receiver,
    db: Database,
    sns_pki: SnsPki,
    feedback_settings: FeedbackSettings,
    which: str,
) -> None:
    url = f"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-{which}.pem"
    cert = sns_pki.rogue_cert if which == "rogue" else sns_pki.expired_cert
    key = sns_pki.rogue_key if which == "rogue" else sns_pki.key
    SigningCertificates(feedback_settings.cert_cache_dir).cache_path(url).write_bytes(pem(cert))
    body = sns_message(ses_bounce("ann@example.com"), key, cert_url=url)
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 403, response.text
    assert await inbox(db) == []


async def test_ses_malformed_json_is_400_and_kept_as_unverifiable(
    receiver: Receiver, db: Database
) -> None:
    response = await receiver.post("/feedback/ses", b'{"Type": "Notification", ')
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]
    [row] = await inbox(db)
    assert (row["state"], row["verification"], row["payload"]) == ("invalid", "unverifiable", None)
    assert row["raw"] == '{"Type": "Notification", '
    again = await receiver.post("/feedback/ses", b'{"Type": "Notification", ')
    assert again.status_code == 400 and len(await inbox(db)) == 1


async def test_ses_unknown_event_type_is_400_and_kept(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    body = sns_message({"eventType": "Teleported", "mail": {"messageId": "x"}}, sns_pki.key)
    response = await receiver.post("/feedback/ses", dumps(body))
    assert response.status_code == 400
    assert "unknown SES event type 'Teleported'" in response.json()["error"]
    [row] = await inbox(db)
    assert (row["state"], row["verification"]) == ("invalid", "signature")


# ---------------------------------------------------------------- SendGrid


def sendgrid_batch(n: int, recipient: str = "bob@example.com") -> list[dict]:
    return [
        {
            "email": recipient,
            "timestamp": int(time.time()),
            "smtp-id": f"<sg-{i}@mailpipe.local>",
            "event": "delivered" if i % 2 else "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "reason": "550 5.1.1 The email account does not exist",
            "sg_event_id": f"sg_event_{i}_{uuid.uuid4().hex[:6]}",
            "sg_message_id": f"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.{i}",
        }
        for i in range(n)
    ]


async def test_sendgrid_batch_is_stored_once_even_when_retried(
    receiver: Receiver, db: Database, sendgrid_key: SendGridKey
) -> None:
    body = dumps(sendgrid_batch(5))
    response = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 5, "duplicates": 0}
    retried = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    assert retried.status_code == 200 and retried.json() == {"stored": 0, "duplicates": 5}
    rows = await inbox(db)
    assert len(rows) == 5
    assert [r["kind"] for r in rows] == ["hard_bounce", "delivered"] * 2 + ["hard_bounce"]
    assert rows[0]["provider_message_id"] == "14c5d75ce93"
    assert rows[0]["message_id"] == "<sg-0@mailpipe.local>"


async def test_sendgrid_bad_signature_is_401(
    receiver: Receiver, db: Database, sendgrid_key: SendGridKey
) -> None:
    body = dumps(sendgrid_batch(1))
    headers = sendgrid_key.headers(body)
    tampered = body.replace(b"bob@", b"eve@")
    response = await receiver.post("/feedback/sendgrid", tampered, headers)
    assert response.status_code == 401
    missing = await receiver.post("/feedback/sendgrid", body, {"Content-Type": "application/json"})
    assert missing.status_code == 401
    assert await inbox(db) == []


async def test_sendgrid_expired_timestamp_is_403(
    receiver: Receiver, db: Database, sendgrid_key: SendGridKey
) -> None:
    body = dumps(sendgrid_batch(1))
    stale = sendgrid_key.headers(body, timestamp=int(time.time()) - 3600)
    response = await receiver.post("/feedback/sendgrid", body, stale)
    assert response.status_code == 403 and "tolerance" in response.json()["error"]
    assert await inbox(db) == []


async def test_sendgrid_unknown_event_is_400_and_the_rest_is_stored(
    receiver: Receiver, db: Database, sendgrid_key: SendGridKey
) -> None:
    batch = sendgrid_batch(2)
    batch[1]["event"] = "teleported"
    body = dumps(batch)
    response = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    assert response.status_code == 400
    assert "unknown SendGrid event 'teleported'" in response.json()["error"]
    assert [r["state"] for r in await inbox(db)] == ["received", "invalid"]


async def test_sendgrid_malformed_json_is_400_and_kept_as_signed(
    receiver: Receiver, db: Database, sendgrid_key: SendGridKey
) -> None:
    body = b'[{"event": "delivered",'
    response = await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    assert response.status_code == 400
    [row] = await inbox(db)
    assert (row["state"], row["verification"]) == ("invalid", "signature")


# ---------------------------------------------------------------- Postmark


def postmark_bounce(bounce_id: int = 4323372036854775807) -> dict:
    return {
        "RecordType": "Bounce",
        "ID": bounce_id,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "Test bounce details",
        "Email": "john@example.com",
        "From": "sender@example.com",
        "BouncedAt": "2026-12-05T20:01:00Z",
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "MessageStream": "outbound",
    }


async def test_postmark_basic_auth_and_token_are_accepted(receiver: Receiver, db: Database) -> None:
    body = dumps(postmark_bounce())
    response = await receiver.post(
        "/feedback/postmark", body, auth=(POSTMARK_USER, POSTMARK_PASSWORD)
    )
    assert response.status_code == 200, response.text
    delivery = dumps(
        {
            "RecordType": "Delivery",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Recipient": "john@example.com",
            "DeliveredAt": "2026-12-05T20:00:30Z",
            "Details": "Test delivery webhook details",
        }
    )
    by_token = await receiver.post(
        "/feedback/postmark", delivery, {"X-Mailpipe-Token": POSTMARK_TOKEN}
    )
    assert by_token.status_code == 200, by_token.text
    rows = await inbox(db)
    assert [(r["kind"], r["verification"]) for r in rows] == [
        ("hard_bounce", "basic_auth"),
        ("delivered", "token"),
    ]
    assert rows[0]["provider_message_id"] == "883953f4-6105-42a2-a16a-77a8eac79483"


async def test_postmark_wrong_credentials_are_401(receiver: Receiver, db: Database) -> None:
    body = dumps(postmark_bounce())
    for kwargs in (
        {"auth": (POSTMARK_USER, "wrong")},
        {"auth": ("someone", POSTMARK_PASSWORD)},
        {"headers": {"X-Mailpipe-Token": "wrong"}},
        {},
    ):
        response = await receiver.post("/feedback/postmark", body, **kwargs)
        assert response.status_code == 401, kwargs
    assert await inbox(db) == []


# ---------------------------------------------------------------- Mailgun


def mailgun_event(event_id: str | None = None, event: str = "failed") -> dict:
    return {
        "event": event,
        "id": event_id or uuid.uuid4().hex,
        "timestamp": time.time(),
        "severity": "permanent",
        "reason": "bounce",
        "recipient": "carol@example.com",
        "message": {"headers": {"message-id": "20261205.abc@mailpipe.local"}},
        "delivery-status": {
            "code": 550,
            "enhanced-code": "5.1.1",
            "message": "No such user",
            "description": "",
        },
    }


async def test_mailgun_signed_event_is_stored_and_a_replayed_token_refused(
    receiver: Receiver, db: Database
) -> None:
    token = "f" * 50
    body = mailgun_body(MAILGUN_KEY, mailgun_event("evt-1"), token=token)
    response = await receiver.post("/feedback/mailgun", body)
    assert response.status_code == 200, response.text
    same = await receiver.post("/feedback/mailgun", body)  # Mailgun's own retry: a no-op
    assert same.status_code == 200 and same.json() == {"stored": 0, "duplicates": 1}
    replay = mailgun_body(MAILGUN_KEY, mailgun_event("evt-2", "delivered"), token=token)
    refused = await receiver.post("/feedback/mailgun", replay)
    assert refused.status_code == 403 and "already used" in refused.json()["error"]
    [row] = await inbox(db)
    assert (row["kind"], row["replay_token"], row["message_id"]) == (
        "hard_bounce",
        token,
        "<20261205.abc@mailpipe.local>",
    )


async def test_mailgun_bad_signature_or_stale_timestamp_is_refused(
    receiver: Receiver, db: Database
) -> None:
    wrong_key = mailgun_body("key-wrong", mailgun_event())
    assert (await receiver.post("/feedback/mailgun", wrong_key)).status_code == 401
    stale = mailgun_body(MAILGUN_KEY, mailgun_event(), timestamp=int(time.time()) - 3600)
    assert (await receiver.post("/feedback/mailgun", stale)).status_code == 403
    assert await inbox(db) == []


# ---------------------------------------------------------------- Resend (Svix)


def resend_event(kind: str = "email.bounced") -> dict:
    return {
        "type": kind,
        "created_at": "2026-12-05T20:01:00.000Z",
        "data": {
            "created_at": "2026-12-05T20:00:59.000Z",
            "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
            "from": "Acme <onboarding@resend.dev>",
            "to": ["dave@example.com"],
            "subject": "Sending this example",
            "bounce": {
                "message": "The recipient's email address is on the suppression list.",
                "subType": "Suppressed",
                "type": "Permanent",
            },
        },
    }


async def test_resend_svix_signed_event_is_stored(receiver: Receiver, db: Database) -> None:
    body = dumps(resend_event())
    response = await receiver.post("/feedback/resend", body, svix_headers(RESEND_SECRET, body))
    assert response.status_code == 200, response.text
    [row] = await inbox(db)
    assert (row["kind"], row["recipient"], row["provider_message_id"]) == (
        "hard_bounce",
        "dave@example.com",
        "56761188-7520-42d8-8898-ff6fc54ce618",
    )


async def test_resend_bad_or_stale_signature_is_refused(receiver: Receiver, db: Database) -> None:
    body = dumps(resend_event())
    other_secret = "whsec_" + base64.b64encode(b"another secret entirely").decode()
    bad = await receiver.post("/feedback/resend", body, svix_headers(other_secret, body))
    assert bad.status_code == 401
    stale = svix_headers(RESEND_SECRET, body, timestamp=int(time.time()) - 3600)
    assert (await receiver.post("/feedback/resend", body, stale)).status_code == 403
    assert await inbox(db) == []


# ---------------------------------------------------------------- generic


async def test_generic_hmac_and_bearer(receiver: Receiver, db: Database) -> None:
    body = dumps(
        {
            "events": [
                {
                    "id": "g1",
                    "kind": "complaint",
                    "recipient": "erin@example.com",
                    "message_id": "<g1@mailpipe.local>",
                },
                {
                    "id": "g2",
                    "kind": "delivered",
                    "recipient": "erin@example.com",
                    "provider_message_id": "relay-42",
                },
            ]
        }
    )
    stamp = str(int(time.time()))
    signed = {
        "X-Mailpipe-Timestamp": stamp,
        "X-Mailpipe-Signature": generic_sign(GENERIC_SECRET, stamp, body),
    }
    assert (await receiver.post("/feedback/generic", body, signed)).status_code == 200
    bearer = dumps({"id": "g3", "kind": "hard_bounce", "message_id": "<g3@x>"})
    response = await receiver.post(
        "/feedback/generic", bearer, {"Authorization": f"Bearer {GENERIC_SECRET}"}
    )
    assert response.status_code == 200
    wrong = await receiver.post(
        "/feedback/generic", bearer, {"Authorization": "Bearer not-the-secret"}
    )
    assert wrong.status_code == 401
    rows = await inbox(db)
    assert [(r["kind"], r["verification"]) for r in rows] == [
        ("complaint", "signature"),
        ("delivered", "signature"),
        ("hard_bounce", "shared_secret"),
    ]


async def test_generic_unknown_kind_is_400_with_the_reason(
    receiver: Receiver, db: Database
) -> None:
    body = dumps({"id": "g9", "kind": "exploded", "message_id": "<g9@x>"})
    response = await receiver.post(
        "/feedback/generic", body, {"Authorization": f"Bearer {GENERIC_SECRET}"}
    )
    assert response.status_code == 400
    assert "unknown kind 'exploded'" in response.json()["error"]
    [row] = await inbox(db)
    assert row["state"] == "invalid"


# ---------------------------------------------------------------- the HTTP edge


async def test_oversized_body_is_413_before_being_read(receiver: Receiver, db: Database) -> None:
    big = b"[" + b" " * (70 * 1024) + b"]"
    declared = await receiver.post("/feedback/sendgrid", big)
    assert declared.status_code == 413

    async def chunks():  # no Content-Length: refused while streaming
        for _ in range(100):
            yield b" " * 1024

    streamed = await receiver.post("/feedback/generic", chunks())
    assert streamed.status_code == 413
    assert await inbox(db) == []


async def test_unknown_routes_are_404(receiver: Receiver) -> None:
    assert (await receiver.post("/feedback/sparkpost", b"{}")).status_code == 404
    assert (await receiver.post("/somewhere", b"{}")).status_code == 404


async def test_logs_carry_no_secret_and_no_full_address(
    receiver: Receiver,
    db: Database,
    sendgrid_key: SendGridKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = dumps(sendgrid_batch(2, recipient="private.person@example.com"))
    await receiver.post("/feedback/sendgrid", body, sendgrid_key.headers(body))
    await receiver.post(
        "/feedback/sendgrid", body.replace(b"private", b"xprivate"), sendgrid_key.headers(body)
    )
    await receiver.post(
        "/feedback/generic", body, {"Authorization": "Bearer " + GENERIC_SECRET[:-1]}
    )
    await receiver.post(
        "/feedback/postmark", dumps(postmark_bounce()), auth=(POSTMARK_USER, POSTMARK_PASSWORD)
    )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "feedback" in text  # the receiver did log
    for secret in (GENERIC_SECRET, POSTMARK_PASSWORD, MAILGUN_KEY, RESEND_SECRET):
        assert secret not in text
    assert "private.person@example.com" not in text and "john@example.com" not in text
    assert json.dumps(sendgrid_key.public_base64) not in text


async def test_ses_subscribe_url_outside_sns_hosts_is_403(
    receiver: Receiver, db: Database, sns_pki: SnsPki
) -> None:
    signed = sns_message("subscribe", sns_pki.key, kind="SubscriptionConfirmation")
    # Re-signed with the hostile URL: only the host check can refuse it.
    signed["SubscribeURL"] = "https://evil.example/?Action=ConfirmSubscription"
    signature = sns_pki.key.sign(string_to_sign(signed), padding.PKCS1v15(), hashes.SHA1())
    signed["Signature"] = base64.b64encode(signature).decode()
    response = await receiver.post("/feedback/ses", dumps(signed))
    assert response.status_code == 403 and "SubscribeURL" in response.json()["error"]
    assert await inbox(db) == []


async def test_health_route(receiver: Receiver) -> None:
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        response = await client.get("/feedback/health")
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "routes": ["generic", "mailgun", "postmark", "resend", "sendgrid", "ses"],
    }


async def test_nul_characters_are_kept_as_text_not_a_retry_loop(
    receiver: Receiver, db: Database
) -> None:
    bearer = {"Authorization": f"Bearer {GENERIC_SECRET}"}
    escaped = b'{"id": "n1", "kind": "delivered", "message_id": "<n@x>", "reason": "a\\u0000b"}'
    response = await receiver.post("/feedback/generic", escaped, bearer)
    assert response.status_code == 400 and "u0000" in response.json()["error"]
    raw_nul = b'{"id": "n2", "kind": "delivered"\x00}'
    assert (await receiver.post("/feedback/generic", raw_nul, bearer)).status_code == 400
    rows = await inbox(db)
    assert [(r["state"], r["verification"]) for r in rows] == [
        ("invalid", "shared_secret"),
        ("invalid", "shared_secret"),
    ]
    assert "\\x00" in rows[1]["raw"]
