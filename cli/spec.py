"""`threadline process spec`: the agent that `process join` would run, as a versioned YAML service spec; and
`process join --spec FILE`, which runs exactly the agent a spec describes.

A spec is the `AgentSpec` itself (the same model the worker reads) plus what a deployment needs around it: the
container (image, command, ports, health port, resources), environment variables that are *references* to secrets
(names, never values), the Temporal connection and the number of replicas. Its JSON schema is
`deploy/service-spec.schema.json` (`threadline process spec --schema` prints it).

Rules files are read when the spec is made and their rules written into it (`agent.rules`), so the spec carries
everything the agent is told; `--tool` functions must be importable in the image that runs it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from threadline.cli.agent_options import AgentOptions
from threadline.cli.agent_spec import build_spec
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import ConnectionOptions, with_options
from threadline.cli.output import Verbose, warn
from threadline.models.spec import DEFAULT_HTTP_PORT, AgentSpec, validate_thread_store_url

API_VERSION = "threadline/v1"
KIND = "AgentService"
DEFAULT_IMAGE = "threadline:latest"
"""The image `deploy/Dockerfile` builds (`docker build -f deploy/Dockerfile -t threadline:latest .`)."""
SPEC_DIR = "/etc/threadline"
SPEC_PATH = f"{SPEC_DIR}/spec.yaml"
STATE_DIR = "/var/lib/threadline"
"""THREADLINE_HOME in the image: thread store and room storage."""
TLS_DIR = "/etc/threadline/temporal-tls"
DEFAULT_HEALTH_PORT = 8790
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "deploy" / "service-spec.schema.json"

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class EnvRef(BaseModel):
    """An environment variable of the container whose value comes from a secret: only its name is in the spec."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the environment variable the agent reads")
    secret: str = Field(description="Kubernetes Secret (or compose: the host environment) that holds the value")
    key: str = Field(description="the key within the secret")
    optional: bool = Field(False, description="the agent runs without it")
    description: str = ""


class ContainerPort(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["http", "smtp", "mcp", "health", "metrics"]
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP"] = "TCP"


class Resources(BaseModel):
    """Kubernetes quantities. One agent process is one Python event loop: CPU beyond one core is not used."""

    model_config = ConfigDict(extra="forbid")

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "100m", "memory": "256Mi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "1Gi"})


class Container(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(DEFAULT_IMAGE, min_length=1)
    command: list[str] = Field(default_factory=lambda: ["threadline", "process", "join", "--spec", SPEC_PATH])
    ports: list[ContainerPort] = Field(default_factory=list, description="chat over HTTP, SMTP, health checks")
    health_port: int = Field(DEFAULT_HEALTH_PORT, ge=0, le=65535, description="/healthz and /readyz (0: any port)")
    state_dir: str = Field(STATE_DIR, description="THREADLINE_HOME: thread store and room storage")
    resources: Resources = Field(default_factory=Resources)


class TemporalConnection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="host:port; empty: the embedded server (local runs only)")
    namespace: str = "default"
    api_key: EnvRef | None = Field(None, description="Temporal Cloud API key (turns TLS on)")
    tls_cert_file: str | None = Field(None, description="client certificate for mTLS, a path in the container")
    tls_key_file: str | None = Field(None, description="client key for mTLS, a path in the container")
    tls_secret: str | None = Field(None, description="Kubernetes Secret (tls.crt, tls.key) mounted at " + TLS_DIR)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="service name: Kubernetes objects and compose service are named after it")
    description: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(f"service name {v!r} is not a DNS label: use lowercase letters, digits and '-' "
                             "(at most 63, starting and ending with a letter or digit)")
        return v


