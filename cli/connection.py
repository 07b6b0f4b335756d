"""Connecting to Temporal: the server `cli.temporal_config` names, or the embedded server (started when needed)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig
from threadline.channels.delivery import TemporalUnreachable, connect
from threadline.channels.payload_codec import PayloadKeyError
from threadline.cli import embedded
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import ConnectionOptions
from threadline.cli.output import status
from threadline.cli.temporal_config import temporal_target

CONNECT_TIMEOUT = 10.0

log = logging.getLogger("threadline.attempts")


@dataclass
class Temporal:
    client: Client
    address: str
    ui_url: str | None
    embedded: bool


def _reason(e: BaseException) -> str:
    text = str(e)
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("dns error", "unknown host"),
        ("Name or service not known", "unknown host"),
        ("timed out", "timed out"),
        ("Unauthenticated", "authentication failed"),
        ("PermissionDenied", "permission denied"),
    ):
        if marker.lower() in text.lower():
            return reason
    return text.split(": ", 2)[-1][:200] if text else e.__class__.__name__


async def open_temporal(options: ConnectionOptions) -> Temporal:
    from threadline.channels.payload_codec import PayloadKeyError, codec_from_env

    try:
        codec_from_env()
    except PayloadKeyError as e:
        raise usage_error(str(e)) from e
    target = temporal_target(options)
    if target.address:
        try:
            client = await asyncio.wait_for(
                connect(target.address, target.namespace, api_key=target.api_key, tls=target.tls,
                        rpc_metadata=target.rpc_metadata),
                CONNECT_TIMEOUT,
            )
        except (TemporalUnreachable, TimeoutError, RuntimeError) as e:
            reason = "no answer within {:.0f} s".format(CONNECT_TIMEOUT) if isinstance(e, TimeoutError) else _reason(e)
            raise CliError(
                f"cannot reach the Temporal server at {target.address} ({reason}): the address comes from "
                f"{target.source}; fix it, or leave it out to use the embedded server"
            ) from e
        return Temporal(client, target.address, None, embedded=False)
    server = await embedded.ensure_running(target.namespace)
    if server.started:
        status(f"started the embedded Temporal server on {server.address} in the background (state in "
               f"{embedded.files().db}; stop it with: threadline server stop)")
        status(f"Temporal UI: {server.ui_url}")
    try:
        client = await asyncio.wait_for(connect(server.address, target.namespace), CONNECT_TIMEOUT)
    except (TemporalUnreachable, TimeoutError) as e:
        raise CliError(f"cannot reach the embedded Temporal server at {server.address} ({_reason(e)})") from e
    return Temporal(client, server.address, server.ui_url, embedded=True)


def recover_dead_workers_meanwhile(options: ConnectionOptions) -> threading.Thread:
    """Recovers the work of this host's dead workers (channels/attempts.py) on a thread of its own, while the agent's
    start-up checks import the whole runtime (about a second), instead of once its worker polls. Temporal dispatches
    the retry of a failed attempt a second after the failure at the soonest, whatever its retry delay (server 1.32:
    1.0 s for a delay of 1 ms), so the earlier the cut-off attempts are failed, the earlier their turns answer.

    It connects only when a dead worker left a journal, with an SDK runtime of its own, as `--metrics-port` must set
    the default one before any client exists. A server that does not answer yet (the embedded one, started later)
    leaves the work to the worker's own pass."""
    thread = threading.Thread(target=asyncio.run, args=(_recover_dead_workers(options),),
                              name="threadline-recovery", daemon=True)
    thread.start()
    return thread


async def _recover_dead_workers(options: ConnectionOptions) -> None:
    from threadline.channels.attempts import attempt_journal_at, recover_dead_workers  # the SDK's worker side

    try:
        target = temporal_target(options)
    except CliError:
        return  # the start-up checks report it
    if target.address:
        address = target.address
    elif embedded.is_listening(embedded.HOST, port := embedded.default_port()):
        address = f"{embedded.HOST}:{port}"
    else:
        return
    if not attempt_journal_at(address, target.namespace).of_dead_processes():  # on its own thread already
        return
    try:
        client = await asyncio.wait_for(connect(
            address, target.namespace, api_key=target.api_key, tls=target.tls, rpc_metadata=target.rpc_metadata,
            runtime=Runtime(telemetry=TelemetryConfig())), CONNECT_TIMEOUT)
    except (TemporalUnreachable, TimeoutError, RuntimeError, PayloadKeyError) as e:
        log.debug("no early recovery: %s", e)
        return
    await recover_dead_workers(client)
