"""`AgentSpec`: one agent's configuration (identity, model, rules, tools, channels and their settings), from the
CLI options or a service spec file."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from threadline.models.limits import AgentName, RoomName
from threadline.models.thread import AgentRef


def validate_storage_url(url: str | None) -> str | None:
    """`s3://BUCKET[/PREFIX]`, `file:///DIR` or a directory (room storage of every room under it); '' is none."""
    url = (url or "").strip()
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "s3":
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", rest.partition("/")[0]):
            raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX] with a valid bucket name")
    elif sep and scheme != "file":
        raise ValueError(f"storage URL {url!r}: expected s3://BUCKET[/PREFIX], file:///DIR or a directory")
    return url


def validate_thread_store_url(url: str | None) -> str | None:
    """`postgresql://USER:PASSWORD@HOST:PORT/DB` (or `postgres://`): the shared thread store; '' is none (SQLite)."""
    url = (url or "").strip()
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres") or not rest:
        shown = url if "@" not in url else scheme + "://…@" + url.rpartition("@")[2]
        raise ValueError(f"thread store URL {shown!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return url


class AgentSpec(BaseModel):
    """An agent process's configuration: the worker reads rules, tools and limits from here at every turn."""

    room: RoomName
    agent_name: AgentName
    rules: list[str] = Field(default_factory=list)
    rules_files: list[str] = Field(default_factory=list)
    instructions_files: list[str] = Field(default_factory=list,
                                          description="--instructions: rules files in room storage, read each call")
    room_rules_files: list[str] = Field(default_factory=list,
                                        description="--room-rules: rules files in room storage, read each call")
    skill_dirs: list[str] = Field(default_factory=list, description="--skill-dir: folders of SKILL.md skills")
    preamble_rule: bool = Field(False, description="with no rules: say what you will do before calling tools")
    time_tool: bool = Field(True, description="the current_time tool")
    uuid_tool: bool = Field(False, description="a new_uuid tool")
    read_only_storage: bool = Field(False, description="the storage tools without storage_write")
    storage_mounts: list[StorageMount] = Field(
        default_factory=list, description="--storage-tool-local-path / --storage-tool-room-path SRC:MOUNT[:ro|rw]")
    log_llm_requests: bool = Field(False, description="log each model request and answer, secrets scrubbed")
    model_prices: str | None = Field(None, description="--model-prices: a YAML/JSON price file over the built-in table")
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="serve Prometheus metrics (Threadline's and the Temporal SDK's)")
    model: str = "gpt-4o-mini"
    model_base_url: str | None = None
    channels: list[str] = Field(default_factory=list)
    threading_mode: Literal["none", "default-new"] = "default-new"
    thread_dir: str = ""
    storage: bool = False
    require_storage: bool = False
    storage_url: str | None = Field(
        None, description="room storage: s3://BUCKET[/PREFIX] or a directory; none: ~/.threadline/rooms/ROOM/storage"
    )
    thread_store_url: str | None = Field(
        None, description="shared thread store: postgresql://USER:PASSWORD@HOST:PORT/DB; none: the room's SQLite file"
    )
    tools: list[str] = Field(default_factory=list)
    max_steps: int = Field(12, ge=1, le=1000)
    max_output_tokens: int | None = Field(None, ge=16, description="most tokens the model may write in one answer")
    reasoning_effort: ReasoningEffort | None = Field(None, description="for reasoning models (o-series, gpt-5)")
    context: ContextSettings = Field(default_factory=lambda: ContextSettings(),
                                     description="--context-management and compaction")
    approvals: ApprovalSettings = Field(default_factory=lambda: ApprovalSettings(),
                                        description="--require-approval and --approval-timeout")
    shell: ShellSettings = Field(default_factory=lambda: ShellSettings(),
                                 description="--shell, --apply-patch and --working-dir")
    temporal_address: str | None = None
    namespace: str = "default"
    use_toolkits: list[str] = Field(
        default_factory=list, description="toolkits of the room this agent may call: NAME or NAME?timeout=SECONDS"
    )
    mail: MailSettings = Field(default_factory=lambda: MailSettings(), description="the mail channel's settings")
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(), description="the chat channel's HTTP server")
    web: WebSettings = Field(default_factory=lambda: WebSettings(), description="--web-fetch and --web-search")
    mcp: McpSettings = Field(default_factory=lambda: McpSettings(), description="--mcp servers and --mcp-serve-port")

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        return validate_storage_url(v)

    @field_validator("thread_store_url")
    @classmethod
    def _thread_store_url(cls, v: str | None) -> str | None:
        return validate_thread_store_url(v)

    @property
    def ref(self) -> AgentRef:
        return AgentRef(room=self.room, agent_name=self.agent_name, thread_dir=self.thread_dir)




# What the model sees of a long thread (activities/context_window.py).

ReasoningEffort = Literal["minimal", "low", "medium", "high"]


