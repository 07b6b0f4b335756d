"""`threadline process deploy`: the service spec of `process spec` (or `--spec FILE`), deployed.

- `--target kubernetes` (default): a ConfigMap with the spec, a Deployment (replicas, resources, probes on the
  agent's /healthz and /readyz, secrets as secretKeyRef, a grace period longer than the worker's graceful stop plus
  a heartbeat timeout) and a Service when the agent serves HTTP or SMTP. `kubectl apply --server-side` upserts them
  by service name; `--dry-run` or `-o yaml|json` prints them instead.
- `--target compose`: writes (or updates) the service in a compose file, keeping its other services.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from threadline.cli.agent_options import AgentOptions
from threadline.cli.errors import CliError, usage_error
from threadline.cli.options import ConnectionOptions, with_options
from threadline.cli.output import Verbose, status, warn
from threadline.cli.spec import (
    ServiceOptions,
    ServiceSpec,
    SpecFile,
    build_service_spec,
    load_service_spec,
    refuse_options_beside_spec,
    warn_unreachable,
)

MANAGED_BY = "threadline"
RUN_AS = 10001
"""The non-root user of deploy/Dockerfile."""
KUBECTL_TIMEOUT = 60


def scrape_annotations(service: Any) -> dict[str, str]:
    """Prometheus's usual pod annotations, when the agent serves metrics."""
    port = service.agent.metrics_port
    if not port:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def grace_period_seconds() -> int:
    """Longer than the worker's graceful stop plus an activity heartbeat timeout (after which Temporal hands an
    abandoned activity to another replica), with room for the channels to close."""
    from threadline.channels.base import GRACEFUL_SHUTDOWN
    from threadline.contracts import HEARTBEAT_TIMEOUT

    return math.ceil((GRACEFUL_SHUTDOWN + HEARTBEAT_TIMEOUT).total_seconds()) + 15


def labels(service: ServiceSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": service.metadata.name,
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "threadline.dev/room": service.agent.room,
        "threadline.dev/agent": service.agent.agent_name,
    }


def check_deployable(service: ServiceSpec) -> None:
    if not service.temporal.address:
        raise usage_error("invalid spec: temporal.address is empty, and a container cannot use the embedded "
                          "server: pass --temporal-address HOST:PORT")
    if not service.container.health_port:
        raise usage_error("invalid spec: container.health_port is 0, and probes need a fixed port: pass --health-port")
    warn_unreachable(service)


# Kubernetes.


def check_shared_state(service: ServiceSpec, state_claim: str | None) -> None:
    """Replicas must share their state: the threads (a PostgreSQL thread store, or one volume every pod mounts) and,
    for mail, the mail registry (in that PostgreSQL database too) and the stored .eml files (an s3:// room storage),
    since any pod's SMTP server may receive a mail that another pod's agent answers."""
    if service.replicas <= 1 or state_claim:
        return
    mail = any(c.startswith("mail:") for c in service.agent.channels)
    shared_threads = service.env_ref("THREADLINE_THREAD_STORE_URL") is not None
    shared_storage = (service.agent.storage_url or "").startswith("s3://")
    if shared_threads and (not mail or shared_storage):
        return
    if mail and shared_threads:
        problem, fix = ("room storage on a local directory, so a mail one pod received is not readable by another",
                        "--storage-url s3://BUCKET (shared room storage) or --state-claim CLAIM (a volume every pod "
                        "mounts)")
    else:
        own = "mail registry" if mail else "SQLite thread store"
        problem = f"THREADLINE_HOME on an emptyDir gives every pod its own {own}"
        with_storage = ", with --storage-url s3://…" if mail else ""
        fix = f"--thread-store-url postgresql://… (a shared thread store{with_storage}) or --state-claim CLAIM (a " \
              "volume every pod mounts)"
    raise usage_error(
        f"--replicas {service.replicas} with {problem}, so a thread's next turn on another pod would not see its "
        f"history: pass {fix}"
    )