class ServiceSpec(BaseModel):
    """A Threadline agent service: what `process join --spec` runs and `process deploy` deploys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["threadline/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["AgentService"] = KIND
    metadata: Metadata
    agent: AgentSpec = Field(description="the agent, as the worker reads it (temporal_address and namespace come "
                                         "from `temporal`; http.token from its env reference)")
    container: Container = Field(default_factory=Container)
    env: list[EnvRef] = Field(default_factory=list, description="secret references, never values")
    temporal: TemporalConnection = Field(default_factory=TemporalConnection)
    replicas: int = Field(1, ge=0, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        agent = self.agent
        if agent.temporal_address not in (None, self.temporal.address):
            raise ValueError("agent.temporal_address differs from temporal.address: set the address in temporal")
        if agent.namespace not in ("default", self.temporal.namespace):
            raise ValueError("agent.namespace differs from temporal.namespace: set the namespace in temporal")
        if agent.http.token:
            raise ValueError("agent.http.token holds a secret: leave it out and reference THREADLINE_HTTP_TOKEN in env")
        if agent.mcp.serve_token:
            raise ValueError("agent.mcp.serve_token holds a secret: leave it out and reference "
                             "THREADLINE_MCP_SERVE_TOKEN in env")
        if agent.thread_store_url and urlsplit(agent.thread_store_url).password:
            raise ValueError("agent.thread_store_url holds a password: leave it out and reference "
                             "THREADLINE_THREAD_STORE_URL in env (Secret key thread-store-url)")
        names = [e.name for e in self.env]
        if len(set(names)) != len(names):
            raise ValueError("env names a variable twice")
        self.agent = agent.model_copy(update={"temporal_address": self.temporal.address,
                                              "namespace": self.temporal.namespace})
        return self

    def env_ref(self, name: str) -> EnvRef | None:
        return next((e for e in self.env if e.name == name), None)

    def port(self, name: str) -> int | None:
        return next((p.port for p in self.container.ports if p.name == name), None)

    def to_data(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("temporal_address", "namespace"):
            data["agent"].pop(key, None)
        data["agent"]["http"].pop("token", None)
        data["agent"]["mcp"].pop("serve_token", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_data(), sort_keys=False, allow_unicode=True, width=120)


def schema() -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://threadline.dev/schemas/"
            "service-spec-v1.json", **ServiceSpec.model_json_schema(by_alias=True)}


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


# Options of spec and deploy beyond the agent's.

SERVICE_PANEL = "Service"


@dataclass
class ServiceOptions:
    service_name: Annotated[
        str | None,
        typer.Option("--service-name", envvar="THREADLINE_SERVICE_NAME", rich_help_panel=SERVICE_PANEL,
                     help="Name of the service (Kubernetes objects, compose service) [default: the agent name].",
                     show_default=False),
    ] = None
    service_description: Annotated[
        str,
        typer.Option("--service-description", rich_help_panel=SERVICE_PANEL, help="metadata.description."),
    ] = ""
    image: Annotated[
        str,
        typer.Option("--image", envvar="THREADLINE_IMAGE", rich_help_panel=SERVICE_PANEL,
                     help="Container image that runs the agent (build it from deploy/Dockerfile)."),
    ] = DEFAULT_IMAGE
    replicas: Annotated[
        int,
        typer.Option("--replicas", min=0, max=100, rich_help_panel=SERVICE_PANEL,
                     help="Agent processes; they share the agent's work through Temporal task queues."),
    ] = 1


SpecFile = Annotated[
    Path | None,
    typer.Option("--spec", envvar="THREADLINE_SPEC", show_default=False,
                 help="Run the agent a service spec describes (from threadline process spec); agent and Temporal "
                      "options beside it are refused."),
]


def service_name_for(agent_name: str) -> str:
    """The agent name as a DNS label: lowercase, other characters become '-'."""
    name = re.sub(r"[^a-z0-9-]+", "-", agent_name.lower()).strip("-")[:63].strip("-")
    return name or "agent"


def _secret_refs(spec: AgentSpec, connection: ConnectionOptions, secret: str) -> list[EnvRef]:
    refs: list[EnvRef] = []
    if spec.model != "offline":
        local = spec.model_base_url is not None or spec.model.partition("/")[0] in ("ollama", "vllm", "litellm")
        refs.append(EnvRef(name="OPENAI_API_KEY", secret=secret, key="openai-api-key", optional=local,
                           description="API key of the model server"))
    if connection.temporal_api_key:
        refs.append(EnvRef(name="TEMPORAL_API_KEY", secret=secret, key="temporal-api-key",
                           description="Temporal Cloud API key"))
    if spec.http.token:
        refs.append(EnvRef(name="THREADLINE_HTTP_TOKEN", secret=secret, key="http-token",
                           description="bearer token of the chat API"))
    if spec.mcp.serve_token:
        refs.append(EnvRef(name="THREADLINE_MCP_SERVE_TOKEN", secret=secret, key="mcp-serve-token",
                           description="bearer token of the agent's MCP server"))
    if spec.mail.smtp_relay and any(c.startswith("mail:") for c in spec.channels):
        for var, key in (("THREADLINE_SMTP_USERNAME", "smtp-username"), ("THREADLINE_SMTP_PASSWORD", "smtp-password")):
            refs.append(EnvRef(name=var, secret=secret, key=key, optional=True,
                               description="login at the SMTP relay that sends replies"))
    if spec.thread_store_url:  # it carries the database password: a secret, not part of the spec
        refs.append(EnvRef(name="THREADLINE_THREAD_STORE_URL", secret=secret, key="thread-store-url",
                           description="URL of the shared PostgreSQL thread store"))
    if (spec.storage_url or "").startswith("s3://"):
        for var, key in (("AWS_ACCESS_KEY_ID", "aws-access-key-id"), ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key")):
            refs.append(EnvRef(name=var, secret=secret, key=key, optional=True,
                               description="credentials of the S3-compatible room storage"))
    web = spec.web
    if web.search:
        providers = {"searxng": ("SEARXNG_URL", "searxng-url"), "brave": ("BRAVE_API_KEY", "brave-api-key"),
                     "tavily": ("TAVILY_API_KEY", "tavily-api-key")}
        for provider, (var, key) in providers.items():
            if web.search_provider in (None, provider):
                refs.append(EnvRef(name=var, secret=secret, key=key, optional=web.search_provider is None,
                                   description=f"web search through {provider}"))
    return refs


def build_service_spec(agent: AgentOptions, connection: ConnectionOptions, service: ServiceOptions) -> ServiceSpec:
    """The options of `process join` (validated as join validates them) → the service spec."""
    from threadline.worker import load_rules

    spec = build_spec(agent, connection)
    if not spec.channels:
        raise usage_error("a service needs at least one --channel (for example --channel chat)")
    name = service.service_name.strip() if service.service_name else service_name_for(spec.agent_name)
    secret = f"{name}-secrets"
    ports: list[ContainerPort] = []
    if "chat" in spec.channels and spec.http.serve:
        ports.append(ContainerPort(name="http", port=spec.http.port or DEFAULT_HTTP_PORT))
    if any(c.startswith("mail:") for c in spec.channels) and spec.mail.smtp_port:
        ports.append(ContainerPort(name="smtp", port=spec.mail.smtp_port))
    if spec.mcp.serve_port:
        ports.append(ContainerPort(name="mcp", port=spec.mcp.serve_port))
    health_port = DEFAULT_HEALTH_PORT if agent.health_port is None else agent.health_port
    if health_port:  # 0: any free port (tests); deployments need a fixed one
        ports.append(ContainerPort(name="health", port=health_port))
    if spec.metrics_port:
        ports.append(ContainerPort(name="metrics", port=spec.metrics_port))
    temporal = TemporalConnection(
        address=spec.temporal_address,
        namespace=spec.namespace,
        tls_cert_file=f"{TLS_DIR}/tls.crt" if connection.temporal_tls_cert else None,
        tls_key_file=f"{TLS_DIR}/tls.key" if connection.temporal_tls_key else None,
        tls_secret=f"{name}-temporal-tls" if connection.temporal_tls_cert or connection.temporal_tls_key else None,
    )
    env = _secret_refs(spec, connection, secret)
    temporal.api_key = next((e for e in env if e.name == "TEMPORAL_API_KEY"), None)
    agent_spec = spec.model_copy(update={
        "rules": load_rules(spec), "rules_files": [],  # the spec carries the rules themselves
        "http": spec.http.model_copy(update={"token": None}),
        "mcp": spec.mcp.model_copy(update={"serve_token": None}),
        "thread_store_url": None,  # from the secret (THREADLINE_THREAD_STORE_URL)
    })
    try:
        return ServiceSpec(
            metadata=Metadata(name=name, description=service.service_description,
                              annotations={"threadline.dev/room": spec.room, "threadline.dev/agent": spec.agent_name}),
            agent=agent_spec,
            container=Container(image=service.image.strip(), ports=ports, health_port=health_port),
            env=env,
            temporal=temporal,
            replicas=service.replicas,
        )
    except ValidationError as e:
        raise usage_error(_reason(e)) from e


def warn_unreachable(service: ServiceSpec) -> None:
    """Servers bound to loopback are not reachable from outside a container."""
    from threadline.channels.http_auth import is_loopback

    agent = service.agent
    if service.port("http") and is_loopback(agent.http.host):
        warn(f"the chat channel listens on {agent.http.host}: outside its container nothing reaches it; pass "
             "--http-host 0.0.0.0 --http-token TOKEN")
    if service.port("smtp") and is_loopback(agent.mail.smtp_host):
        warn(f"the mail channel's SMTP server listens on {agent.mail.smtp_host}: outside its container nothing "
             "reaches it; pass --smtp-host 0.0.0.0")


def _reason(e: ValidationError) -> str:
    parts = []
    for error in e.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load_service_spec(path: Path) -> ServiceSpec:
    """A spec file → the validated spec; anything wrong is a usage error naming the file and the field."""
    try:
        text = path.expanduser().read_text()
    except OSError as e:
        raise usage_error(f"cannot read the spec {path}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise usage_error(f"the spec {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise usage_error(f"the spec {path} is not a mapping: make one with threadline process spec")
    version = data.get("apiVersion")
    if version != API_VERSION:
        raise usage_error(f"the spec {path} has apiVersion {version!r}; this Threadline reads {API_VERSION!r}")
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as e:
        raise usage_error(f"invalid spec {path}: {_reason(e)}") from e


def check_agent_spec(spec: AgentSpec) -> None:
    """What `build_spec` checks after building an AgentSpec, for one read from a spec file."""
    from threadline.cli.agent_spec import parse_channels
    from threadline.cli.preflight import preflight

    if parse_channels(spec.channels) != spec.channels:
        raise usage_error(f"the spec's channels {spec.channels} are not in canonical form")
    preflight(spec, from_spec_file=True)


def from_service_spec(service: ServiceSpec, environ: dict[str, str] | None = None):  # noqa: ANN201
    """The spec → (AgentSpec, ConnectionOptions, health port) for `process join --spec`: secrets come from the
    environment variables the spec names."""
    env = dict(os.environ if environ is None else environ)
    for ref in service.env:
        if not ref.optional and not env.get(ref.name):
            raise CliError(f"the spec needs the environment variable {ref.name} ({ref.description or 'a secret'}; "
                           f"key {ref.key} of secret {ref.secret})")
    agent = service.agent
    token_ref = service.env_ref("THREADLINE_HTTP_TOKEN")
    if token_ref is not None and env.get(token_ref.name):
        agent = agent.model_copy(update={"http": agent.http.model_copy(update={"token": env[token_ref.name]})})
    mcp_token_ref = service.env_ref("THREADLINE_MCP_SERVE_TOKEN")
    if mcp_token_ref is not None and env.get(mcp_token_ref.name):
        agent = agent.model_copy(update={"mcp": agent.mcp.model_copy(update={"serve_token": env[mcp_token_ref.name]})})
    store_ref = service.env_ref("THREADLINE_THREAD_STORE_URL")
    if store_ref is not None and env.get(store_ref.name):
        try:
            agent = agent.model_copy(update={"thread_store_url": validate_thread_store_url(env[store_ref.name])})
        except ValueError as e:
            raise CliError(f"{store_ref.name}: {e}") from e
    temporal = service.temporal
    connection = ConnectionOptions(
        temporal_address=temporal.address,
        namespace=temporal.namespace,
        temporal_api_key=env.get(temporal.api_key.name) if temporal.api_key else None,
        temporal_tls_cert=Path(temporal.tls_cert_file) if temporal.tls_cert_file else None,
        temporal_tls_key=Path(temporal.tls_key_file) if temporal.tls_key_file else None,
    )
    check_agent_spec(agent)
    return agent, connection, service.container.health_port


def refuse_options_beside_spec(ctx: typer.Context, allowed: tuple[str, ...] = ("verbose", "spec_file")) -> None:
    """`--spec FILE` runs exactly the spec's agent: options given on the command line beside it are refused
    (environment variables of options are ignored; the spec's secret references are read)."""
    given = []
    for param in ctx.command.params:
        if param.name in allowed or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name == "COMMANDLINE":
            given.append(param.opts[0] if param.opts else param.name)
    if given:
        raise usage_error(f"--spec runs the agent exactly as its spec describes, so {', '.join(given)} cannot be "
                          "given beside it: edit the spec, or make a new one with threadline process spec")


def join_from_spec(ctx: typer.Context, path: Path):  # noqa: ANN201
    refuse_options_beside_spec(ctx)
    return from_service_spec(load_service_spec(path))


# The command.

SPEC_EPILOG = """\
[bold]Examples[/bold]

  threadline process spec --room demo --agent-name support --channel chat --channel queue:tickets \
--model gpt-4o-mini --temporal-address temporal:7233 --http-host 0.0.0.0 --http-token "$TOKEN" > support.yaml

  threadline process join --spec support.yaml

  threadline process spec --schema > service-spec.schema.json

It takes the options of process join; secrets (--http-token, --temporal-api-key, OPENAI_API_KEY) become references
to environment variables, never values.
"""


def register(process_app: typer.Typer) -> None:
    @process_app.command("spec", epilog=SPEC_EPILOG)
    @with_options(agent=AgentOptions, connection=ConnectionOptions, service=ServiceOptions)
    def spec(
        agent: AgentOptions,
        connection: ConnectionOptions,
        service: ServiceOptions,
        schema_only: Annotated[
            bool, typer.Option("--schema", help="Print the JSON schema of service specs instead.")
        ] = False,
        verbose: Verbose = False,
    ) -> None:
        """Print the service spec (YAML) of the agent that process join would run with these options."""
        if schema_only:
            sys.stdout.write(schema_text())
            return
        service_spec = build_service_spec(agent, connection, service)
        warn_unreachable(service_spec)
        sys.stdout.write(service_spec.to_yaml())
