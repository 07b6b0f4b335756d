"""The agent options → one validated `AgentSpec`: everything a user can get wrong is caught here, before any
connection, as a usage error (then `cli/preflight.py` checks what needs code: rules, tools, model)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError
from threadline.cli.errors import usage_error
from threadline.cli.temporal_config import temporal_target
from threadline.models.limits import validate_queue_name
from threadline.models.spec import AgentSpec

AGENT_PANEL = "Agent"
TEMPORAL_PANEL = "Temporal"
from threadline.cli.agent_options import AgentOptions
from threadline.cli.options import ConnectionOptions

CHANNEL_FORMS = "chat, mail:ADDRESS[?reply-all=true|false], queue:NAME or toolkit:NAME"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def parse_channel(value: str) -> str:
    """One `--channel` value → its canonical form; anything else is a usage error naming the accepted forms."""
    raw = value.strip()
    kind, sep, rest = raw.partition(":")
    kind = kind.lower()
    if kind == "chat" and not sep:
        return "chat"
    if kind == "mail" and sep:
        address, _, query = rest.partition("?")
        address = address.strip().lower()
        if _ADDRESS.match(address):
            params = dict(parse_qsl(query.lower(), keep_blank_values=True)) if query else {}
            if not params:
                return f"mail:{address}"
            if set(params) == {"reply-all"} and params["reply-all"] in ("true", "false"):
                return f"mail:{address}?reply-all={params['reply-all']}"
            raise usage_error(f"channel {value!r}: the only mail option is ?reply-all=true or ?reply-all=false")
        raise usage_error(f"channel {value!r}: {address or '(empty)'} is not an email address; use mail:ADDRESS")
    if kind == "queue" and sep:
        try:
            return f"queue:{validate_queue_name(rest.strip())}"
        except ValueError as e:
            raise usage_error(f"channel {value!r}: {e}; use queue:NAME") from None
    if kind == "toolkit" and sep:
        name = rest.strip()
        if _NAME.match(name):
            return f"toolkit:{name}"
        raise usage_error(f"channel {value!r}: toolkit names use letters, digits, '.', '_' or '-'; use toolkit:NAME")
    raise usage_error(f"unknown channel {value!r}: use {CHANNEL_FORMS}")


def parse_channels(values: list[str] | None) -> list[str]:
    channels: list[str] = []
    for value in values or []:
        channel = parse_channel(value)
        if channel.lower() not in [c.lower() for c in channels]:
            channels.append(channel)
    return channels


def require(value: str | None, option: str, env: str, what: str) -> str:
    if not value or not value.strip():
        raise usage_error(f"{option} is required: pass {option} {what} or set {env}")
    return value.strip()


def check_base_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise usage_error(
            f"--model-base-url {url!r} is not an http(s) URL; use for example http://localhost:11434/v1"
        )
    return url.strip()


def env_rules() -> list[str]:
    return [line.strip() for line in os.environ.get("THREADLINE_RULES", "").splitlines() if line.strip()]


def build_spec(agent: AgentOptions, connection: ConnectionOptions, *, default_channels: list[str] | None = None):
    """The options → a validated `AgentSpec`: rules files readable, tools importable, the model usable."""
    from threadline.cli.preflight import preflight

    room = require(agent.room, "--room", "THREADLINE_ROOM", "NAME")
    agent_name = require(agent.agent_name, "--agent-name", "THREADLINE_AGENT_NAME", "NAME")
    channels = parse_channels(agent.channel) or list(default_channels or [])
    target = temporal_target(connection)
    base_url = check_base_url(agent.model_base_url)
    try:
        spec = AgentSpec(
            room=room,
            agent_name=agent_name,
            rules=[*env_rules(), *(agent.rule or [])],
            rules_files=list(agent.rules_file or []),
            instructions_files=[p.strip() for p in agent.instructions or [] if p.strip()],
            room_rules_files=[p.strip() for p in agent.room_rules or [] if p.strip()],
            skill_dirs=[p.strip() for p in agent.skill_dir or [] if p.strip()],
            preamble_rule=agent.preamble_rule,
            time_tool=agent.time,
            uuid_tool=agent.uuid,
            read_only_storage=agent.read_only_storage,
            storage_mounts=storage_mounts(agent),
            log_llm_requests=agent.log_llm_requests,
            metrics_port=agent.metrics_port,
            model_prices=agent.model_prices,
            model=agent.model.strip(),
            model_base_url=base_url,
            channels=channels,
            threading_mode=agent.threading_mode.value,
            thread_dir=agent.thread_dir,
            storage=agent.storage,
            require_storage=agent.storage,
            storage_url=agent.storage_url,
            thread_store_url=agent.thread_store_url,
            tools=list(agent.tool or []),
            max_steps=agent.max_steps,
            max_output_tokens=agent.max_output_tokens,
            reasoning_effort=agent.reasoning_effort.value if agent.reasoning_effort else None,
            context=context_settings(agent),
            approvals=approval_settings(agent),
            shell=shell_settings(agent),
            temporal_address=target.address,
            namespace=target.namespace,
            mail=mail_settings(agent),
            http=http_settings(agent),
            use_toolkits=[t.strip() for t in agent.use_toolkit or []],
            web=web_settings(agent),
            mcp=mcp_settings(agent),
        )
    except ValidationError as e:
        raise usage_error(_first_error(e)) from e
    preflight(spec)
    return spec


def storage_mounts(agent: AgentOptions):  # noqa: ANN201
    from threadline.activities.storage import StoragePathError, relative_key
    from threadline.models.spec import StorageMount

    mounts = []
    for kind, option, values in (("local", "--storage-tool-local-path", agent.storage_tool_local_path),
                                 ("room", "--storage-tool-room-path", agent.storage_tool_room_path)):
        for value in values or []:
            parts = value.rsplit(":", 2) if value.count(":") >= 2 else value.rsplit(":", 1)
            mode = parts.pop() if len(parts) == 3 and parts[-1] in ("ro", "rw") else "rw"
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise usage_error(f"{option} {value!r}: expected SRC:MOUNT or SRC:MOUNT:ro|rw")
            source, mount = parts[0].strip(), parts[1].strip()
            try:
                relative_key(mount)
                if kind == "room":
                    relative_key(source)
            except StoragePathError as e:
                raise usage_error(f"{option} {value!r}: {e}") from e
            if kind == "local" and not Path(source).expanduser().is_dir():
                raise usage_error(f"{option} {value!r}: {source} is not a folder on this machine")
            mounts.append(StorageMount(kind=kind, source=source, mount=mount, writable=mode == "rw"))
    return mounts


def shell_settings(agent: AgentOptions):  # noqa: ANN201
    from threadline.activities.shell import ShellConfigError, check_shell
    from threadline.models.spec import ShellSettings

    set_env = {}
    for pair in agent.shell_set_env or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise usage_error(f"--shell-set-env {pair!r}: expected NAME=VALUE")
        set_env[name.strip()] = value
    settings = ShellSettings(
        enabled=agent.shell, apply_patch=agent.apply_patch, working_dir=agent.working_dir or None,
        network=agent.shell_network, copy_env=[n.strip() for n in agent.shell_copy_env or [] if n.strip()],
        set_env=set_env, image=(agent.shell_image or "").strip() or None, unsafe=agent.shell_unsafe,
        timeout_seconds=agent.shell_timeout, cpu_seconds=agent.shell_cpu_seconds, memory_mb=agent.shell_memory_mb,
    )
    try:
        check_shell(settings)
    except ShellConfigError as e:
        raise usage_error(str(e)) from e
    return settings


def approval_settings(agent: AgentOptions):  # noqa: ANN201
    from threadline.models.spec import ApprovalSettings

    patterns = [p.strip() for value in agent.require_approval or [] for p in value.split(",") if p.strip()]
    approvers = check_mail_allow(agent.approver, "--approver")
    for approver in approvers:
        if approver.startswith("@"):
            raise usage_error(f"--approver {approver!r}: name an address, not a domain")
    return ApprovalSettings(require=patterns, timeout_seconds=agent.approval_timeout, approvers=approvers)


def context_settings(agent: AgentOptions):  # noqa: ANN201
    from threadline.models.spec import ContextSettings

    model = agent.compaction_model.strip() if agent.compaction_model else None
    return ContextSettings(management=agent.context_management.value, window=agent.context_window,
                           threshold=agent.compaction_threshold, compaction_model=model or None)


def web_settings(agent: AgentOptions):  # noqa: ANN201
    """--web-fetch / --web-search; a search without a usable provider is refused here (exit 2)."""
    from threadline.activities.web import AllowList, WebConfigError, select_provider
    from threadline.models.spec import WebSettings

    settings = WebSettings(
        fetch=agent.web_fetch, fetch_allow=[a.strip() for v in agent.web_fetch_allow or [] for a in v.split(",")
                                            if a.strip()],
        search=agent.web_search,
        search_provider=agent.web_search_provider.strip().lower() if agent.web_search_provider else None,
    )
    try:
        AllowList.parse(settings.fetch_allow)
        if settings.search:
            select_provider(settings.search_provider, dict(os.environ))
    except WebConfigError as e:
        raise usage_error(str(e)) from e
    return settings


def mcp_settings(agent: AgentOptions):  # noqa: ANN201
    from threadline.activities.mcp_tools import McpConfigError, check_mcp_options
    from threadline.channels.mcp_serve import check_serve_settings
    from threadline.models.spec import McpSettings

    servers = [m.strip() for m in agent.mcp or [] if m.strip()]
    try:
        check_mcp_options(servers, dict(os.environ))
    except McpConfigError as e:
        raise usage_error(str(e)) from e
    settings = McpSettings(servers=servers, optional=agent.mcp_optional, serve_host=agent.mcp_serve_host.strip(),
                           serve_port=agent.mcp_serve_port, serve_token=agent.mcp_serve_token or None)
    try:
        check_serve_settings(settings)
    except McpConfigError as e:
        raise usage_error(str(e)) from e
    return settings


def check_relay(relay: str | None) -> str | None:
    if relay is None or not relay.strip():
        return None
    host, _, port = relay.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise usage_error(f"--smtp-relay {relay!r} is not host:port; use for example smtp.example.com:587")
    return relay.strip()


def check_mail_allow(values: list[str] | None, option: str = "--mail-allow") -> list[str]:
    """Addresses or @domains; commas also separate entries (for THREADLINE_MAIL_ALLOW)."""
    entries = [v.strip().lower() for value in values or [] for v in value.split(",") if v.strip()]
    for entry in entries:
        if not _ADDRESS.match(f"x{entry}" if entry.startswith("@") else entry):
            raise usage_error(f"{option} {entry!r} is neither an address nor @domain")
    return entries


def http_settings(agent: AgentOptions):  # noqa: ANN201
    """The chat channel's HTTP settings; binding beyond loopback without a token is refused here (exit 2)."""
    from threadline.channels.chat_http.settings import HttpConfigError, check_settings
    from threadline.models.spec import HttpSettings

    url = agent.temporal_ui_url.strip().rstrip("/") if agent.temporal_ui_url else None
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise usage_error(f"--temporal-ui-url {url!r} is not an http(s) URL; use for example http://localhost:8233")
    settings = HttpSettings(host=agent.http_host.strip(), port=agent.http_port, token=agent.http_token or None,
                            temporal_ui_url=url)
    try:
        check_settings(settings)
    except HttpConfigError as e:
        raise usage_error(str(e)) from e
    return settings


def mail_settings(agent: AgentOptions):  # noqa: ANN201
    from threadline.models.spec import MailSettings

    return MailSettings(
        smtp_host=agent.smtp_host, smtp_port=agent.smtp_port, smtp_relay=check_relay(agent.smtp_relay),
        allow=check_mail_allow(agent.mail_allow), max_size=agent.max_mail_size,
        failure_notice=agent.mail_failure_notice,
        require_auth=agent.mail_require_auth.strip().lower() if agent.mail_require_auth else None,
    )


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    message = str(first.get("msg", e)).removeprefix("Value error, ")
    where = ".".join(str(p) for p in first.get("loc", ()))
    option = {"room": "--room", "agent_name": "--agent-name", "max_steps": "--max-steps",
              "max_output_tokens": "--max-output-tokens", "context.window": "--context-window",
              "context.threshold": "--compaction-threshold",
              "storage_url": "--storage-url", "thread_store_url": "--thread-store-url"}.get(where, where)
    return f"{option}: {message}" if option and option not in message else message