def kubernetes_manifests(service: ServiceSpec, *, namespace: str | None = None,
                         state_claim: str | None = None) -> list[dict[str, Any]]:
    name = service.metadata.name
    spec_yaml = service.to_yaml()
    meta: dict[str, Any] = {"name": name, "labels": labels(service)}
    if namespace:
        meta["namespace"] = namespace
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": MANAGED_BY}
    container = service.container
    env: list[dict[str, Any]] = [
        {"name": "THREADLINE_HOME", "value": container.state_dir},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += [{"name": ref.name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key,
                                                              "optional": ref.optional}}} for ref in service.env]
    mounts = [{"name": "spec", "mountPath": "/etc/threadline/spec.yaml", "subPath": "spec.yaml", "readOnly": True},
              {"name": "state", "mountPath": container.state_dir}]
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
        {"name": "state", **({"persistentVolumeClaim": {"claimName": state_claim}} if state_claim else {"emptyDir": {}})},
    ]
    if service.temporal.tls_secret:
        mounts.append({"name": "temporal-tls", "mountPath": "/etc/threadline/temporal-tls", "readOnly": True})
        volumes.append({"name": "temporal-tls", "secret": {"secretName": service.temporal.tls_secret}})
    probe = {"port": "health", "scheme": "HTTP"}
    pod_container = {
        "name": "agent",
        "image": container.image,
        "command": container.command,
        "ports": [{"name": p.name, "containerPort": p.port, "protocol": p.protocol} for p in container.ports],
        "env": env,
        "resources": container.resources.model_dump(),
        # The health server starts once the worker polls Temporal: the startup probe gives that a minute.
        "startupProbe": {"httpGet": {"path": "/healthz", **probe}, "periodSeconds": 2, "failureThreshold": 30},
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe}, "periodSeconds": 10, "timeoutSeconds": 3,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 5, "timeoutSeconds": 3,
                           "failureThreshold": 2},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec_extra: dict[str, Any] = {}
    if state_claim and service.replicas > 1:
        # A ReadWriteOnce claim mounts on one node only: every pod (and a surge pod of a rollout) goes there.
        pod_spec_extra["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": selector}, "topologyKey": "kubernetes.io/hostname"}]}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**meta, "annotations": {"threadline.dev/spec-version": service.api_version}},
        "spec": {
            "replicas": service.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels(service),
                    # A changed spec changes the pod template, so the Deployment rolls its pods.
                    "annotations": {"threadline.dev/spec-sha256": hashlib.sha256(spec_yaml.encode()).hexdigest(),
                                    **scrape_annotations(service)},
                },
                "spec": {
                    "terminationGracePeriodSeconds": grace_period_seconds(),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                        "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [pod_container],
                    "volumes": volumes,
                    **pod_spec_extra,
                },
            },
        },
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**meta, "name": f"{name}-spec"},
                  "data": {"spec.yaml": spec_yaml}}
    manifests = [config_map, deployment]
    exposed = [p for p in container.ports if p.name in ("http", "smtp", "mcp")]
    if exposed:
        manifests.append({
            "apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "ClusterIP", "selector": selector,
                     "ports": [{"name": p.name, "port": p.port, "targetPort": p.name, "protocol": p.protocol}
                               for p in exposed]},
        })
    return manifests


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the spec in the ConfigMap, compose config content) as literal blocks."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def manifests_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def _kubectl(args: list[str], *, stdin: str | None = None, timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CliError(f"kubectl did not answer within {timeout:.0f} s ({' '.join(args[1:4])}): is the cluster "
                       "reachable?") from e


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def kubectl_base(context: str | None, namespace: str | None) -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise CliError("kubectl is not installed (or not on PATH): install it and set a cluster context "
                       "(https://kubernetes.io/docs/tasks/tools/), or print the manifests with --dry-run and apply "
                       "them elsewhere")
    base = [kubectl]
    if context:
        contexts = _kubectl([kubectl, "config", "get-contexts", "-o", "name"])
        if context not in contexts.stdout.split():
            raise CliError(f"kubectl has no context {context!r}; its contexts: "
                           f"{', '.join(contexts.stdout.split()) or 'none'} (kubectl config get-contexts)")
        base += ["--context", context]
    else:
        current = _kubectl([kubectl, "config", "current-context"])
        if current.returncode != 0 or not current.stdout.strip():
            raise CliError("kubectl has no cluster context: choose one with kubectl config use-context NAME "
                           "(kubectl config get-contexts lists them) or pass --kube-context, or print the manifests "
                           "with --dry-run")
    if namespace:
        base += ["--namespace", namespace]
    return base


def check_name_free(base: list[str], service: ServiceSpec) -> None:
    """The Deployment named after the service must not exist, or be this agent's (upsert)."""
    name = service.metadata.name
    found = _kubectl([*base, "get", "deployment", name, "-o", "json", "--ignore-not-found"])
    if found.returncode != 0:
        raise CliError(f"kubectl cannot read deployments: {_first_line(found.stderr)}")
    if not found.stdout.strip():
        return
    try:
        existing = json.loads(found.stdout).get("metadata", {}).get("labels") or {}
    except ValueError as e:
        raise CliError(f"kubectl get deployment {name} answered something that is not JSON") from e
    mine = labels(service)
    keys = ("app.kubernetes.io/managed-by", "threadline.dev/room", "threadline.dev/agent")
    if any(existing.get(k) != mine[k] for k in keys):
        owner = (f"agent {existing['threadline.dev/agent']} of room {existing.get('threadline.dev/room')}"
                 if existing.get("app.kubernetes.io/managed-by") == MANAGED_BY and "threadline.dev/agent" in existing
                 else "something not deployed by Threadline")
        raise CliError(f"service name {name} is already used by deployment {name} ({owner}); pick another "
                       "--service-name")


