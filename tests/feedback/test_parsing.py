"""Each provider's event types mapped to the vocabulary (payloads in the documented shapes)."""

from __future__ import annotations

import pytest

from mailpipe.feedback.providers import mailgun, postmark, resend, sendgrid, ses
from mailpipe.feedback.vocabulary import (
    FeedbackKind,
    FeedbackState,
    Verification,
    mask_address,
    normalise_message_id,
)

K = FeedbackKind


def ses_event(event_type: str, body: dict, key: str = "notificationType") -> list:
    mail = {
        "messageId": "ses-1",
        "destination": ["a@example.com"],
        "commonHeaders": {"messageId": "<m@x>"},
    }
    return ses.parse_ses_event({key: event_type, "mail": mail, **body}, "sns-1", {})


@pytest.mark.parametrize(
    ("event_type", "body", "kind"),
    [
        (
            "Bounce",
            {
                "bounce": {
                    "bounceType": "Permanent",
                    "bouncedRecipients": [{"emailAddress": "a@example.com"}],
                }
            },
            K.HARD_BOUNCE,
        ),
        (
            "Bounce",
            {
                "bounce": {
                    "bounceType": "Transient",
                    "bouncedRecipients": [{"emailAddress": "a@example.com"}],
                }
            },
            K.SOFT_BOUNCE,
        ),
        (
            "Complaint",
            {
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "a@example.com"}],
                    "complaintFeedbackType": "abuse",
                }
            },
            K.COMPLAINT,
        ),
        (
            "Complaint",
            {
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "a@example.com"}],
                    "complaintFeedbackType": "not-spam",
                }
            },
            None,
        ),
        (
            "Delivery",
            {"delivery": {"recipients": ["a@example.com"], "smtpResponse": "250 2.6.0 ok"}},
            K.DELIVERED,
        ),
        (
            "DeliveryDelay",
            {"deliveryDelay": {"delayedRecipients": [{"emailAddress": "a@example.com"}]}},
            K.DEFERRED,
        ),
        ("Reject", {"reject": {"reason": "Bad content"}}, K.REJECTED),
        ("Send", {}, None),
        ("Open", {}, None),
    ],
)
def test_ses_event_types(event_type: str, body: dict, kind: FeedbackKind | None) -> None:
    for key in ("notificationType", "eventType"):
        [event] = ses_event(event_type, body, key)
        assert event.kind is kind
        assert event.state is (FeedbackState.RECEIVED if kind else FeedbackState.IGNORED)
        assert (event.recipient, event.provider_message_id, event.message_id) == (
            "a@example.com",
            "ses-1",
            "<m@x>",
        )


