"""Security, as the non-superuser roles and after a full run with known secrets.

tests/test_security.py covers the roles, column privileges and RLS basics on the original
tables; this suite extends it to every table (including alerts and snapshots), to the ways
round a column privilege or a policy (whole-row references, COPY, statistics, TRUNCATE, DDL),
and to secrets: a whole worker run (four flows, the data-quality suites, the CLI, the error
paths) connected as a LOGIN role that is only a member of mailpipe_app, with a database
password, an SMTP password in an environment variable and another in a Prefect Secret block,
against SMTP servers one of which echoes the password it received in its 535 reply. Then
every place a secret could end up is searched for all three: the worker's stdout and stderr
(INFO logs and tracebacks), every row of every table (audit rows, delivery attempts,
last_error, alerts, snapshots...), Prefect's artifacts, run logs and run states, the Data Docs
and validation results, the CLI's output and its error lines, and exception messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailpipe.config import Settings, get_settings
from mailpipe.db import Database, admin_execute, with_database_name
from mailpipe.errors import DatabaseError, MailpipeError
from mailpipe.testing.smtpd import Behaviour, SMTPTestServer, free_port
from tests import factories
from tests.cli_support import invoke
from tests.conftest import TEMPLATE_DB
from tests.reliability.support import ROOT, Figures, as_role

ENV_VARIABLE = "RELIABILITY_SMTP_PASSWORD"
BOUNCE = "bounce1@example.com"  # insert_events(prefix="bounce")


class EchoAuthServer(SMTPTestServer):
    """A hostile or buggy provider: its 535 reply repeats the password it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.passwords_seen: list[str] = []

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        password = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else ""
        self.passwords_seen.append(password)
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 wrong password {password}"
        )


@dataclass
class FullRun:
    """A database after a full run, the secrets used, and every text output of the run."""

    admin_url: str
    app_url: str
    role: str
    secrets: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    echo_servers: list[EchoAuthServer] = field(default_factory=list)


def secret_forms(secret: str) -> list[str]:
    """The secret and how it travels in SMTP AUTH (LOGIN: base64; PLAIN: base64 of
    NUL user NUL password)."""
    return [
        secret,
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"\0mailer\0{secret}".encode()).decode(),
    ]