def apply_kubernetes(manifests: list[dict[str, Any]], service: ServiceSpec, context: str | None,
                     namespace: str | None) -> None:
    base = kubectl_base(context, namespace)
    check_name_free(base, service)
    applied = _kubectl([*base, "apply", "--server-side", "--field-manager", MANAGED_BY, "--force-conflicts",
                        "-f", "-"], stdin=manifests_yaml(manifests))
    if applied.returncode != 0:
        raise CliError(f"kubectl apply failed: {_first_line(applied.stderr)}")
    sys.stdout.write(applied.stdout)
    status(f"deployed service {service.metadata.name}: {service.replicas} replica(s) of agent "
           f"{service.agent.agent_name} (watch: kubectl rollout status deployment/{service.metadata.name})")


# Compose.


def _compose_env(service: ServiceSpec) -> dict[str, str]:
    env = {"THREADLINE_HOME": service.container.state_dir, "PYTHONUNBUFFERED": "1"}
    for ref in service.env:
        env[ref.name] = (f"${{{ref.name}:-}}" if ref.optional else
                         f"${{{ref.name}:?set {ref.name} ({ref.description or ref.key}) in the environment or .env}}")
    return env


def compose_service(service: ServiceSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """→ (the service, its top-level configs, its top-level volumes)."""
    name = service.metadata.name
    container = service.container
    spec_config = f"{name}-spec"
    state = f"{name}-state"
    published = [p for p in container.ports if p.name in ("http", "smtp", "mcp")]
    health = container.health_port
    entry: dict[str, Any] = {
        "image": container.image,
        "command": container.command,
        "configs": [{"source": spec_config, "target": "/etc/threadline/spec.yaml", "mode": 0o444}],
        "environment": _compose_env(service),
        "volumes": [f"{state}:{container.state_dir}"],
        "labels": {k: v for k, v in labels(service).items() if k.startswith("threadline.dev/") or "managed-by" in k},
        "healthcheck": {
            "test": ["CMD", "python", "-c",
                     f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{health}/readyz', timeout=3)"],
            "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "60s",
        },
        "restart": "unless-stopped",
        "stop_grace_period": f"{grace_period_seconds()}s",
    }
    if published:
        # Several replicas cannot all bind one host port: then only the container ports are published.
        entry["ports"] = [f"{p.port}:{p.port}" if service.replicas == 1 else str(p.port) for p in published]
    if service.replicas != 1:
        entry["deploy"] = {"replicas": service.replicas}
    content = service.to_yaml().replace("$", "$$")  # compose interpolates ${...} in config content
    return entry, {spec_config: {"content": content}}, {state: {}}


def update_compose_file(path: Path, service: ServiceSpec) -> bool:
    """Writes the service into the compose file (created when missing); other services stay. → created?"""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CliError(f"cannot read the compose file {path}: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise CliError(f"the compose file {path} is not a mapping")
    name = service.metadata.name
    entry, configs, volumes = compose_service(service)
    services = data.setdefault("services", {}) or {}
    data["services"] = services
    existing = services.get(name)
    if existing is not None:
        owner = (existing.get("labels") or {}) if isinstance(existing, dict) else {}
        owner = owner if isinstance(owner, dict) else {}
        if (owner.get("threadline.dev/room"), owner.get("threadline.dev/agent")) != (service.agent.room,
                                                                                     service.agent.agent_name):
            who = (f"agent {owner['threadline.dev/agent']} of room {owner.get('threadline.dev/room')}"
                   if "threadline.dev/agent" in owner else "something not deployed by Threadline")
            raise CliError(f"service name {name} is already used in {path} ({who}); pick another --service-name")
        # Keys Threadline does not write (depends_on, networks...) and extra environment variables are kept.
        extra_env = existing.get("environment") if isinstance(existing.get("environment"), dict) else {}
        entry = {**existing, **entry, "environment": {**extra_env, **entry["environment"]}}
    services[name] = entry
    data["configs"] = {**(data.get("configs") or {}), **configs}
    data["volumes"] = {**(data.get("volumes") or {}), **volumes}
    path.write_text(dump_yaml(data))
    return existing is None


# The command.


class Target(str, Enum):
    kubernetes = "kubernetes"
    compose = "compose"


class ManifestFormat(str, Enum):
    yaml = "yaml"
    json = "json"


DEPLOY_PANEL = "Deploy"


@dataclass
class DeployOptions:
    target: Annotated[
        Target, typer.Option("--target", case_sensitive=False, rich_help_panel=DEPLOY_PANEL, help="Where to deploy.")
    ] = Target.kubernetes
    dry_run: Annotated[
        bool, typer.Option("--dry-run", rich_help_panel=DEPLOY_PANEL,
                           help="Print what would be applied (Kubernetes manifests, the compose service) instead.")
    ] = False
    output: Annotated[
        ManifestFormat | None,
        typer.Option("--output", "-o", case_sensitive=False, rich_help_panel=DEPLOY_PANEL, show_default=False,
                     help="Print the manifests in this format instead of applying them."),
    ] = None
    kube_context: Annotated[
        str | None, typer.Option("--kube-context", envvar="THREADLINE_KUBE_CONTEXT", rich_help_panel=DEPLOY_PANEL,
                                 help="kubectl context [default: the current one].", show_default=False)
    ] = None
    kube_namespace: Annotated[
        str | None, typer.Option("--kube-namespace", envvar="THREADLINE_KUBE_NAMESPACE", rich_help_panel=DEPLOY_PANEL,
                                 help="Kubernetes namespace [default: the context's].", show_default=False)
    ] = None
    state_claim: Annotated[
        str | None, typer.Option("--state-claim", rich_help_panel=DEPLOY_PANEL, show_default=False,
                                 help="PersistentVolumeClaim for THREADLINE_HOME (thread store, room storage) "
                                      "[default: an emptyDir, lost with the pod].")
    ] = None
    compose_file: Annotated[
        Path, typer.Option("--compose-file", rich_help_panel=DEPLOY_PANEL,
                           help="The compose file to write the service into (--target compose).")
    ] = Path("docker-compose.yml")


DEPLOY_EPILOG = """\
[bold]Examples[/bold]

  threadline process deploy --room demo --agent-name support --channel chat --model gpt-4o-mini \
--temporal-address temporal.temporal:7233 --http-host 0.0.0.0 --http-token "$TOKEN" --replicas 2 --dry-run

  threadline process deploy --spec support.yaml --kube-context prod --kube-namespace agents

  threadline process deploy --spec support.yaml --target compose --compose-file docker-compose.yml

Secrets are referenced, never copied: create them first, e.g.
kubectl create secret generic support-secrets --from-literal=openai-api-key="$OPENAI_API_KEY"
"""


def register(process_app: typer.Typer) -> None:
    @process_app.command("deploy", epilog=DEPLOY_EPILOG)
    @with_options(agent=AgentOptions, connection=ConnectionOptions, service=ServiceOptions, deploy=DeployOptions)
    def deploy(
        ctx: typer.Context,
        agent: AgentOptions,
        connection: ConnectionOptions,
        service: ServiceOptions,
        deploy: DeployOptions,
        spec_file: SpecFile = None,
        verbose: Verbose = False,
    ) -> None:
        """Deploy the agent (the spec of process spec, or --spec FILE) to Kubernetes or a compose file."""
        if spec_file is not None:
            refuse_options_beside_spec(ctx, ("verbose", "spec_file", *DeployOptions.__dataclass_fields__))
            service_spec = load_service_spec(spec_file)
        else:
            service_spec = build_service_spec(agent, connection, service)
        check_deployable(service_spec)
        if deploy.target is Target.compose:
            if deploy.dry_run or deploy.output is not None:
                entry, configs, volumes = compose_service(service_spec)
                sys.stdout.write(dump_yaml({"services": {service_spec.metadata.name: entry}, "configs": configs,
                                            "volumes": volumes}))
                return
            created = update_compose_file(deploy.compose_file, service_spec)
            status(f"{'added' if created else 'updated'} service {service_spec.metadata.name} in "
                   f"{deploy.compose_file} (start it: docker compose -f {deploy.compose_file} up -d)")
            return
        check_shared_state(service_spec, deploy.state_claim)
        if not deploy.state_claim:
            warn("THREADLINE_HOME (thread store, room storage) is an emptyDir, lost when a pod is replaced: pass "
                 "--state-claim CLAIM")
        manifests = kubernetes_manifests(service_spec, namespace=deploy.kube_namespace, state_claim=deploy.state_claim)
        if deploy.output is ManifestFormat.json:
            sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}, indent=2) + "\n")
            return
        if deploy.dry_run or deploy.output is ManifestFormat.yaml:
            sys.stdout.write(manifests_yaml(manifests))
            return
        apply_kubernetes(manifests, service_spec, deploy.kube_context, deploy.kube_namespace)
