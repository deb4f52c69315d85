"""``mailpipe demo``: the whole pipeline on a fresh machine, with nothing configured.

Starts the embedded Postgres and a local capture server, migrates, seeds a provider pointing at
the capture server, a few templates and a few hundred sample events (valid, invalid, scheduled
later, several priorities, a suppressed recipient, a template error), then runs the flows.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailpipe.db import Database, Jsonb
from mailpipe.migrations import migrate
from mailpipe.suppressions import add_suppressions
from mailpipe.templates import save_template

DEMO_PROVIDER = "local-capture"

TEMPLATES: dict[str, dict[str, Any]] = {
    "welcome": {
        "subject": "Welcome to Acme, {{ name }}!",
        "text_body": "Hi {{ name }},\n\nThanks for signing up. Your plan: {{ plan }}.\n",
        "html_body": "<h1>Welcome, {{ name }}!</h1><p>Your plan: <b>{{ plan }}</b>.</p>",
    },
    "password_reset": {
        "subject": "Reset your password",
        "text_body": "Hi {{ name }},\n\nReset it here: {{ link }}\nThe link expires in 1 hour.\n",
        "html_body": '<p>Hi {{ name }},</p><p><a href="{{ link }}">Reset your password</a></p>',
    },
    "receipt": {
        "subject": "Reçu n° {{ order }} — {{ total }} €",
        "text_body": "Merci {{ name }} ! Total : {{ total }} €\n",
        "html_body": "<p>Merci {{ name }} ! Total : <b>{{ total }} €</b></p>",
    },
}
NAMES = ["Ada", "Grace", "Linus", "Zoë", "José", "Anaïs", "Bjørn", "Chen Wei", "O'Brien"]


@dataclass
class DemoSetup:
    """What the demo created."""

    events: int
    invalid: int
    scheduled_later: int
    suppressed: int
    template_errors: int
    maildir: Path
    kinds: dict[str, int] = field(default_factory=dict)


async def seed_demo(
    db: Database, *, smtp_host: str, smtp_port: int, maildir: Path, events: int = 300, seed: int = 7
) -> DemoSetup:
    """Migrate and seed the demo data; safe to run again (upserts, fresh events)."""
    await migrate(db)
    await db.execute(
        "INSERT INTO smtp_provider_configs (provider_name, host, port, tls_mode, from_address,"
        " priority, max_connections, per_minute_limit)"
        " VALUES (%s, %s, %s, 'none', 'Acme <hello@acme.example>', 1, 4, 100000)"
        " ON CONFLICT (provider_name) DO UPDATE SET host = EXCLUDED.host,"
        " port = EXCLUDED.port, status = 'active', suspended_until = NULL,"
        " consecutive_failures = 0",
        (DEMO_PROVIDER, smtp_host, smtp_port),
    )
    existing = {
        r["template_key"]
        for r in await db.fetch_all("SELECT template_key FROM email_templates WHERE active")
    }
    for key, template in TEMPLATES.items():
        if key not in existing:
            await save_template(db, key, **template)
    await add_suppressions(db, ["unsubscribed@example.com"], reason="unsubscribe", source="demo")

    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    rows = []
    setup = DemoSetup(events, 0, 0, 0, 0, maildir)
    for i in range(events):
        name = rng.choice(NAMES)
        template = rng.choice(list(TEMPLATES))
        payload: dict[str, Any] = {
            "name": name,
            "plan": rng.choice(["free", "pro"]),
            "link": f"https://acme.example/reset/{i}",
            "order": 1000 + i,
            "total": f"{rng.uniform(5, 500):.2f}",
        }
        address = f"customer{i}@example.com"
        scheduled = now
        if i % 50 == 7:
            address = f"not-an-address-{i}"  # the trigger marks it failed
            setup.invalid += 1
        elif i % 50 == 13:
            scheduled = now + dt.timedelta(hours=rng.randint(1, 48))
            setup.scheduled_later += 1
        elif i % 100 == 21:
            address = "unsubscribed@example.com"
            setup.suppressed += 1
        elif i % 100 == 42:
            payload.pop("name")  # strict templates refuse a missing variable
            setup.template_errors += 1
        rows.append(
            (template, address, template, rng.choice([1, 5, 5, 5, 9]), scheduled, Jsonb(payload))
        )
    async with db.transaction() as tx:
        await tx.execute_many(
            "INSERT INTO communication_events (event_type, recipient_email, template_key,"
            " priority, scheduled_at, payload) VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )
    return setup
