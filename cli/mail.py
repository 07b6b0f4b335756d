"""`threadline mailbox create|list|delete` (the mailbox registry) and `threadline mail serve` (a standalone
inbound SMTP server feeding every registered mailbox's queue).

The registry is `THREADLINE_HOME/mail.sqlite3`: the SMTP server (in an agent process or `mail serve`) and the
agents consuming mailboxes read it. Bad input exits 2, an address already registered (or unknown) exits 1.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from threadline.cli.agent_options import (
    MailAllow,
    MaxMailSize,
    SmtpHost,
    SmtpPort,
    StorageUrl,
    ThreadStoreUrl,
    spec_default,
)
from threadline.cli.agent_spec import check_mail_allow
from threadline.cli.errors import FAILURE, USAGE
from threadline.cli.options import ConnectionOptions, with_options
from threadline.cli.output import Verbose, error_line, status
from threadline.models.spec import MailSettings

mailbox_app = typer.Typer(no_args_is_help=True)
mail_app = typer.Typer(no_args_is_help=True)

Address = Annotated[str, typer.Option("--address", "-a", help="The mailbox's email address.", show_default=False)]


def _registry(thread_store_url: str | None):  # noqa: ANN202 - MailRegistry, imported when a command runs
    """The mail registry: in the PostgreSQL thread store when one is given, else this machine's SQLite file."""
    from threadline.channels.mail.registry import open_mail_store
    from threadline.models.spec import validate_thread_store_url

    try:
        url = validate_thread_store_url(thread_store_url)
    except ValueError as e:
        _fail(f"--thread-store-url: {e}", USAGE)
    try:
        return open_mail_store(url)
    except RuntimeError as e:  # the database is unreachable or refuses us: the message names it without its password
        _fail(str(e), FAILURE)


def _fail(message: str, code: int) -> None:
    error_line(message)
    raise typer.Exit(code)


@mailbox_app.command("create")
def create(
    address: Address,
    room: Annotated[str | None, typer.Option("--room", envvar="THREADLINE_ROOM", help="Room whose agents answer it.",
                                             show_default=False)] = None,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Queue its mail goes to (default: the address, "
                                              "with @ spelt _at_).", show_default=False)] = None,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Register a mailbox: mail to ADDRESS becomes jobs on a queue of ROOM, answered by --channel mail:ADDRESS."""
    from threadline.channels.mail.addresses import MailboxError, MailboxExists

    if not room or not room.strip():
        _fail("--room is required (or set THREADLINE_ROOM)", USAGE)
    registry = _registry(thread_store_url)
    try:
        mailbox = registry.create_mailbox(address, room.strip(), queue.strip() if queue else None)
    except MailboxError as e:
        _fail(str(e), USAGE)
    except MailboxExists as e:
        _fail(str(e), FAILURE)
    typer.echo(f"Created mailbox: {mailbox.address} (room {mailbox.room}, queue {mailbox.queue})")
    status(f"answer it with: threadline process join --room {mailbox.room} --agent-name NAME "
           f"--channel mail:{mailbox.address} --smtp-relay HOST:PORT")


@mailbox_app.command("list")
def list_(
    room: Annotated[str | None, typer.Option("--room", envvar="THREADLINE_ROOM", help="Only this room's mailboxes.",
                                             show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """List registered mailboxes."""
    boxes = _registry(thread_store_url).mailboxes(room)
    if output == "json":
        typer.echo(json.dumps([
            {"address": b.address, "room": b.room, "queue": b.queue,
             "created_at": datetime.fromtimestamp(b.created_at, timezone.utc).isoformat()} for b in boxes
        ], indent=2))
        return
    if not boxes:
        status("no mailboxes" + (f" in room {room}" if room else ""))
        return
    width = max(len(b.address) for b in boxes)
    typer.echo(f"{'ADDRESS':<{width}}  {'ROOM':<20}  QUEUE")
    for b in boxes:
        typer.echo(f"{b.address:<{width}}  {b.room:<20}  {b.queue}")


@mailbox_app.command("delete")
def delete(address: Address, thread_store_url: ThreadStoreUrl = None, verbose: Verbose = False) -> None:
    """Unregister a mailbox: new mail to it is refused (550); its threads and jobs stay."""
    from threadline.channels.mail.addresses import MailboxNotFound

    registry = _registry(thread_store_url)
    try:
        registry.delete_mailbox(address)
    except MailboxNotFound as e:
        _fail(str(e), FAILURE)
    typer.echo(f"Deleted mailbox: {address.strip().lower()}")


@mail_app.command("serve")
@with_options(connection=ConnectionOptions)
def serve(
    connection: ConnectionOptions,
    smtp_host: SmtpHost = spec_default(MailSettings, "smtp_host"),
    smtp_port: SmtpPort = spec_default(MailSettings, "smtp_port"),
    max_mail_size: MaxMailSize = spec_default(MailSettings, "max_size"),
    mail_allow: MailAllow = None,
    storage_url: StorageUrl = None,
    thread_store_url: ThreadStoreUrl = None,
    verbose: Verbose = False,
) -> None:
    """Receive mail for every registered mailbox and hand it to Temporal (agents with --channel mail:ADDRESS
    answer it; run them with --smtp-port 0 and the same --storage-url). Stops on SIGINT/SIGTERM."""
    from threadline.models.spec import validate_storage_url

    allow = check_mail_allow(mail_allow)
    try:
        storage_url = validate_storage_url(storage_url)
    except ValueError as e:
        _fail(f"--storage-url: {e}", USAGE)
    registry = _registry(thread_store_url)
    port = smtp_port or spec_default(MailSettings, "smtp_port")
    asyncio.run(_serve(connection, registry, smtp_host, port, max_mail_size, allow, storage_url))


async def _serve(connection: ConnectionOptions, registry: Any, host: str, port: int, max_size: int,
                 allow: list[str], storage_url: str | None = None) -> None:
    from threadline.channels.mail.smtp_server import MailServer, MailServerError, lazy_client
    from threadline.cli.connection import open_temporal
    from threadline.cli.errors import CliError

    async def connect():  # noqa: ANN202
        return (await open_temporal(connection)).client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = MailServer(registry, lazy_client(connect), host=host, port=port, max_size=max_size,
                        allow=allow, storage_url=storage_url)
    try:
        await server.start()
    except MailServerError as e:
        raise CliError(str(e)) from e
    status(f"receiving mail on {host}:{server.port} for {len(registry.mailboxes())} mailbox(es); "
           "Ctrl-C stops")
    try:
        await stop.wait()
    finally:
        await server.close()
