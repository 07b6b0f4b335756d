"""Which Temporal server a command talks to: Threadline's own options first, then Temporal's environment
configuration (the `TEMPORAL_*` variables and `temporal.toml` profiles that the `temporal` CLI and every SDK read),
then the embedded server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from threadline.cli.errors import usage_error

if TYPE_CHECKING:
    from temporalio.service import TLSConfig

DEFAULT_NAMESPACE = "default"
PRECEDENCE = (
    "--temporal-* flags, then THREADLINE_TEMPORAL_ADDRESS / THREADLINE_NAMESPACE, then Temporal's own "
    "configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, the profile "
    "TEMPORAL_PROFILE of TEMPORAL_CONFIG_FILE or ~/.config/temporalio/temporal.toml), then the embedded server"
)


class ConnectionSettings(Protocol):
    """What `cli.options.ConnectionOptions` holds: the Temporal options as given, None where not given."""

    temporal_address: str | None
    namespace: str | None
    temporal_api_key: str | None
    temporal_tls_cert: Path | None
    temporal_tls_key: Path | None


@dataclass(frozen=True)
class TemporalTarget:
    address: str | None
    """None: the embedded server."""
    namespace: str
    api_key: str | None = None
    tls: bool | TLSConfig = False
    rpc_metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = "--temporal-address (THREADLINE_TEMPORAL_ADDRESS)"
    """Where the address came from, for error messages."""


def _read(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as e:
        raise usage_error(f"cannot read {option} file {path}: {e.strerror or e}") from e


def _temporal_env_config() -> dict:
    from temporalio.envconfig import ClientConfigProfile

    try:
        return dict(ClientConfigProfile.load().to_client_connect_config())
    except Exception as e:  # noqa: BLE001 - the SDK raises plain errors for unreadable files and bad values
        raise usage_error(f"cannot use Temporal's environment configuration (TEMPORAL_*, temporal.toml): {e}") from e


def temporal_target(options: ConnectionSettings) -> TemporalTarget:
    """The connection `options` name, completed from Temporal's environment configuration."""
    from temporalio.service import TLSConfig

    env = _temporal_env_config()
    explicit_address = options.temporal_address.strip() if options.temporal_address else None
    address = explicit_address or env.get("target_host")
    namespace = options.namespace or env.get("namespace") or DEFAULT_NAMESPACE
    api_key = options.temporal_api_key or env.get("api_key")
    cert = _read(options.temporal_tls_cert, "--temporal-tls-cert")
    key = _read(options.temporal_tls_key, "--temporal-tls-key")
    tls: bool | TLSConfig = env.get("tls", False)
    if cert is not None or key is not None:
        tls = TLSConfig(client_cert=cert, client_private_key=key)
    elif api_key and not tls:
        tls = True
    source = (
        "--temporal-address (THREADLINE_TEMPORAL_ADDRESS)" if explicit_address
        else "Temporal's environment configuration (TEMPORAL_ADDRESS or the TEMPORAL_PROFILE profile)"
    )
    return TemporalTarget(address=address, namespace=namespace, api_key=api_key, tls=tls,
                          rpc_metadata=env.get("rpc_metadata") or {}, source=source)