async def table_names(db: Database) -> list[str]:
    return [
        r["tablename"]
        for r in await db.fetch_all(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
    ]


async def dump_tables(url: str) -> str:
    """Every row of every table, as text."""
    async with Database(url, min_size=1, max_size=1) as db:
        parts = []
        for table in await table_names(db):
            text = await db.fetch_value(
                f"SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t"
            )
            parts.append(f"## {table}\n{text}")
        return "\n".join(parts)


async def prefect_records() -> str:
    """Artifacts, run logs, and the states and parameters of every flow and task run."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_artifacts()
        flow_runs = await client.read_flow_runs()
        task_runs = await client.read_task_runs()
        logs = []
        offset = 0
        while True:
            page = await client.read_logs(offset=offset, limit=200)
            logs += page
            offset += len(page)
            if len(page) < 200:
                break
    return "\n".join(
        [
            *(f"artifact {a.key}: {a.description} {a.data}" for a in artifacts),
            *(
                f"flow run {r.name}: {r.parameters} {r.state.message if r.state else ''}"
                for r in flow_runs
            ),
            *(f"task run {r.name}: {r.state.message if r.state else ''}" for r in task_runs),
            *(f"log {entry.level} {entry.message}" for entry in logs),
        ]
    )


def files_text(folder: Path) -> str:
    if not folder.exists():
        return ""
    return "\n".join(
        p.read_text(errors="replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


def cli_outputs(app_url: str, unreachable: str) -> str:
    """What an operator sees: a few commands as the app role, and the error line an
    unreachable database gives."""
    outputs = []
    saved = os.environ.get("DATABASE_URL")
    try:
        for url, commands in (
            (
                app_url,
                [
                    ["queue", "status", "--json"],
                    ["queue", "list"],
                    ["provider", "list"],
                    ["provider", "show", "echo-env"],
                    ["health", "check"],
                    ["metrics"],
                ],
            ),
            (unreachable, [["queue", "status"], ["provider", "list"]]),
        ):
            os.environ["DATABASE_URL"] = url
            # Fail fast on the unreachable one (the pool retries for connect_timeout).
            os.environ["MAILPIPE_CONNECT_TIMEOUT"] = "1" if url == unreachable else "10"
            get_settings.cache_clear()
            for command in commands:
                result = invoke(*command)
                outputs.append(
                    f"$ mailpipe {' '.join(command)} -> {result.exit_code}\n"
                    f"{result.output}{result.stderr}"
                )
                if result.exception and not isinstance(result.exception, SystemExit):
                    outputs.append("".join(traceback.format_exception(result.exception)))
    finally:
        os.environ.pop("MAILPIPE_CONNECT_TIMEOUT", None)
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
        get_settings.cache_clear()
    return "\n".join(outputs)


async def seed(url: str, servers: dict[str, SMTPTestServer], block: str) -> None:
    async with Database(url, min_size=1, max_size=2) as db:
        auth = {"username": "mailer"}
        await factories.add_provider(
            db,
            "echo-env",
            servers["echo-env"],
            priority=1,
            credentials={"password_env": ENV_VARIABLE},
            **auth,
        )
        await factories.add_provider(
            db,
            "echo-block",
            servers["echo-block"],
            priority=2,
            credentials={"secret_block": block},
            **auth,
        )
        await factories.add_provider(
            db,
            "good-block",
            servers["good-block"],
            priority=3,
            credentials={"secret_block": block},
            per_minute_limit=8,
            **auth,
        )
        await factories.add_provider(
            db,
            "good-env",
            servers["good-env"],
            priority=4,
            credentials={"password_env": ENV_VARIABLE},
            per_minute_limit=10,
            **auth,
        )
        await factories.add_provider(
            db,
            "unset-env",
            None,
            port=free_port(),
            priority=9,
            credentials={"password_env": "RELIABILITY_UNSET"},
            **auth,
        )
        await factories.add_template(db)
        await factories.insert_events(db, 1, prefix="bounce")  # first in line: a hard bounce
        await factories.insert_events(db, 24)


@pytest.fixture(scope="module")
def full_run(
    postgres_url: str,
    template_url: str,
    prefect_harness: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FullRun]:
    import prefect.settings
    from prefect.blocks.system import Secret

    token = uuid.uuid4().hex[:10]
    secrets = {
        "database password": f"dbpw{uuid.uuid4().hex}",
        "SMTP password (environment variable)": f"envpw{uuid.uuid4().hex}",
        "SMTP password (Prefect Secret block)": f"blockpw{uuid.uuid4().hex}",
    }
    db_password, env_password, block_password = secrets.values()
    name, role, block = f"mailpipe_sec_{token}", f"mailpipe_login_{token}", f"rel-smtp-{token}"
    admin_execute(postgres_url, [f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"])
    admin_url = with_database_name(postgres_url, name)
    admin_execute(
        admin_url,
        [
            f"CREATE ROLE {role} LOGIN PASSWORD '{db_password}' IN ROLE mailpipe_app",
            f"GRANT CONNECT ON DATABASE {name} TO {role}",
        ],
    )
    parts = urlsplit(admin_url)
    app_url = urlunsplit(
        parts._replace(
            netloc=f"{role}:{db_password}@{parts.hostname or ''}"
            + (f":{parts.port}" if parts.port else "")
        )
    )
    Secret(value=block_password).save(block, overwrite=True)
    bounce = {BOUNCE: "550 5.1.1 no such user"}
    servers: dict[str, SMTPTestServer] = {
        "echo-env": EchoAuthServer(),
        "echo-block": EchoAuthServer(),
        "good-block": SMTPTestServer(
            Behaviour(auth=("mailer", block_password), rcpt_replies=bounce)
        ),
        "good-env": SMTPTestServer(Behaviour(auth=("mailer", env_password), rcpt_replies=bounce)),
    }
    for server in servers.values():
        server.start()
    results = tmp_path_factory.mktemp("quality")
    run = FullRun(
        admin_url,
        app_url,
        role,
        secrets,
        echo_servers=[s for s in servers.values() if isinstance(s, EchoAuthServer)],
    )
    try:
        asyncio.run(seed(admin_url, servers, block))
        env = {
            **os.environ,
            "DATABASE_URL": app_url,
            ENV_VARIABLE: env_password,
            "RELIABILITY_DB_PASSWORD": db_password,
            "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
            "PREFECT_LOGGING_LEVEL": "INFO",
            "MAILPIPE_QUALITY_RESULTS_DIR": str(results),
        }
        worker = subprocess.run(
            [sys.executable, "-m", "tests.reliability.full_run"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        run.outputs["worker stdout and stderr"] = worker.stdout + worker.stderr
        assert worker.returncode == 0, worker.stderr[-3000:]
        run.summary = json.loads(worker.stdout.strip().splitlines()[-1])
        os.environ[ENV_VARIABLE] = env_password  # the CLI's health check probes too
        unreachable = f"postgresql://mailpipe:{db_password}@127.0.0.1:{free_port()}/mailpipe"
        run.outputs["CLI output and errors"] = cli_outputs(app_url, unreachable)
        run.outputs["every row of every table"] = asyncio.run(dump_tables(admin_url))
        run.outputs["Prefect artifacts, logs and run states"] = asyncio.run(prefect_records())
        run.outputs["Data Docs and validation results"] = files_text(results)
        run.outputs["exception messages"] = "\n".join(run.summary.get("errors", []))
        yield run
    finally:
        os.environ.pop(ENV_VARIABLE, None)
        for server in servers.values():
            server.stop()
        admin_execute(
            postgres_url,
            [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"DROP ROLE IF EXISTS {role}"],
        )


# ------------------------------------------------------------------ the run itself


def test_the_full_run_worked_as_a_least_privilege_login_role(full_run: FullRun) -> None:
    summary = full_run.summary
    sent = summary["process_email_queue"]["sent"]
    # 8 + 10 per-minute sends over the two good providers, one of them the hard bounce.
    assert sent == 17, summary
    by_provider = summary["process_email_queue"]["by_provider"]
    assert set(by_provider) == {"good-block", "good-env"}, by_provider  # both secrets worked
    assert summary["monitor_smtp_health"]["probed"] == 5
    assert summary["snapshot_email_health"]["rows"] >= 1
    # Both echo servers really received the password, and replied with it.
    assert all(s.passwords_seen for s in full_run.echo_servers)
    assert "Postgres is unreachable" in summary["errors"][0]
    places = {k: len(v) for k, v in full_run.outputs.items()}
    assert all(places.values()), places  # nothing searched below is empty


@pytest.mark.parametrize(
    "place",
    [
        "worker stdout and stderr",
        "every row of every table",
        "Prefect artifacts, logs and run states",
        "Data Docs and validation results",
        "CLI output and errors",
        "exception messages",
    ],
)
def test_no_secret_anywhere(full_run: FullRun, place: str, figures: Figures) -> None:
    text = full_run.outputs[place]
    assert text, f"{place}: nothing was captured, the search would prove nothing"
    for what, secret in full_run.secrets.items():
        for form in secret_forms(secret):
            assert form not in text, f"the {what} leaks into {place}"
    figures.record(
        "security",
        f"secrets in {place}",
        secrets=len(full_run.secrets),
        characters_searched=len(text),
        leaks=0,
    )


def test_an_echoed_password_is_redacted_where_the_reply_is_recorded(full_run: FullRun) -> None:
    text = full_run.outputs["every row of every table"]
    assert "wrong password ***" in text  # delivery attempts and connection audit rows
    assert "wrong password ***" in full_run.outputs["worker stdout and stderr"]


# ------------------------------------------------------------------ roles and RLS, every table


@pytest.fixture
async def populated(full_run: FullRun) -> Any:
    async with Database(full_run.admin_url, min_size=1, max_size=2) as db:
        yield db


async def test_every_table_is_closed_or_row_level_secured(populated: Database) -> None:
    for table in await table_names(populated):
        row = await populated.fetch_one(
            "SELECT c.relrowsecurity AS rls, has_table_privilege('mailpipe_app', c.oid,"
            " 'SELECT') AS app, has_table_privilege('mailpipe_analyst', c.oid, 'SELECT')"
            " AS analyst, has_table_privilege('public', c.oid, 'SELECT') AS public"
            " FROM pg_class c WHERE c.oid = %s::regclass",
            (table,),
        )
        assert row is not None and not row["public"], table
        if row["app"] or row["analyst"]:
            assert row["rls"], f"{table}: granted to a role but without row-level security"
            policies = {
                r["policyname"]
                for r in await populated.fetch_all(
                    "SELECT policyname FROM pg_policies WHERE tablename = %s", (table,)
                )
            }
            assert policies == {f"{table}_app_all", f"{table}_analyst_read"}, table


async def test_policies_hold_on_every_populated_table(
    populated: Database, full_run: FullRun
) -> None:
    outsider = f"mailpipe_outsider_{uuid.uuid4().hex[:8]}"
    await populated.execute(f"CREATE ROLE {outsider} NOLOGIN")
    try:
        checked = 0
        for table in await table_names(populated):
            if table == "schema_migrations":
                continue
            total = await populated.fetch_value(f"SELECT count(*) FROM {table}")
            assert total, f"{table} is empty after the full run: nothing to check"
            await populated.execute(f"GRANT SELECT ON {table} TO {outsider}")
            assert await as_role(populated, outsider, f"SELECT * FROM {table}") == [], table
            assert (await as_role(populated, full_run.role, f"SELECT count(*) AS n FROM {table}"))[
                0
            ]["n"] == total
            if table != "smtp_provider_configs":  # the analyst lacks the credentials column
                assert (
                    await as_role(
                        populated, "mailpipe_analyst", f"SELECT count(*) AS n FROM {table}"
                    )
                )[0]["n"] == total
            column = await populated.fetch_value(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1",
                (table,),
            )
            for statement in (
                f"DELETE FROM {table}",
                f"UPDATE {table} SET {column} = {column}",
                f"INSERT INTO {table} DEFAULT VALUES",
                f"TRUNCATE {table}",
            ):
                with pytest.raises(DatabaseError, match="permission denied"):
                    await as_role(populated, "mailpipe_analyst", statement)
            checked += 1
        assert checked >= 10
    finally:
        await populated.execute(f"DROP OWNED BY {outsider}")
        await populated.execute(f"DROP ROLE {outsider}")


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE communication_events",
        "ALTER TABLE communication_events DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE smtp_provider_configs NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY communication_events_app_all ON communication_events",
        "CREATE POLICY sneaky ON smtp_provider_configs FOR SELECT TO PUBLIC USING (true)",
        "GRANT SELECT ON smtp_provider_configs TO mailpipe_analyst",
        "ALTER TABLE smtp_provider_configs DROP CONSTRAINT"
        " smtp_provider_configs_credentials_is_reference",
        "SET ROLE postgres",
        "CREATE EXTENSION IF NOT EXISTS dblink",
    ],
)
async def test_the_app_login_role_cannot_widen_its_own_access(
    populated: Database, full_run: FullRun, statement: str
) -> None:
    with pytest.raises(DatabaseError):
        await as_role(populated, full_run.role, statement)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT p FROM smtp_provider_configs p",
        "SELECT row_to_json(p) FROM smtp_provider_configs p",
        "TABLE smtp_provider_configs",
        "COPY smtp_provider_configs TO STDOUT",
        "SELECT credentials::text FROM smtp_provider_configs",
        "SELECT count(*) FROM smtp_provider_configs WHERE credentials IS NOT NULL",
    ],
)
async def test_the_analyst_cannot_reach_credentials_another_way(
    populated: Database, query: str
) -> None:
    with pytest.raises(DatabaseError, match="permission denied"):
        await as_role(populated, "mailpipe_analyst", query)


async def test_statistics_do_not_show_credentials_to_the_analyst(populated: Database) -> None:
    await populated.execute("ANALYZE smtp_provider_configs")
    assert (
        await populated.fetch_value(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'smtp_provider_configs'"
            " AND attname = 'credentials'"
        )
        == 1
    )  # the superuser sees them
    assert (
        await as_role(
            populated,
            "mailpipe_analyst",
            "SELECT most_common_vals FROM pg_stats WHERE tablename ="
            " 'smtp_provider_configs' AND attname = 'credentials'",
        )
        == []
    )


async def test_no_function_runs_with_its_owners_rights(populated: Database) -> None:
    # A SECURITY DEFINER function would run as its owner (a superuser) and bypass RLS.
    assert (
        await populated.fetch_all(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND p.prosecdef"
        )
        == []
    )


async def test_the_login_role_has_no_special_attribute(
    populated: Database, full_run: FullRun
) -> None:
    row = await populated.fetch_one(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication"
        " FROM pg_roles WHERE rolname = %s",
        (full_run.role,),
    )
    assert row == dict.fromkeys(row or {"x": 1}, False)


def test_an_unreachable_database_error_carries_no_password(full_run: FullRun) -> None:
    password = full_run.secrets["database password"]
    url = f"postgresql://mailpipe:{password}@127.0.0.1:{free_port()}/mailpipe"

    async def open_it() -> None:
        async with Database(url, min_size=1, max_size=1, settings=Settings(connect_timeout=1)):
            pass

    with pytest.raises(MailpipeError) as info:
        asyncio.run(open_it())
    whole = "".join(traceback.format_exception(info.value))
    assert password not in whole and "mailpipe:***@127.0.0.1" in str(info.value)