class ContextSettings(BaseModel):
    """`--context-management`, `--context-window`, `--compaction-threshold`, `--compaction-model`."""

    management: Literal["auto", "none"] = Field(
        "auto", description="auto: summarise the oldest part of a thread before its prompt passes the threshold; "
                            "none: never (a thread past the model's window fails with a clear error)")
    window: int | None = Field(None, ge=1000, description="the model's context window in tokens; None: built-in table")
    threshold: int | None = Field(None, ge=500, description="prompt tokens that trigger compaction; None: from window")
    compaction_model: str | None = Field(None, description="model that writes summaries; None: the agent's model")


class ApprovalSettings(BaseModel):
    """`--require-approval TOOL` (globs: `storage_*`, `mcp:*`, `*`), `--approval-timeout SECONDS`."""

    require: list[str] = Field(default_factory=list, description="tools whose calls a person approves first")
    timeout_seconds: float = Field(24 * 3600.0, ge=1, le=30 * 24 * 3600.0,
                                   description="an unanswered request is denied after this")
    approvers: list[str] = Field(default_factory=list,
                                 description="--approver: addresses that get a mail thread's requests and decide by "
                                             "answering")


class StorageMount(BaseModel):
    """A folder mounted into what the storage tools see."""

    kind: Literal["local", "room"]
    source: str = Field(min_length=1, description="a folder of this machine (local) or a path of room storage")
    mount: str = Field(min_length=1, description="where the storage tools see it")
    writable: bool = True


class ShellSettings(BaseModel):
    """`--shell` (a sandboxed shell tool), `--apply-patch`, `--working-dir` and the sandbox's limits."""

    enabled: bool = False
    apply_patch: bool = False
    working_dir: str | None = Field(None, description="a folder every thread shares; None: one per thread")
    network: bool = False
    copy_env: list[str] = Field(default_factory=list, description="the agent's variables the command may see")
    set_env: dict[str, str] = Field(default_factory=dict)
    image: str | None = Field(None, description="a container image to run in; 'none': a plain local process")
    unsafe: bool = Field(False, description="confirms --shell-image none")
    cpu_seconds: int = Field(60, ge=1, le=3600)
    memory_mb: int = Field(1024, ge=64, le=65536)
    timeout_seconds: float = Field(120.0, gt=0, le=3600)


# The mail channel: inbound SMTP → a mail job on the mailbox's queue → a turn → a reply through an SMTP relay.

DEFAULT_MAX_MAIL_BYTES = 25 * 1024 * 1024


class MailSettings(BaseModel):
    """`--smtp-host`, `--smtp-port` (0: no inbound server in this process), `--smtp-relay`, `--mail-allow`,
    `--mail-require-auth`, `--max-mail-size`, `--mail-failure-notice`."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(2525, ge=0, le=65535)
    smtp_relay: str | None = Field(None, description="host:port of the relay that sends replies")
    allow: list[str] = Field(default_factory=list, description="addresses or @domains that may start work")
    require_auth: str | None = Field(
        None, description="authserv-id of the receiving server whose Authentication-Results must say pass")
    max_size: int = Field(DEFAULT_MAX_MAIL_BYTES, ge=1024)
    failure_notice: bool = True


# The chat channel over HTTP (`--channel chat` in `process join`): API, SSE, web page, OpenAI-compatible endpoint.

DEFAULT_HTTP_PORT = 8780
DEFAULT_HEALTH_HOST = "127.0.0.1"
CONTAINER_HEALTH_HOST = "0.0.0.0"
"""In a container the kubelet's and Docker's probes come from outside the container's loopback."""


class HttpSettings(BaseModel):
    """`--http-host`, `--http-port`, `--http-token`, `--temporal-ui-url`."""

    serve: bool = Field(True, description="False: the chat channel runs without its HTTP server (process run)")
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535,
                             description="None: the default port, left to another process when it is taken; 0: any")
    token: str | None = Field(None, repr=False, description="bearer token every API request must carry")
    temporal_ui_url: str | None = Field(None, description="base URL of the Temporal UI, for links to threads")


# Web and MCP tools (activities/web.py, activities/mcp_tools.py).


class WebSettings(BaseModel):
    """`--web-fetch`, `--web-fetch-allow`, `--web-search`, `--web-search-provider`."""

    fetch: bool = False
    fetch_allow: list[str] = Field(default_factory=list, description="hosts, host:port or CIDRs exempt from the guard")
    fetch_max_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    fetch_timeout: float = Field(30.0, gt=0, le=600)
    search: bool = False
    search_provider: str | None = Field(None, description="searxng | brave | tavily; None: the first configured")


class McpSettings(BaseModel):
    """`--mcp URL[#options]` (repeatable), `--mcp-optional`, `--mcp-serve-host`, `--mcp-serve-port`,
    `--mcp-serve-token`."""

    servers: list[str] = Field(default_factory=list)
    optional: bool = False
    serve_host: str = "127.0.0.1"
    serve_port: int | None = Field(None, ge=0, le=65535, description="None: no MCP server; 0: any free port")
    serve_token: str | None = Field(None, description="bearer token MCP clients must send (a secret: never in a spec)")


AgentSpec.model_rebuild()