def test_ses_malformed_recipient_lists_are_skipped_not_crashed() -> None:
    [event] = ses_event(
        "Bounce", {"bounce": {"bounceType": "Permanent", "bouncedRecipients": ["not-an-object"]}}
    )
    assert event.state is FeedbackState.INVALID and "names no recipient" in (event.error or "")


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"event": "delivered"}, K.DELIVERED),
        ({"event": "deferred"}, K.DEFERRED),
        ({"event": "bounce", "type": "bounce"}, K.HARD_BOUNCE),
        ({"event": "bounce", "type": "blocked"}, K.SOFT_BOUNCE),
        ({"event": "dropped"}, K.REJECTED),
        ({"event": "spamreport"}, K.COMPLAINT),
        ({"event": "unsubscribe"}, K.UNSUBSCRIBE),
        ({"event": "group_unsubscribe"}, K.UNSUBSCRIBE),
        ({"event": "open"}, None),
    ],
)
def test_sendgrid_event_types(event: dict, kind: FeedbackKind | None) -> None:
    parsed = sendgrid.parse_event({**event, "sg_event_id": "e1", "email": "A@Example.com"})
    assert parsed.kind is kind and parsed.recipient == "a@example.com"


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({"RecordType": "Bounce", "Type": "HardBounce", "ID": 1}, K.HARD_BOUNCE),
        ({"RecordType": "Bounce", "Type": "SoftBounce", "ID": 2}, K.SOFT_BOUNCE),
        ({"RecordType": "Bounce", "Type": "DnsError", "ID": 3}, K.SOFT_BOUNCE),
        ({"RecordType": "Bounce", "Type": "AutoResponder", "ID": 4}, None),
        ({"RecordType": "SpamComplaint", "Type": "SpamComplaint", "ID": 5}, K.COMPLAINT),
        ({"RecordType": "Delivery", "Recipient": "a@example.com"}, K.DELIVERED),
        (
            {
                "RecordType": "SubscriptionChange",
                "SuppressSending": True,
                "SuppressionReason": "ManualSuppression",
                "Recipient": "a@example.com",
            },
            K.UNSUBSCRIBE,
        ),
        (
            {
                "RecordType": "SubscriptionChange",
                "SuppressSending": False,
                "SuppressionReason": None,
                "Recipient": "a@example.com",
            },
            None,
        ),
        ({"RecordType": "Open", "Recipient": "a@example.com"}, None),
    ],
)
def test_postmark_record_types(record: dict, kind: FeedbackKind | None) -> None:
    event = postmark.parse_record({"MessageID": "pm-1", **record}, Verification.TOKEN)
    assert event.kind is kind and event.provider_message_id == "pm-1"


def test_postmark_unknown_types_are_invalid() -> None:
    assert postmark.parse_record({"RecordType": "Teleport"}, Verification.TOKEN).state is (
        FeedbackState.INVALID
    )
    bounce = postmark.parse_record({"RecordType": "Bounce", "Type": "Odd"}, Verification.TOKEN)
    assert bounce.state is FeedbackState.INVALID


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"event": "delivered"}, K.DELIVERED),
        ({"event": "failed", "severity": "permanent", "reason": "bounce"}, K.HARD_BOUNCE),
        ({"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}, K.REJECTED),
        ({"event": "failed", "severity": "permanent", "reason": "old"}, K.SOFT_BOUNCE),
        ({"event": "failed", "severity": "temporary", "reason": "generic"}, K.DEFERRED),
        ({"event": "complained"}, K.COMPLAINT),
        ({"event": "unsubscribed"}, K.UNSUBSCRIBE),
        ({"event": "opened"}, None),
    ],
)
def test_mailgun_event_types(data: dict, kind: FeedbackKind | None) -> None:
    body = {"signature": {"token": "t"}, "event-data": {"id": "mg-1", **data}}
    assert mailgun.parse_event(body).kind is kind


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"type": "email.delivered"}, K.DELIVERED),
        ({"type": "email.delivery_delayed"}, K.DEFERRED),
        ({"type": "email.bounced", "bounce": {"type": "Permanent"}}, K.HARD_BOUNCE),
        ({"type": "email.bounced", "bounce": {"type": "Transient"}}, K.SOFT_BOUNCE),
        ({"type": "email.complained"}, K.COMPLAINT),
        ({"type": "email.failed"}, K.REJECTED),
        ({"type": "email.opened"}, None),
        ({"type": "contact.created"}, None),
    ],
)
def test_resend_event_types(event: dict, kind: FeedbackKind | None) -> None:
    data = {"email_id": "rs-1", "to": ["a@example.com", "b@example.com"]}
    if "bounce" in event:
        data["bounce"] = event.pop("bounce")
    events = resend.parse_event({**event, "data": data}, "msg_1")
    assert [e.kind for e in events] == [kind, kind]
    assert [e.provider_event_id for e in events] == ["msg_1:a@example.com", "msg_1:b@example.com"]


def test_message_ids_and_masks() -> None:
    assert normalise_message_id("abc@x") == "<abc@x>"
    assert normalise_message_id(" <abc@x> (comment)") == "<abc@x>"
    assert mask_address("john.doe@example.com") == "j***@example.com"
    assert mask_address(None) == "-" and mask_address("nobody") == "***"
