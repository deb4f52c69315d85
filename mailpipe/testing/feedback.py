"""Provider webhooks signed the way each provider documents it, with keys generated here: for
the feedback tests and benchmarks (an SNS test CA and its signing certificate, SendGrid ECDSA
keys, Mailgun, Svix and SES payloads)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from mailpipe.feedback.providers.ses import string_to_sign

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    days: int = 30,
    start_days_ago: int = 1,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=start_days_ago))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class SnsPki:
    """A test CA, the SNS signing key and certificate it issued, and a rogue pair."""

    ca_file: Path
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    rogue_key: rsa.RSAPrivateKey
    rogue_cert: x509.Certificate
    expired_cert: x509.Certificate


def make_sns_pki(folder: Path) -> SnsPki:
    """Generate the CA the receiver trusts and certificates signed (or not) by it."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("mailpipe test SNS CA", ca_key, "mailpipe test SNS CA", ca_key, ca=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert("sns.amazonaws.com", key, "mailpipe test SNS CA", ca_key, ca=False)
    rogue_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue = _cert("sns.amazonaws.com", rogue_key, "sns.amazonaws.com", rogue_key, ca=False)
    expired = _cert(
        "sns.amazonaws.com",
        key,
        "mailpipe test SNS CA",
        ca_key,
        ca=False,
        days=-1,
        start_days_ago=30,
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "sns-ca.pem"
    ca_file.write_bytes(pem(ca))
    return SnsPki(ca_file, key, cert, rogue_key, rogue, expired)


def sns_message(
    message: dict[str, Any] | str,
    key: rsa.RSAPrivateKey,
    *,
    kind: str = "Notification",
    topic: str = TOPIC,
    cert_url: str = CERT_URL,
    version: str = "1",
    message_id: str | None = None,
) -> dict[str, Any]:
    """An SNS message as SNS posts it (fields as documented), signed with ``key``."""
    body: dict[str, Any] = {
        "Type": kind,
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
    }
    if kind == "Notification":
        body["Subject"] = "Amazon SES Email Event Notification"
        body["UnsubscribeURL"] = "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe"
    else:
        body["Token"] = "2336412f37fb687f5d51e6e2425f004aed"
        body["SubscribeURL"] = (
            "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
            f"{topic}&Token=2336412f37fb687f5d51e6e2425f004aed"
        )
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(string_to_sign(body), padding.PKCS1v15(), algorithm)
    body["Signature"] = base64.b64encode(signature).decode()
    return body


def ses_bounce(
    recipient: str,
    *,
    bounce_type: str = "Permanent",
    ses_id: str = "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
    message_id: str | None = None,
) -> dict[str, Any]:
    """An SES Bounce notification (the documented identity-notification format)."""
    headers = [{"name": "Message-ID", "value": message_id}] if message_id else []
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": recipient,
                    "action": "failed",
                    "status": "5.1.1" if bounce_type == "Permanent" else "4.2.2",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown"
                    if bounce_type == "Permanent"
                    else "smtp; 452 4.2.2 mailbox full",
                }
            ],
            "timestamp": "2026-12-05T20:01:00.000Z",
            "feedbackId": "000001378603176d-5a4b5ad9-6f30-4198-a8c3-b1eb0c270a1d-000000",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": {
            "timestamp": "2026-12-05T20:00:59.000Z",
            "source": "shop@example.com",
            "messageId": ses_id,
            "destination": [recipient],
            "headersTruncated": False,
            "headers": headers,
            "commonHeaders": {"messageId": message_id} if message_id else {},
        },
    }


def ses_complaint(recipient: str, ses_id: str) -> dict[str, Any]:
    """An SES Complaint notification."""
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": recipient}],
            "timestamp": "2026-12-05T20:05:00.000Z",
            "feedbackId": "0000013786031775-163e3910-53eb-4c8e-a04a-f29debf88a84-000000",
            "complaintFeedbackType": "abuse",
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
        },
        "mail": {
            "timestamp": "2026-12-05T20:00:59.000Z",
            "messageId": ses_id,
            "destination": [recipient],
        },
    }


def ses_delivery(recipient: str, ses_id: str) -> dict[str, Any]:
    """An SES Delivery notification."""
    return {
        "notificationType": "Delivery",
        "mail": {
            "timestamp": "2026-12-05T20:00:59.000Z",
            "messageId": ses_id,
            "destination": [recipient],
        },
        "delivery": {
            "timestamp": "2026-12-05T20:01:02.000Z",
            "processingTimeMillis": 3000,
            "recipients": [recipient],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
        },
    }


@dataclass
class SendGridKey:
    """The ECDSA key pair of SendGrid's signed Event Webhook."""

    private: ec.EllipticCurvePrivateKey

    @property
    def public_base64(self) -> str:
        """The verification key as SendGrid's settings show it (base64 DER)."""
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The two signature headers for ``body``."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }


def new_sendgrid_key() -> SendGridKey:
    """A fresh P-256 key pair."""
    return SendGridKey(ec.generate_private_key(ec.SECP256R1()))


def mailgun_body(
    key: str, event_data: dict[str, Any], *, timestamp: int | None = None, token: str | None = None
) -> bytes:
    """A Mailgun webhook body, signed."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex * 2
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": stamp, "token": token, "signature": signature},
            "event-data": event_data,
        }
    ).encode()


def svix_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Svix's three headers for a Resend webhook."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "svix-id": msg_id,
        "svix-timestamp": stamp,
        "svix-signature": f"v1,{base64.b64encode(b'not-this-one').decode()} "
        f"v1,{base64.b64encode(digest).decode()}",
        "Content-Type": "application/json",
    }
