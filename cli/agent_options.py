"""The agent options of `process join` and `process run` (and `process spec`, `deploy`): one typer option per
`AgentSpec` field a command line can set, each defaulting to the spec field's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from threadline.cli.options import AGENT_PANEL, AgentName, Room
from threadline.models.spec import (
    DEFAULT_HEALTH_HOST,
    AgentSpec,
    ApprovalSettings,
    ContextSettings,
    HttpSettings,
    MailSettings,
    McpSettings,
    ShellSettings,
)


class ThreadingMode(str, Enum):
    none = "none"
    default_new = "default-new"


class ContextManagement(str, Enum):
    auto = "auto"
    none = "none"


class ReasoningEffort(str, Enum):
    minimal = "minimal"
    low = "low"
    medium = "medium"
    high = "high"


Rules = Annotated[
    list[str] | None,
    typer.Option("--rule", "-r", help="A system rule line; repeatable (env THREADLINE_RULES: one rule per line).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
RulesFiles = Annotated[
    list[str] | None,
    typer.Option("--rules-file", envvar="THREADLINE_RULES_FILE",
                 help="File of rules, one per line ('#' comments); repeatable; must be readable.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Model = Annotated[
    str,
    typer.Option("--model", envvar="THREADLINE_MODEL",
                 help="'offline', an OpenAI model name, or provider/model (ollama, vllm, litellm, openai).",
                 rich_help_panel=AGENT_PANEL),
]
ModelBaseUrl = Annotated[
    str | None,
    typer.Option("--model-base-url", envvar="THREADLINE_MODEL_BASE_URL",
                 help="http(s) URL of an OpenAI-compatible server (Ollama, vLLM, LiteLLM...).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Channels = Annotated[
    list[str] | None,
    typer.Option("--channel", envvar="THREADLINE_CHANNEL",
                 help="chat | mail:ADDRESS[?reply-all=true|false] | queue:NAME | toolkit:NAME; repeatable.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Threading = Annotated[
    ThreadingMode,
    typer.Option("--threading-mode", envvar="THREADLINE_THREADING_MODE", case_sensitive=False,
                 help="none: chat uses one 'main' thread; default-new: each new chat starts a thread.",
                 rich_help_panel=AGENT_PANEL),
]
ThreadDir = Annotated[
    str,
    typer.Option("--thread-dir", envvar="THREADLINE_THREAD_DIR",
                 help="Folder of the agent's thread ids within the room (default: .threads/AGENT).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Storage = Annotated[
    bool,
    typer.Option("--storage", "--require-storage", envvar="THREADLINE_STORAGE",
                 help="Give the agent room storage tools (storage must be writable at start).",
                 rich_help_panel=AGENT_PANEL),
]
StorageUrl = Annotated[
    str | None,
    typer.Option("--storage-url", envvar="THREADLINE_STORAGE_URL",
                 help="Where room storage lives: s3://BUCKET/PREFIX (endpoint and credentials from AWS_* env) or a "
                      "directory, each room under <url>/<room>/ (default: ~/.threadline/rooms/ROOM/storage).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
ThreadStoreUrl = Annotated[
    str | None,
    typer.Option("--thread-store-url", envvar="THREADLINE_THREAD_STORE_URL",
                 help="Shared thread store for agents on several machines: postgresql://USER:PASSWORD@HOST:PORT/DB "
                      "(default: the room's SQLite file, ~/.threadline/rooms/ROOM/threads.sqlite3).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Tools = Annotated[
    list[str] | None,
    typer.Option("--tool", envvar="THREADLINE_TOOLS", help="A Python function as a tool, package.module:function; repeatable.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
UseToolkits = Annotated[
    list[str] | None,
    typer.Option("--use-toolkit", "--require-toolkit", envvar="THREADLINE_USE_TOOLKITS",
                 help="Give the agent the tool run_NAME_task of room toolkit NAME (another agent); repeatable. "
                      "NAME?timeout=SECONDS (default 300) bounds each call, &max-depth=N (default 4) nested calls.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
MaxSteps = Annotated[
    int,
    typer.Option("--max-steps", envvar="THREADLINE_MAX_STEPS", min=1, max=1000,
                 help="Most model calls in one turn before it fails.", rich_help_panel=AGENT_PANEL),
]

MaxOutputTokens = Annotated[
    int | None,
    typer.Option("--max-output-tokens", envvar="THREADLINE_MAX_OUTPUT_TOKENS", min=16,
                 help="Most tokens the model may write in one answer (default: the model's own limit).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
ReasoningEffortOption = Annotated[
    ReasoningEffort | None,
    typer.Option("--reasoning-effort", envvar="THREADLINE_REASONING_EFFORT", case_sensitive=False,
                 help="For reasoning models (o-series, gpt-5): how hard the model thinks.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
ContextManagementOption = Annotated[
    ContextManagement,
    typer.Option("--context-management", envvar="THREADLINE_CONTEXT_MANAGEMENT", case_sensitive=False,
                 help="auto: before a thread's prompt passes the compaction threshold, its oldest part is summarised "
                      "(the items stay in the thread); none: never (a thread past the window fails, saying so).",
                 rich_help_panel=AGENT_PANEL),
]
ContextWindow = Annotated[
    int | None,
    typer.Option("--context-window", envvar="THREADLINE_CONTEXT_WINDOW", min=1000,
                 help="The model's context window in tokens (default: known OpenAI models from a built-in table, "
                      "32768 for others).", rich_help_panel=AGENT_PANEL, show_default=False),
]
CompactionThreshold = Annotated[
    int | None,
    typer.Option("--compaction-threshold", envvar="THREADLINE_COMPACTION_THRESHOLD", min=500,
                 help="Prompt tokens past which a thread is compacted first (default: 80% of the window less the "
                      "output reserve).", rich_help_panel=AGENT_PANEL, show_default=False),
]
CompactionModel = Annotated[
    str | None,
    typer.Option("--compaction-model", envvar="THREADLINE_COMPACTION_MODEL",
                 help="Model that writes the summaries (default: the agent's model).",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]

RequireApproval = Annotated[
    list[str] | None,
    typer.Option("--require-approval", envvar="THREADLINE_REQUIRE_APPROVAL",
                 help="A person approves each call of this tool first (a name or a glob: storage_*, mcp:*, *); "
                      "repeatable. A --tool function with requires_approval = True always asks.",
                 rich_help_panel=AGENT_PANEL, show_default=False),
]
Approvers = Annotated[
    list[str] | None,
    typer.Option("--approver", envvar="THREADLINE_APPROVERS",
                 help="An address that gets the approval requests of mail threads and decides by answering "
                      "'approve' or 'deny REASON'; repeatable.", rich_help_panel=AGENT_PANEL, show_default=False),
]
ApprovalTimeout = Annotated[
    float,
    typer.Option("--approval-timeout", envvar="THREADLINE_APPROVAL_TIMEOUT", min=1, max=30 * 24 * 3600,
                 help="Seconds a call waits for a decision before it is denied.", rich_help_panel=AGENT_PANEL),
]

Instructions = Annotated[list[str] | None, typer.Option(
    "--instructions", envvar="THREADLINE_INSTRUCTIONS", help="A rules file in room storage, read at every model call "
    "(edit it to change the agent without a restart); repeatable.", rich_help_panel=AGENT_PANEL, show_default=False)]
RoomRules = Annotated[list[str] | None, typer.Option(
    "--room-rules", envvar="THREADLINE_ROOM_RULES", help="Like --instructions, after them; repeatable.",
    rich_help_panel=AGENT_PANEL, show_default=False)]
SkillDirs = Annotated[list[str] | None, typer.Option(
    "--skill-dir", envvar="THREADLINE_SKILL_DIRS", help="A folder of skills (each a folder with a SKILL.md whose front "
    "matter has name: and description:); the agent sees the list and reads one with read_skill; repeatable.",
    rich_help_panel=AGENT_PANEL, show_default=False)]
PreambleRule = Annotated[bool, typer.Option(
    "--preamble-rule/--no-preamble-rule", help="With no rules given: tell the model to say what it will do before it "
    "calls tools.", rich_help_panel=AGENT_PANEL)]
TimeTool = Annotated[bool, typer.Option("--time/--no-time", help="The current_time tool.",
                                        rich_help_panel=AGENT_PANEL)]
UuidTool = Annotated[bool, typer.Option("--uuid", help="A new_uuid tool.", rich_help_panel=AGENT_PANEL)]
ReadOnlyStorage = Annotated[bool, typer.Option(
    "--read-only-storage", help="The storage tools without storage_write.", rich_help_panel=AGENT_PANEL)]
StorageLocalPaths = Annotated[list[str] | None, typer.Option(
    "--storage-tool-local-path", help="SRC:MOUNT[:ro|rw]: a folder of this machine that the storage tools see at "
    "MOUNT (read-write unless :ro); repeatable.", rich_help_panel=AGENT_PANEL, show_default=False)]
StorageRoomPaths = Annotated[list[str] | None, typer.Option(
    "--storage-tool-room-path", help="SRC:MOUNT[:ro|rw]: a path of room storage that the storage tools also see at "
    "MOUNT; repeatable.", rich_help_panel=AGENT_PANEL, show_default=False)]
ModelPrices = Annotated[str | None, typer.Option(
    "--model-prices", envvar="THREADLINE_MODEL_PRICES", help="YAML or JSON of MODEL: {input: DOLLARS, output: "
    "DOLLARS} per million tokens, over the built-in table of OpenAI models.", rich_help_panel=AGENT_PANEL,
    show_default=False)]
LogLlmRequests = Annotated[bool, typer.Option(
    "--log-llm-requests", envvar="THREADLINE_LOG_LLM_REQUESTS", help="Log each model request and answer to stderr, "
    "API keys and tokens scrubbed.", rich_help_panel=AGENT_PANEL)]

SHELL_PANEL = "Shell and files"
ShellOption = Annotated[bool, typer.Option("--shell", envvar="THREADLINE_SHELL",
                                           help="Give the agent a shell tool, sandboxed (bubblewrap by default).",
                                           rich_help_panel=SHELL_PANEL)]
ApplyPatch = Annotated[bool, typer.Option("--apply-patch", envvar="THREADLINE_APPLY_PATCH",
                                          help="Give the agent an apply_patch tool (unified diff or V4A patches).",
                                          rich_help_panel=SHELL_PANEL)]
WorkingDir = Annotated[str | None, typer.Option(
    "--working-dir", envvar="THREADLINE_WORKING_DIR",
    help="The shell's and apply_patch's directory, shared by every thread (default: one per thread, in room "
         "storage).", rich_help_panel=SHELL_PANEL, show_default=False)]
ShellNetwork = Annotated[bool, typer.Option("--shell-network", envvar="THREADLINE_SHELL_NETWORK",
                                            help="Let shell commands use the network.", rich_help_panel=SHELL_PANEL)]
ShellCopyEnv = Annotated[list[str] | None, typer.Option(
    "--shell-copy-env", envvar="THREADLINE_SHELL_COPY_ENV", help="An environment variable of the agent that shell "
    "commands see (none do by default); repeatable.", rich_help_panel=SHELL_PANEL, show_default=False)]
ShellSetEnv = Annotated[list[str] | None, typer.Option(
    "--shell-set-env", envvar="THREADLINE_SHELL_SET_ENV", help="NAME=VALUE set for shell commands; repeatable.",
    rich_help_panel=SHELL_PANEL, show_default=False)]
ShellImage = Annotated[str | None, typer.Option(
    "--shell-image", envvar="THREADLINE_SHELL_IMAGE", help="Run commands in this container image (docker or "
    "podman) instead of bubblewrap; 'none': a plain local process (needs --shell-unsafe).",
    rich_help_panel=SHELL_PANEL, show_default=False)]
ShellUnsafe = Annotated[bool, typer.Option("--shell-unsafe", help="Confirms --shell-image none.",
                                           rich_help_panel=SHELL_PANEL)]
ShellTimeout = Annotated[float, typer.Option("--shell-timeout", envvar="THREADLINE_SHELL_TIMEOUT", min=1, max=3600,
                                             help="Wall-clock seconds a command may run.",
                                             rich_help_panel=SHELL_PANEL)]
ShellCpu = Annotated[int, typer.Option("--shell-cpu-seconds", min=1, max=3600, help="CPU seconds a command may use.",
                                       rich_help_panel=SHELL_PANEL)]
ShellMemory = Annotated[int, typer.Option("--shell-memory-mb", min=64, max=65536,
                                          help="Address space a command may use, in MiB.",
                                          rich_help_panel=SHELL_PANEL)]

# The mail channel's options (used by agents with --channel mail:ADDRESS, and by `threadline mail serve`).

MAIL_PANEL = "Mail"
SmtpHost = Annotated[
    str,
    typer.Option("--smtp-host", envvar="THREADLINE_SMTP_HOST", help="Interface the inbound SMTP server listens on.",
                 rich_help_panel=MAIL_PANEL),
]
SmtpPort = Annotated[
    int,
    typer.Option("--smtp-port", envvar="THREADLINE_SMTP_PORT", min=0, max=65535,
                 help="Port of the inbound SMTP server; 0: none in this process (another one receives the mail).",
                 rich_help_panel=MAIL_PANEL),
]
SmtpRelay = Annotated[
    str | None,
    typer.Option("--smtp-relay", envvar="THREADLINE_SMTP_RELAY",
                 help="host:port of the SMTP relay that sends replies (login and TLS: THREADLINE_SMTP_* env vars).",
                 rich_help_panel=MAIL_PANEL, show_default=False),
]
MailRequireAuth = Annotated[
    str | None,
    typer.Option("--mail-require-auth", envvar="THREADLINE_MAIL_REQUIRE_AUTH", metavar="AUTHSERV_ID",
                 help="Answer only mail that the receiving server AUTHSERV_ID (the name in its Authentication-Results "
                      "header) found authentic: dmarc=pass, or without DMARC dkim=pass or spf=pass.",
                 rich_help_panel=MAIL_PANEL, show_default=False),
]
MailAllow = Annotated[
    list[str] | None,
    typer.Option("--mail-allow", envvar="THREADLINE_MAIL_ALLOW",
                 help="An address or @domain that may start work by mail; repeatable (default: anyone).",
                 rich_help_panel=MAIL_PANEL, show_default=False),
]
MaxMailSize = Annotated[
    int,
    typer.Option("--max-mail-size", envvar="THREADLINE_MAX_MAIL_SIZE", min=1024,
                 help="Largest inbound message in bytes (larger: 552).", rich_help_panel=MAIL_PANEL),
]
MailFailureNotice = Annotated[
    bool,
    typer.Option("--mail-failure-notice/--no-mail-failure-notice", envvar="THREADLINE_MAIL_FAILURE_NOTICE",
                 help="Answer a mail whose turn failed with a short notice.", rich_help_panel=MAIL_PANEL),
]

# The chat channel's HTTP server (process join --channel chat; process run only with --http-port).

HTTP_PANEL = "Chat over HTTP"
HttpHost = Annotated[
    str,
    typer.Option("--http-host", envvar="THREADLINE_HTTP_HOST",
                 help="Interface of the chat page and API; other than loopback needs --http-token.",
                 rich_help_panel=HTTP_PANEL),
]
HttpPort = Annotated[
    int | None,
    typer.Option("--http-port", envvar="THREADLINE_HTTP_PORT", min=0, max=65535,
                 help="Port of the chat page and API [default: 8780; process run serves HTTP only with this option].",
                 rich_help_panel=HTTP_PANEL, show_default=False),
]
HttpToken = Annotated[
    str | None,
    typer.Option("--http-token", envvar="THREADLINE_HTTP_TOKEN",
                 help="Bearer token every chat API request must carry.", rich_help_panel=HTTP_PANEL,
                 show_default=False),
]
TemporalUiUrl = Annotated[
    str | None,
    typer.Option("--temporal-ui-url", envvar="THREADLINE_TEMPORAL_UI_URL",
                 help="Temporal UI base URL for the chat page's links to threads [default: http://localhost:8233 "
                      "with a local server].", rich_help_panel=HTTP_PANEL, show_default=False),
]

# Web and MCP tools (activities/web.py, activities/mcp_tools.py, channels/mcp_serve.py).

TOOLS_PANEL = "Web and MCP tools"
WebFetch = Annotated[
    bool,
    typer.Option("--web-fetch", envvar="THREADLINE_WEB_FETCH",
                 help="Give the agent web_fetch(url): a page as readable text; private addresses refused.",
                 rich_help_panel=TOOLS_PANEL),
]
WebFetchAllow = Annotated[
    list[str] | None,
    typer.Option("--web-fetch-allow", envvar="THREADLINE_WEB_FETCH_ALLOW",
                 help="A host, host:port or CIDR web_fetch may reach although it is private or local; repeatable.",
                 rich_help_panel=TOOLS_PANEL, show_default=False),
]
WebSearch = Annotated[
    bool,
    typer.Option("--web-search", envvar="THREADLINE_WEB_SEARCH",
                 help="Give the agent web_search(query): needs SEARXNG_URL, BRAVE_API_KEY or TAVILY_API_KEY.",
                 rich_help_panel=TOOLS_PANEL),
]
WebSearchProvider = Annotated[
    str | None,
    typer.Option("--web-search-provider", envvar="THREADLINE_WEB_SEARCH_PROVIDER",
                 help="searxng | brave | tavily [default: the first configured].",
                 rich_help_panel=TOOLS_PANEL, show_default=False),
]
Mcp = Annotated[
    list[str] | None,
    typer.Option("--mcp", envvar="THREADLINE_MCP",
                 help="Streamable HTTP MCP server whose tools the agent gets; repeatable. Options after '#': "
                      "bearer=ENV_VAR, header.NAME=ENV_VAR, prefix=TEXT, timeout=SECONDS (joined with &).",
                 rich_help_panel=TOOLS_PANEL, show_default=False),
]
McpOptional = Annotated[
    bool,
    typer.Option("--mcp-optional", envvar="THREADLINE_MCP_OPTIONAL",
                 help="Start without an --mcp server that is down (warning) instead of failing.",
                 rich_help_panel=TOOLS_PANEL),
]
McpServePort = Annotated[
    int | None,
    typer.Option("--mcp-serve-port", envvar="THREADLINE_MCP_SERVE_PORT", min=0, max=65535,
                 help="Serve the agent's toolkit tools (run_NAME_task) over MCP at http://HOST:PORT/mcp.",
                 rich_help_panel=TOOLS_PANEL, show_default=False),
]
McpServeHost = Annotated[
    str,
    typer.Option("--mcp-serve-host", envvar="THREADLINE_MCP_SERVE_HOST",
                 help="Interface of the MCP server; other than loopback needs --mcp-serve-token.",
                 rich_help_panel=TOOLS_PANEL),
]
McpServeToken = Annotated[
    str | None,
    typer.Option("--mcp-serve-token", envvar="THREADLINE_MCP_SERVE_TOKEN",
                 help="Bearer token every MCP request must carry.", rich_help_panel=TOOLS_PANEL, show_default=False),
]

# Health checks of the agent process (process join; deployments probe them).

HealthPort = Annotated[
    int | None,
    typer.Option("--health-port", envvar="THREADLINE_HEALTH_PORT", min=0, max=65535,
                 help="Serve /healthz and /readyz (worker and channel state) on this port "
                      "[default: none; 8790 in a service spec].", rich_help_panel="Health", show_default=False),
]
MetricsPort = Annotated[
    int | None,
    typer.Option("--metrics-port", envvar="THREADLINE_METRICS_PORT", min=1, max=65535,
                 help="Serve Prometheus metrics at /metrics on this port: turns, model calls and tokens, tool calls, "
                      "approvals, mail, jobs, and the Temporal SDK's own.", rich_help_panel="Health",
                 show_default=False),
]
MetricsHost = Annotated[
    str,
    typer.Option("--metrics-host", envvar="THREADLINE_METRICS_HOST",
                 help="Interface of the metrics server (a service spec's container serves it on 0.0.0.0).",
                 rich_help_panel="Health"),
]
HealthHost = Annotated[
    str,
    typer.Option("--health-host", envvar="THREADLINE_HEALTH_HOST",
                 help="Interface of the health server (a service spec's container serves it on 0.0.0.0).",
                 rich_help_panel="Health"),
]


def spec_default(settings: type[BaseModel], name: str) -> Any:
    """An option's default is the spec field's default: `AgentSpec` (and its settings models) is the one schema."""
    return settings.model_fields[name].get_default(call_default_factory=True)


@dataclass
class AgentOptions:
    room: Room = None
    agent_name: AgentName = None
    rule: Rules = None
    rules_file: RulesFiles = None
    model: Model = spec_default(AgentSpec, "model")
    model_base_url: ModelBaseUrl = None
    channel: Channels = None
    threading_mode: Threading = ThreadingMode.default_new
    thread_dir: ThreadDir = spec_default(AgentSpec, "thread_dir")
    storage: Storage = spec_default(AgentSpec, "storage")
    storage_url: StorageUrl = None
    thread_store_url: ThreadStoreUrl = None
    tool: Tools = None
    max_steps: MaxSteps = spec_default(AgentSpec, "max_steps")
    max_output_tokens: MaxOutputTokens = None
    reasoning_effort: ReasoningEffortOption = None
    context_management: ContextManagementOption = ContextManagement(spec_default(ContextSettings, "management"))
    context_window: ContextWindow = None
    compaction_threshold: CompactionThreshold = None
    compaction_model: CompactionModel = None
    require_approval: RequireApproval = None
    approval_timeout: ApprovalTimeout = spec_default(ApprovalSettings, "timeout_seconds")
    approver: Approvers = None
    instructions: Instructions = None
    room_rules: RoomRules = None
    skill_dir: SkillDirs = None
    preamble_rule: PreambleRule = spec_default(AgentSpec, "preamble_rule")
    time: TimeTool = spec_default(AgentSpec, "time_tool")
    uuid: UuidTool = spec_default(AgentSpec, "uuid_tool")
    read_only_storage: ReadOnlyStorage = spec_default(AgentSpec, "read_only_storage")
    storage_tool_local_path: StorageLocalPaths = None
    storage_tool_room_path: StorageRoomPaths = None
    log_llm_requests: LogLlmRequests = spec_default(AgentSpec, "log_llm_requests")
    model_prices: ModelPrices = None
    shell: ShellOption = False
    apply_patch: ApplyPatch = False
    working_dir: WorkingDir = None
    shell_network: ShellNetwork = False
    shell_copy_env: ShellCopyEnv = None
    shell_set_env: ShellSetEnv = None
    shell_image: ShellImage = None
    shell_unsafe: ShellUnsafe = False
    shell_timeout: ShellTimeout = spec_default(ShellSettings, "timeout_seconds")
    shell_cpu_seconds: ShellCpu = spec_default(ShellSettings, "cpu_seconds")
    shell_memory_mb: ShellMemory = spec_default(ShellSettings, "memory_mb")
    smtp_host: SmtpHost = spec_default(MailSettings, "smtp_host")
    smtp_port: SmtpPort = spec_default(MailSettings, "smtp_port")
    smtp_relay: SmtpRelay = None
    mail_allow: MailAllow = None
    mail_require_auth: MailRequireAuth = None
    max_mail_size: MaxMailSize = spec_default(MailSettings, "max_size")
    mail_failure_notice: MailFailureNotice = spec_default(MailSettings, "failure_notice")
    use_toolkit: UseToolkits = None
    http_host: HttpHost = spec_default(HttpSettings, "host")
    http_port: HttpPort = spec_default(HttpSettings, "port")
    http_token: HttpToken = None
    temporal_ui_url: TemporalUiUrl = None
    web_fetch: WebFetch = False
    web_fetch_allow: WebFetchAllow = None
    web_search: WebSearch = False
    web_search_provider: WebSearchProvider = None
    mcp: Mcp = None
    mcp_optional: McpOptional = spec_default(McpSettings, "optional")
    mcp_serve_port: McpServePort = None
    mcp_serve_host: McpServeHost = spec_default(McpSettings, "serve_host")
    mcp_serve_token: McpServeToken = None
    health_port: HealthPort = None
    health_host: HealthHost = DEFAULT_HEALTH_HOST
    metrics_port: MetricsPort = None
    metrics_host: MetricsHost = DEFAULT_HEALTH_HOST
