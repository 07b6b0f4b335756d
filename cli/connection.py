"""Connecting to Temporal: the explicit `--temporal-address`, or the embedded server (started when needed)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from channels.delivery import TemporalUnreachable, connect
from cli import embedded
from cli.errors import CliError, usage_error
from cli.options import ConnectionOptions
from cli.output import status

CONNECT_TIMEOUT = 10.0


@dataclass
class Temporal:
    client: Client
    address: str
    ui_url: str | None
    embedded: bool


def _read(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as e:
        raise usage_error(f"cannot read {option} file {path}: {e.strerror or e}") from e


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
    if options.temporal_address:
        address = options.temporal_address.strip()
        cert = _read(options.temporal_tls_cert, "--temporal-tls-cert")
        key = _read(options.temporal_tls_key, "--temporal-tls-key")
        try:
            client = await asyncio.wait_for(
                connect(address, options.namespace, api_key=options.temporal_api_key, tls_cert=cert, tls_key=key),
                CONNECT_TIMEOUT,
            )
        except (TemporalUnreachable, TimeoutError, RuntimeError) as e:
            reason = "no answer within {:.0f} s".format(CONNECT_TIMEOUT) if isinstance(e, TimeoutError) else _reason(e)
            raise CliError(
                f"cannot reach the Temporal server at {address} ({reason}): check --temporal-address "
                "(THREADLINE_TEMPORAL_ADDRESS), or leave it out to use the embedded server"
            ) from e
        return Temporal(client, address, None, embedded=False)
    server = await embedded.ensure_running(options.namespace)
    if server.started:
        status(f"started the embedded Temporal server on {server.address} in the background (state in "
               f"{embedded.files().db}; stop it with: threadline server stop)")
        status(f"Temporal UI: {server.ui_url}")
    try:
        client = await asyncio.wait_for(connect(server.address, options.namespace), CONNECT_TIMEOUT)
    except (TemporalUnreachable, TimeoutError) as e:
        raise CliError(f"cannot reach the embedded Temporal server at {server.address} ({_reason(e)})") from e
    return Temporal(client, server.address, server.ui_url, embedded=True)
