"""Connecting to Temporal: the server `cli.temporal_config` names, or the embedded server (started when needed)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from temporalio.client import Client
from threadline.channels.delivery import TemporalUnreachable, connect
from threadline.cli import embedded
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import ConnectionOptions
from threadline.cli.output import status
from threadline.cli.temporal_config import temporal_target

CONNECT_TIMEOUT = 10.0


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
