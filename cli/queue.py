"""`threadline room queue send|status|list`: durable background jobs for scripts and cron.

Input mistakes (invalid JSON, an empty payload or queue name) print one red `error:` line and exit 2 with nothing
sent; run-time failures (Temporal unreachable, unknown job) exit 1, and so does `send --wait` for a failed job.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from threadline.cli.errors import FAILURE, USAGE, CliError, usage_error
from threadline.cli.options import ConnectionOptions, Namespace, TemporalAddress
from threadline.cli.output import error_line, warn
from threadline.cli.output import status as status_line
from threadline.models.jobs import JOB_STATES, JobAccepted, JobPayloadError, JobStatus
from threadline.models.limits import validate_name, validate_queue_name

if TYPE_CHECKING:
    from temporalio.client import Client

queue_app = typer.Typer(no_args_is_help=True)


class Format(str, Enum):
    text = "text"
    json = "json"


Room = Annotated[
    str | None,
    typer.Option("--room", envvar="THREADLINE_ROOM", help="Room of the queue.", show_default=False),
]
QueueName = Annotated[str | None, typer.Option("--queue", "-q", help="Queue name.", show_default=False)]
Output = Annotated[Format, typer.Option("--output", "-o", case_sensitive=False, help="Output format.")]

def _reports_errors(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Every failure becomes one red `error:` line and an exit code, whichever app mounts these commands."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = fn(*args, **kwargs)
        except CliError as e:
            error_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except JobPayloadError as e:
            error_line(str(e))
            raise typer.Exit(USAGE) from None
        except Exception as e:
            # Imported here: `threadline --help` must not pay for the Temporal client.
            from threadline.channels.delivery import TemporalUnreachable
            from threadline.channels.queue_jobs import JobNotFound

            if not isinstance(e, (TemporalUnreachable, JobNotFound)):
                raise
            error_line(str(e))
            raise typer.Exit(FAILURE) from None
        if code:
            raise typer.Exit(code)

    return wrapper


def _need_room(room: str | None) -> str:
    if room is None or not room.strip():
        raise usage_error("--room is required (or set THREADLINE_ROOM)")
    try:
        return validate_name("room", room.strip())
    except ValueError as e:
        raise usage_error(str(e)) from None


def _need_queue(queue: str | None) -> str:
    if queue is None:
        raise usage_error("--queue is required")
    if not queue.strip():
        raise usage_error("--queue is empty: give the queue's name")
    try:
        return validate_queue_name(queue.strip())
    except ValueError as e:
        raise usage_error(str(e)) from None


def _read_payload(json_text: str | None, file: str | None) -> Any:
    if json_text is not None and file is not None:
        raise usage_error("give the payload with --json or --file, not both")
    if json_text is None and file is None:
        raise usage_error("give the payload with --json JSON, --file PATH or --file - (stdin)")
    source = "--json"
    if file is not None:
        source = "stdin" if file == "-" else file
        try:
            json_text = sys.stdin.read() if file == "-" else Path(file).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise usage_error(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    assert json_text is not None
    if not json_text.strip():
        raise usage_error(f"the payload from {source} is empty")
    try:
        return json.loads(json_text)
    except json.JSONDecodeError as e:
        raise usage_error(f"the payload from {source} is not valid JSON: {e}") from None


async def _connect(address: str | None, namespace: str | None) -> Client:
    """The server at `address`, else the embedded one (started in the background when nothing runs)."""
    from threadline.cli.connection import open_temporal

    temporal = await open_temporal(ConnectionOptions(temporal_address=address, namespace=namespace))
    return temporal.client


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


# Output.


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z" if value else "-"


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return f"{(end - start).total_seconds():.2f} s" if start and end else ""


def _print_accepted(accepted: JobAccepted) -> None:
    suffix = "" if accepted.created else " (already sent with this idempotency key: not sent again)"
    typer.echo(f"job: {accepted.job_id}{suffix}")
    if accepted.thread_id:
        typer.echo(f"thread: {accepted.thread_id}")
    else:
        typer.echo(f"thread: {accepted.thread} (in the consuming agent's thread dir)")


def _print_status(job: JobStatus) -> None:
    rows = [
        ("job", job.job_id),
        ("status", job.status),
        ("queue", job.queue),
        ("agent", job.agent or "-"),
        ("thread", job.thread_id or "-"),
        ("accepted", _when(job.accepted_at)),
        ("started", _when(job.started_at) + (f" (waited {w})" if (w := _seconds(job.accepted_at, job.started_at)) else "")),
        ("finished", _when(job.finished_at) + (f" (ran {r})" if (r := _seconds(job.started_at, job.finished_at)) else "")),
    ]
    rows += [("approval", f"{a} (threadline process approve|deny ID)") for a in job.waiting_for]
    if job.reply_job_id:
        rows.append(("reply job", job.reply_job_id))
    if job.error:
        rows.append(("error", job.error))
    for name, value in rows:
        typer.echo(f"{name + ':':<10}{value}")
    if job.text:
        typer.echo("result:")
        typer.echo(job.text)


def _json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


# Commands.


@queue_app.command("send")
@_reports_errors
def send(
    room: Room = None,
    queue: QueueName = None,
    json_payload: Annotated[str | None, typer.Option("--json", help="The job payload as JSON.", show_default=False)] = None,
    file: Annotated[str | None, typer.Option("--file", "-f", help="Read the payload from a JSON file, or - for stdin.",
                                             show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the job finished and print its result.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Sending the same key again makes no second job (it names the job).",
        show_default=False)] = None,
    output: Output = Format.text,
    temporal_address: TemporalAddress = None,
    namespace: Namespace = None,
) -> int:
    """Send a job to a room queue. Exits 0 once Temporal has it (with --wait: once it finished, 1 if it failed).

    The payload: a JSON object with `prompt` (or `content`, a list of text and file items) and optionally `path` (the thread to continue; UTC date tokens {YYYY} {MM} {DD} {HH} {mm} {SS}), `model`, `instructions`, `sender_name` (or `from`), `attachments` (room storage paths) and `reply_to` (a queue that receives the result as a job).

    A JSON string is a prompt. An object without `prompt` or `content` runs with its whole JSON as the text. Unknown keys are kept as the job's metadata.
    """
    room_name = _need_room(room)
    queue_name = _need_queue(queue)
    payload = _read_payload(json_payload, file)
    from threadline.channels.queue_jobs import check_job, queue_has_consumers, send_job, wait_for_job

    check_job(room_name, queue_name, payload, idempotency_key)

    async def go() -> int:
        client = await _connect(temporal_address, namespace)
        accepted = await send_job(client, room_name, queue_name, payload, idempotency_key=idempotency_key)
        if output == Format.text:
            _print_accepted(accepted)
        consumed = await queue_has_consumers(client, room_name, queue_name)
        if not consumed:
            warn(f"no agent consumes queue {queue_name} in room {room_name} yet: the job waits until one starts "
                 f"(--channel queue:{queue_name})")
        if not wait:
            if output == Format.json:
                _json(accepted.model_dump(mode="json"))
            return 0
        if output == Format.text:
            status_line(f"waiting for job {accepted.job_id}…")
        job = await wait_for_job(client, room_name, accepted.job_id)
        if output == Format.json:
            _json({**job.model_dump(mode="json"), "created": accepted.created})
        else:
            _print_status(job)
        if job.status == "failed":
            error_line(f"job {job.job_id} failed: {job.error}")
            return FAILURE
        return 0

    return _run(go())


@queue_app.command("status")
@_reports_errors
def status(
    job_id: Annotated[str, typer.Argument(help="The job id send printed: QUEUE/ID.", show_default=False)],
    room: Room = None,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Queue of a bare job id.",
                                              show_default=False)] = None,
    output: Output = Format.text,
    temporal_address: TemporalAddress = None,
    namespace: Namespace = None,
) -> int:
    """Show a job: status, thread, result text or error, timings."""
    room_name = _need_room(room)
    if not job_id.strip():
        raise usage_error("the job id is empty")
    from threadline.channels.queue_jobs import job_status as read_job_status

    async def go() -> int:
        client = await _connect(temporal_address, namespace)
        job = await read_job_status(client, room_name, job_id, queue=queue)
        if output == Format.json:
            _json(job.model_dump(mode="json"))
        else:
            _print_status(job)
        return 0

    return _run(go())


@queue_app.command("list")
@_reports_errors
def list_(
    room: Room = None,
    queue: QueueName = None,
    job_status: Annotated[str | None, typer.Option(
        "--status", help=f"Only jobs with this status: {', '.join(JOB_STATES)}.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most jobs to list, newest first.")] = 100,
    output: Output = Format.text,
    temporal_address: TemporalAddress = None,
    namespace: Namespace = None,
) -> int:
    """List a queue's jobs, newest first (from Temporal visibility: a change may take a second to show)."""
    room_name = _need_room(room)
    queue_name = _need_queue(queue)
    if job_status is not None and job_status not in JOB_STATES:
        raise usage_error(f"unknown --status {job_status!r}: use one of {', '.join(JOB_STATES)}")
    from threadline.channels.queue_jobs import list_jobs

    async def go() -> int:
        client = await _connect(temporal_address, namespace)
        jobs = await list_jobs(client, room_name, queue_name, job_status, limit=limit)
        if output == Format.json:
            _json([job.model_dump(mode="json", exclude={"text", "usage"}) for job in jobs])
            return 0
        if not jobs:
            status_line(f"no jobs in queue {queue_name} of room {room_name}"
                        + (f" with status {job_status}" if job_status else ""))
            return 0
        width = max(len(job.job_id) for job in jobs)
        typer.echo(f"{'JOB':<{width}}  {'STATUS':<9}  {'AGENT':<12}  {'ACCEPTED':<20}  THREAD")
        for job in jobs:
            typer.echo(f"{job.job_id:<{width}}  {job.status:<9}  {(job.agent or '-'):<12}  "
                       f"{_when(job.accepted_at):<20}  {job.thread_id or '-'}")
        return 0

    return _run(go())
