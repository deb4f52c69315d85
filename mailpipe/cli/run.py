"""``mailpipe run FLOW`` (one flow run, in-process) and ``mailpipe enqueue`` (queue one email)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import typer

from mailpipe.cli.output import (
    command,
    console,
    err_console,
    print_json,
    print_table,
    run,
    state,
)
from mailpipe.cli.values import BadOption, json_object, key_values, moment
from mailpipe.db import Database
from mailpipe.deploy.kept import kept_prefect_api
from mailpipe.errors import MailpipeError
from mailpipe.queue import Enqueued, enqueue

# The five deployments (prefect.yaml); each is flows/<name>.py:<name>.
FLOWS = (
    "process_email_queue",
    "monitor_smtp_health",
    "monitor_email_production",
    "snapshot_email_health",
    "process_email_feedback",
)


class FlowRunFailed(MailpipeError):
    """The flow run ended in a failed (or crashed, cancelled) state."""


def check_flow_name(name: str) -> None:
    """Refuse a name that is not one of the flows (before anything slow starts)."""
    if name not in FLOWS:
        raise BadOption(f"unknown flow {name!r}: choose one of {', '.join(FLOWS)}")


def load_flow(name: str) -> Any:
    """The flow object ``flows.<name>.<name>``, imported only now (Prefect is slow to load)."""
    check_flow_name(name)
    try:
        module = importlib.import_module(f"flows.{name}")
    except ModuleNotFoundError as exc:
        if exc.name in ("flows", f"flows.{name}"):
            raise MailpipeError(
                f"cannot import flows.{name}: run from the mailpipe checkout "
                "or install the mailpipe package"
            ) from None
        raise
    return getattr(module, name)


def check_parameters(flow: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` against the flow's signature before any run is created."""
    from prefect.exceptions import ParameterTypeError

    accepted = list(inspect.signature(flow.fn).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise BadOption(
            f"{flow.name} has no parameter {', '.join(unknown)}; its parameters "
            f"are: {', '.join(accepted) or '(none)'}"
        )
    # Prefect also logs the failure as a multi-line ERROR; the one-line error below says it.
    flows_logger = logging.getLogger("prefect.flows")
    was_disabled, flows_logger.disabled = flows_logger.disabled, True
    try:
        return flow.validate_parameters(params)
    except ParameterTypeError as exc:
        text = " ".join(str(exc).split())
        raise BadOption(f"invalid --param for {flow.name}: {text}") from None
    finally:
        flows_logger.disabled = was_disabled


async def run_flow(name: str, params: dict[str, Any] | None = None) -> Any:
    """Run one mailpipe flow once in this process and return its result.

    The flow goes through Prefect's flow engine, as a deployment's run does (run record,
    task runs, logs, artifacts, retries), against the Prefect API this process is set to.
    Raises :class:`FlowRunFailed` with the state's message when the run does not complete.
    """
    flow = load_flow(name)
    params = check_parameters(flow, params or {})
    final = await flow(**params, return_state=True)
    if not final.is_completed():
        result = await final.aresult(raise_on_failure=False)
        detail = (
            f"{type(result).__name__}: {result}"
            if isinstance(result, BaseException)
            else (final.message or final.name)
        )
        raise FlowRunFailed(f"flow run {name} ended {final.name}: {' '.join(str(detail).split())}")
    return await final.aresult()


@contextlib.contextmanager
def console_logs_without_tracebacks() -> Iterator[None]:
    """Prefect's run log lines still reach the terminal, without their tracebacks.

    The tracebacks stay in the run's logs in the Prefect API (the UI shows them); at a
    terminal a failed run ends with mailpipe's one-line error, as every command does.
    """
    # Terminal handlers only: Prefect's console handler and the CLI's basicConfig one.
    handlers = {
        h
        for logger in [
            logging.getLogger(),
            *(
                logging.getLogger(n)
                for n in list(logging.root.manager.loggerDict)
                if n.startswith("prefect")
            ),
        ]
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    }

    def short(original: Any) -> Any:
        def format_record(record: logging.LogRecord) -> str:
            # Hidden only while this handler formats: the API handler still gets them.
            saved = record.exc_info, record.exc_text, record.stack_info
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            try:
                return original(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved

        return format_record

    for handler in handlers:
        handler.format = short(handler.format)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for handler in handlers:
            del handler.format


@contextlib.contextmanager
def prefect_api(url: str | None) -> Iterator[None]:
    """Point this process's Prefect client at ``url`` (no change when None)."""
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


@command
def run_command(
    flow: str = typer.Argument(..., help=f"One of: {', '.join(FLOWS)}."),
    param: list[str] | None = typer.Option(
        None,
        "--param",
        "-p",
        help="A flow parameter as key=value (repeatable); the value is "
        'read as JSON when it is JSON (50, true, ["5m"]), else as text.',
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run one flow once, now, in this process, and print its summary.

    Same code path as its deployment; exits 1 when the run fails. Useful without a
    scheduler (cron), to debug, and in scripts.

    Uses the configured Prefect API (PREFECT_API_URL or the Prefect profile); without one,
    a local Prefect server that mailpipe starts on first use and keeps running for the next
    commands (`mailpipe server status`, `mailpipe server stop`).
    """
    params = key_values("--param", param)
    check_flow_name(flow)
    local_api = kept_prefect_api()  # the kept server boots while the flow is imported
    load_flow(flow)  # imports Prefect, which sets up its log handlers
    api_url = local_api() if local_api else None
    with (
        prefect_api(api_url),
        contextlib.nullcontext() if state["debug"] else console_logs_without_tracebacks(),
    ):
        summary = run(run_flow(flow, params))
    if as_json:
        print_json(summary)
    elif isinstance(summary, dict):
        print_table(
            [{"key": k, "value": v} for k, v in summary.items()], title=f"{flow}: completed"
        )
    else:
        console.print(f"{flow}: completed: {summary}", highlight=False)


@command
def enqueue_command(
    to: str = typer.Option(..., "--to", help="Recipient address."),
    template: str = typer.Option(..., "--template", help="Template key."),
    data: str = typer.Option(
        "{}", "--data", help='Template variables as a JSON object, e.g. \'{"name": "Ann"}\'.'
    ),
    priority: int = typer.Option(5, "--priority", help="0 (first) to 9."),
    at: str | None = typer.Option(
        None,
        "--at",
        help="Send at this time (ISO 8601 with a timezone) or after this delay (10m); default now.",
    ),
    idempotency_key: str | None = typer.Option(
        None,
        "--idempotency-key",
        help="A second enqueue with the same key returns the first "
        "event instead of queueing another.",
    ),
    event_type: str | None = typer.Option(None, "--event-type", help="Default: the template key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue one email, validated first (the application does the same with an INSERT).

    The Message-ID is fixed now and reused by every retry."""
    variables = json_object("--data", data)
    when = moment("--at", at) if at is not None else None

    async def go() -> Enqueued:
        async with Database(min_size=1, max_size=2) as db:
            return await enqueue(
                db,
                to,
                template,
                variables,
                event_type=event_type,
                priority=priority,
                at=when,
                idempotency_key=idempotency_key,
            )

    event = run(go())
    if as_json:
        print_json(
            {
                "id": event.id,
                "message_id": event.message_id,
                "status": event.status,
                "created": event.created,
            }
        )
    elif event.created:
        console.print(
            f"queued event {event.id} {event.message_id}"
            + (f" for {when:%Y-%m-%d %H:%M:%S%z}" if when else ""),
            highlight=False,
        )
    else:
        err_console.print(
            f"already queued as event {event.id} ({event.status}) with this "
            "idempotency key: nothing added",
            highlight=False,
        )
