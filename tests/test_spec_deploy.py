"""`process spec`, `process join --spec`, `process deploy` (Kubernetes and compose), the health endpoint, and
scaling out: several agent processes on one dev server sharing queued jobs while one is killed."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import signal
import stat
import sys
from collections import Counter
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import typer
import yaml
from threadline.activities.thread_store import ThreadStore
from threadline.channels.base import GRACEFUL_SHUTDOWN
from threadline.channels.queue_jobs import send_job, wait_for_job
from threadline.cli.agent_options import AgentOptions
from threadline.cli.agent_spec import build_spec
from threadline.cli.deploy import grace_period_seconds
from threadline.cli.options import ConnectionOptions, with_options
from threadline.cli.spec import SCHEMA_FILE, ServiceSpec, from_service_spec, load_service_spec, schema, schema_text
from threadline.contracts import HEARTBEAT_TIMEOUT
from threadline.models.spec import AgentSpec
from typer.testing import CliRunner

from tests.cli_helpers import REPO, CliProcess, run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse

K8S_VERSION = "1.30"


def agent_flags(room: str, address: str, *extra: str) -> list[str]:
    return ["--room", room, "--agent-name", "support", "--temporal-address", address, "--model", "fake-model",
            "--channel", "chat", "--channel", "queue:jobs", "--http-port", "0", "-r", "Answer briefly.",
            "--threading-mode", "none", "--max-steps", "7", *extra]


def spec_of(*args: str, env: dict[str, str | None] | None = None) -> dict:
    result = run_cli("process", "spec", *args, env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_schema_file_is_current() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), "regenerate: threadline process spec --schema > " + str(SCHEMA_FILE)
    printed = run_cli("process", "spec", "--schema")
    assert printed.returncode == 0 and json.loads(printed.stdout) == schema()


def test_spec_is_valid_against_its_schema_and_holds_no_secret_values(room: str, temporal_server) -> None:
    data = spec_of(*agent_flags(room, temporal_server.address, "--http-host", "0.0.0.0", "--http-token", "s3cret",
                                "--channel", "mail:bot@example.com", "--smtp-relay", "relay.example.com:587",
                                "--temporal-api-key", "tk-secret", "--service-name", "support-svc",
                                "--replicas", "3", "--image", "registry.example.com/threadline:1.2"))
    jsonschema.validate(data, schema())
    text = yaml.safe_dump(data)
    assert "s3cret" not in text and "tk-secret" not in text and "test-key" not in text
    assert data["apiVersion"] == "threadline/v1" and data["kind"] == "AgentService"
    assert data["metadata"]["name"] == "support-svc" and data["replicas"] == 3
    assert data["container"]["image"] == "registry.example.com/threadline:1.2"
    assert data["container"]["command"] == ["threadline", "process", "join", "--spec", "/etc/threadline/spec.yaml"]
    assert {p["name"]: p["port"] for p in data["container"]["ports"]} == {"http": 8780, "smtp": 2525, "health": 8790}
    env = {e["name"]: e for e in data["env"]}
    assert set(env) == {"OPENAI_API_KEY", "TEMPORAL_API_KEY", "THREADLINE_HTTP_TOKEN", "THREADLINE_SMTP_USERNAME",
                        "THREADLINE_SMTP_PASSWORD"}
    assert env["THREADLINE_HTTP_TOKEN"] == {"name": "THREADLINE_HTTP_TOKEN", "secret": "support-svc-secrets",
                                            "key": "http-token", "optional": False,
                                            "description": "bearer token of the chat API"}
    assert data["temporal"]["address"] == temporal_server.address
    assert data["temporal"]["api_key"]["name"] == "TEMPORAL_API_KEY"
    assert data["agent"]["channels"] == ["chat", "queue:jobs", "mail:bot@example.com"]


def test_spec_carries_the_context_and_model_settings(room: str, temporal_server) -> None:
    data = spec_of(*agent_flags(room, temporal_server.address, "--context-window", "8000", "--compaction-threshold",
                                "5000", "--compaction-model", "gpt-4o-mini", "--max-output-tokens", "800",
                                "--reasoning-effort", "low"))
    jsonschema.validate(data, schema())
    assert data["agent"]["context"] == {"management": "auto", "window": 8000, "threshold": 5000,
                                        "compaction_model": "gpt-4o-mini"}
    assert (data["agent"]["max_output_tokens"], data["agent"]["reasoning_effort"]) == (800, "low")
    off = spec_of(*agent_flags(room, temporal_server.address, "--context-management", "none"))
    assert off["agent"]["context"]["management"] == "none"
    approvals = spec_of(*agent_flags(room, temporal_server.address, "--require-approval", "storage_*",
                                     "--require-approval", "mcp:*", "--approval-timeout", "600",
                                     "--approver", "Boss@Example.com"))
    assert approvals["agent"]["approvals"] == {"require": ["storage_*", "mcp:*"], "timeout_seconds": 600.0,
                                               "approvers": ["boss@example.com"]}


def test_spec_inlines_rules_files_and_refuses_bad_options(room: str, tmp_path: Path, temporal_server) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("# a comment\nBe kind.\n")
    data = spec_of(*agent_flags(room, temporal_server.address, "--rules-file", str(rules)))
    assert data["agent"]["rules"] == ["Answer briefly.", "Be kind."] and data["agent"]["rules_files"] == []
    bad = run_cli("process", "spec", *agent_flags(room, temporal_server.address, "--service-name", "Not_A_Label"))
    assert bad.returncode == 2 and "not a DNS label" in bad.stderr, bad.stderr
    no_channel = run_cli("process", "spec", "--room", room, "--agent-name", "a", "--model", "offline")
    assert no_channel.returncode == 2 and "--channel" in no_channel.stderr


async def test_join_spec_round_trips_and_the_agent_answers(room: str, temporal_server, temporal_client,
                                                           tmp_path: Path, fake_model: FakeOpenAI) -> None:
    flags = agent_flags(room, temporal_server.address)
    result = run_cli("process", "spec", *flags, "--health-port", "0")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "support.yaml"
    path.write_text(result.stdout)

    # The AgentSpec join --spec runs is the one the same flags build (parsed by typer, as join parses them).
    captured: dict[str, AgentSpec] = {}
    probe = typer.Typer()

    @probe.command()
    @with_options(agent=AgentOptions, connection=ConnectionOptions)
    def build(agent: AgentOptions, connection: ConnectionOptions) -> None:
        captured["spec"] = build_spec(agent, connection)

    assert CliRunner().invoke(probe, flags).exit_code == 0
    from_flags = captured["spec"]
    from_file, connection, health_port = from_service_spec(load_service_spec(path))
    assert from_file == from_flags
    assert connection.temporal_address == temporal_server.address and health_port == 0

    # Options beside --spec are refused.
    refused = run_cli("process", "join", "--spec", str(path), "--model", "offline")
    assert refused.returncode == 2 and "--model" in refused.stderr and "cannot be given beside it" in refused.stderr

    process = CliProcess("process", "join", "--spec", str(path))
    try:
        process.wait_for_line("task queue", stream="stdout", timeout=60)
        health = process.wait_for_line("health checks: http://", stream="stderr")
        assert health.startswith("health checks: http://0.0.0.0:"), health  # probes come from outside the pod
        port = int(health.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
            live = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert ready.status_code == 200 and live.status_code == 200, ready.text
        assert ready.json()["worker"] == "running"
        assert ready.json()["channels"] == {"chat": "serving", "queue:jobs": "serving"}

        accepted = await send_job(temporal_client, room, "jobs", "hello from a job")
        job = await asyncio.wait_for(wait_for_job(temporal_client, room, accepted.job_id), 60)
        assert job.status == "completed" and job.text == "echo: hello from a job" and job.agent == "support"
        request = fake_model.requests[-1]
        assert "Answer briefly." in json.dumps(request.body)
    finally:
        process.terminate()
        assert process.wait(30) == 0, process.transcript()


def test_join_spec_errors(tmp_path: Path) -> None:
    missing = run_cli("process", "join", "--spec", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the spec" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: threadline/v1\nkind: AgentService\nmetadata: {name: x}\nagent: {room: r}\n")
    invalid = run_cli("process", "join", "--spec", str(bad))
    assert invalid.returncode == 2 and "invalid spec" in invalid.stderr and "agent_name" in invalid.stderr
    bad.write_text("apiVersion: threadline/v9\n")
    assert "apiVersion" in run_cli("process", "join", "--spec", str(bad)).stderr


# Kubernetes.


def manifests(*args: str, env: dict[str, str | None] | None = None) -> list[dict]:
    result = run_cli("process", "deploy", *args, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_a_metrics_port_is_a_container_port_prometheus_scrapes(room: str) -> None:
    docs = manifests(*agent_flags(room, "temporal.example:7233", "--metrics-port", "9464"))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    assert {k: v for k, v in template["metadata"]["annotations"].items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9464", "prometheus.io/path": "/metrics"}
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 9464


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(room: str) -> None:
    docs = manifests(*agent_flags(room, "temporal.example:7233", "--http-host", "0.0.0.0", "--http-token", "t",
                                  "--channel", "mail:bot@example.com", "--smtp-host", "0.0.0.0", "--replicas", "3"),
                     "--kube-namespace", "agents", "--state-claim", "support-state")
    for doc in docs:  # strict: no unknown fields anywhere (offline: kubernetes-validate ships the schemas)
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service"}
    deployment = kinds["Deployment"]
    assert deployment["metadata"]["namespace"] == "agents" and deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] == grace_period_seconds()
    assert grace_period_seconds() > (GRACEFUL_SHUTDOWN + HEARTBEAT_TIMEOUT).total_seconds()
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_env["THREADLINE_HTTP_TOKEN"] == {"name": "support-secrets", "key": "http-token", "optional": False}
    assert all("value" not in e or e["value"] != "t" for e in container["env"])
    assert {v["name"]: v for v in pod["volumes"]}["state"]["persistentVolumeClaim"] == {"claimName": "support-state"}
    together = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert together == [{"labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
                         "topologyKey": "kubernetes.io/hostname"}]
    assert {p["name"] for p in kinds["Service"]["spec"]["ports"]} == {"http", "smtp"}
    spec = ServiceSpec.model_validate(yaml.safe_load(kinds["ConfigMap"]["data"]["spec.yaml"]))
    assert spec.agent.room == room and spec.replicas == 3


def test_no_service_without_http_or_smtp_and_invalid_spec(room: str) -> None:
    docs = manifests("--room", room, "--agent-name", "worker", "--model", "offline", "--channel", "queue:jobs",
                     "--temporal-address", "temporal:7233")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    no_address = run_cli("process", "deploy", "--room", room, "--agent-name", "w", "--model", "offline",
                         "--channel", "queue:jobs", "--dry-run")
    assert no_address.returncode == 2 and "invalid spec: temporal.address" in no_address.stderr


def test_replicas_need_a_shared_thread_store_or_volume(room: str) -> None:
    base = ["process", "deploy", "--room", room, "--agent-name", "w", "--model", "offline", "--temporal-address",
            "temporal:7233", "--replicas", "3", "--dry-run"]
    split = run_cli(*base, "--channel", "queue:jobs")
    assert split.returncode == 2 and split.stdout == ""
    assert ("error: --replicas 3 with THREADLINE_HOME on an emptyDir gives every pod its own SQLite thread store"
            in split.stderr and "--thread-store-url postgresql://" in split.stderr), split.stderr
    shared = run_cli(*base, "--channel", "queue:jobs", "--thread-store-url", "postgresql://u:hunter2@db:5432/t")
    assert shared.returncode == 0, shared.stderr
    assert "hunter2" not in shared.stdout
    mail = run_cli(*base, "--channel", "mail:bot@example.com")
    assert mail.returncode == 2 and "own mail registry" in mail.stderr and "--state-claim" in mail.stderr
    local_mail = run_cli(*base, "--channel", "mail:bot@example.com", "--thread-store-url", "postgresql://u:p@db/t")
    assert local_mail.returncode == 2 and "--storage-url s3://" in local_mail.stderr, local_mail.stderr
    scaled_mail = run_cli(*base, "--channel", "mail:bot@example.com", "--thread-store-url", "postgresql://u:p@db/t",
                          "--storage-url", "s3://mail-bucket/support")
    assert scaled_mail.returncode == 0, scaled_mail.stderr
    claimed = run_cli(*base, "--channel", "mail:bot@example.com", "--state-claim", "home")
    assert claimed.returncode == 0, claimed.stderr


def test_a_spec_with_a_database_password_is_refused(room: str, tmp_path: Path, temporal_server) -> None:
    data = spec_of(*agent_flags(room, temporal_server.address))
    data["agent"]["thread_store_url"] = "postgresql://app:hunter2@db:5432/threads"
    written = tmp_path / "spec.yaml"
    written.write_text(yaml.safe_dump(data))
    for command in (["process", "join", "--spec", str(written)], ["process", "deploy", "--spec", str(written),
                                                                    "--dry-run"]):
        refused = run_cli(*command)
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout
        assert "agent.thread_store_url holds a password" in refused.stderr, refused.stderr
        assert "THREADLINE_THREAD_STORE_URL" in refused.stderr and "hunter2" not in refused.stderr


def fake_kubectl(tmp_path: Path, existing: dict | None, *, context: bool = True) -> Path:
    """A kubectl stand-in on PATH: records its calls, has a context or not, knows one deployment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    script = bin_dir / "kubectl"
    deployment = tmp_path / "deployment.json"
    if existing is not None:
        deployment.write_text(json.dumps(existing))
    script.write_text(f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "-f" in args else ""
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
if args[:2] == ["config", "current-context"]:
    print("test-cluster") if {context!r} else sys.exit("error: current-context is not set")
elif "get" in args:
    print(open({str(deployment)!r}).read() if os.path.exists({str(deployment)!r}) else "")
elif "apply" in args:
    print("configmap/support-spec serverside-applied")
    print("deployment.apps/support serverside-applied")
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def kubectl_calls(tmp_path: Path) -> list[dict]:
    log = tmp_path / "kubectl.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def deploy_args(room: str) -> list[str]:
    return ["process", "deploy", "--room", room, "--agent-name", "support", "--model", "offline", "--channel",
            "queue:jobs", "--temporal-address", "temporal:7233"]


def test_deploy_applies_server_side_and_upserts_its_own_deployment(room: str, tmp_path: Path) -> None:
    mine = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "threadline", "threadline.dev/room": room,
                                    "threadline.dev/agent": "support"}}}
    bin_dir = fake_kubectl(tmp_path, mine)
    result = run_cli(*deploy_args(room), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/support serverside-applied" in result.stdout
    calls = kubectl_calls(tmp_path)
    assert calls[1]["args"][:3] == ["get", "deployment", "support"]
    apply = calls[-1]
    assert apply["args"][:2] == ["apply", "--server-side"] and apply["args"][-2:] == ["-f", "-"]
    assert [d["kind"] for d in yaml.safe_load_all(apply["stdin"])] == ["ConfigMap", "Deployment"]


def test_deploy_refuses_a_name_used_by_another_agent(room: str, tmp_path: Path) -> None:
    other = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "threadline", "threadline.dev/room": room,
                                     "threadline.dev/agent": "billing"}}}
    bin_dir = fake_kubectl(tmp_path, other)
    result = run_cli(*deploy_args(room), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 1
    assert "service name support is already used" in result.stderr and "agent billing" in result.stderr
    assert not any("apply" in c["args"] for c in kubectl_calls(tmp_path))


def test_deploy_without_kubectl_or_context_says_how_to_fix(room: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_cli(*deploy_args(room), env={"PATH": str(empty)})
    assert missing.returncode == 1 and "kubectl is not installed" in missing.stderr and "--dry-run" in missing.stderr
    no_context = fake_kubectl(tmp_path, None, context=False)
    result = run_cli(*deploy_args(room), env={"PATH": f"{no_context}:{os.environ['PATH']}"})
    assert result.returncode == 1 and "no cluster context" in result.stderr and "use-context" in result.stderr


# Compose.


def compose_schema() -> dict:
    """The compose specification's schema, as check-jsonschema vendors it (offline)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def validate_compose(data: dict) -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_compose_target_writes_one_service_and_keeps_the_others(room: str, tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text(yaml.safe_dump({"services": {"db": {"image": "postgres:16"}}}))
    args = [*deploy_args(room), "--target", "compose", "--compose-file", str(compose), "--channel", "chat",
            "--http-host", "0.0.0.0", "--http-token", "t"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "added service support" in first.stderr
    data = yaml.safe_load(compose.read_text())
    validate_compose(data)
    assert set(data["services"]) == {"db", "support"}
    service = data["services"]["support"]
    assert service["environment"]["THREADLINE_HTTP_TOKEN"].startswith("${THREADLINE_HTTP_TOKEN:?")
    assert "t" not in service["environment"].values()
    spec = ServiceSpec.model_validate(yaml.safe_load(data["configs"]["support-spec"]["content"].replace("$$", "$")))
    assert spec.agent.channels == ["queue:jobs", "chat"]

    data["services"]["support"]["depends_on"] = ["db"]
    compose.write_text(yaml.safe_dump(data))
    second = run_cli(*args, "--replicas", "2")
    assert second.returncode == 0 and "updated service support" in second.stderr
    data = yaml.safe_load(compose.read_text())
    validate_compose(data)
    assert data["services"]["support"]["depends_on"] == ["db"] and data["services"]["support"]["deploy"] == {"replicas": 2}

    other = run_cli(*[a if a != "support" else "billing" for a in args], "--service-name", "support")
    assert other.returncode == 1 and "already used" in other.stderr


def test_repository_compose_file_is_valid_and_runs_all_four_channels() -> None:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    validate_compose(data)
    assert {"postgresql", "temporal", "temporal-ui", "mailpit"} <= set(data["services"])
    agents = [name for name, s in data["services"].items() if "threadline.dev/agent" in (s.get("labels") or {})]
    assert len(agents) == 1
    content = data["configs"][f"{agents[0]}-spec"]["content"].replace("$$", "$")
    spec = ServiceSpec.model_validate(yaml.safe_load(content))
    assert {c.partition(":")[0] for c in spec.agent.channels} == {"chat", "queue", "toolkit", "mail"}
    assert spec.temporal.address == "temporal:7233"
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "USER" in dockerfile and "process join --spec /etc/threadline/spec.yaml" in " ".join(
        json.loads(dockerfile.split("CMD", 1)[1].strip().splitlines()[0]))


# Scaling out.


async def test_three_agent_processes_share_90_jobs_one_killed_all_complete_once(
    room: str, temporal_server, temporal_client, fake_model: FakeOpenAI
) -> None:
    fake_model.script(lambda req: FakeResponse.delay(0.1))
    args = ["--room", room, "--agent-name", "scaler", "--model", "fake-model", "--channel", "queue:work",
            "--temporal-address", temporal_server.address]
    processes = [CliProcess("process", "join", *args) for _ in range(3)]
    try:
        for process in processes:
            process.wait_for_line("task queue", stream="stdout", timeout=60)
        sent = await asyncio.gather(*[send_job(temporal_client, room, "work", f"job {n}") for n in range(90)])
        await fake_model.wait_for_async(lambda: fake_model.count() >= 45, timeout=60)
        processes[0].proc.send_signal(signal.SIGKILL)
        processes[0].proc.wait(10)
        jobs = await asyncio.gather(*[asyncio.wait_for(wait_for_job(temporal_client, room, a.job_id), 90)
                                      for a in sent])
    finally:
        for process in processes:
            process.kill()
    assert [job.status for job in jobs] == ["completed"] * 90
    assert sorted(job.text for job in jobs) == sorted(f"echo: job {n}" for n in range(90))
    # Every job ran to completion once: its thread holds one question and one answer. Model calls are activities,
    # so at least once: a call the killed process had started (or finished without reporting) was retried
    # elsewhere, and with one kill no prompt reaches the model more than twice.
    store = ThreadStore.for_room(room)
    for job in jobs:
        assert [i.type for i in store.items(job.thread_id)] == ["user", "assistant"], job.job_id
    counts = Counter(r.last_user_text for r in fake_model.requests)
    assert set(counts) == {f"job {n}" for n in range(90)} and max(counts.values()) <= 2
    assert Counter(job.agent for job in jobs)["scaler"] == 90


def test_the_mcp_token_is_a_secret_reference(room: str, temporal_server) -> None:
    data = spec_of(*agent_flags(room, temporal_server.address, "--channel", "toolkit:helper", "--mcp-serve-port",
                                "8791", "--mcp-serve-host", "0.0.0.0", "--mcp-serve-token", "mcp-s3cret"))
    assert "mcp-s3cret" not in yaml.safe_dump(data)
    assert "serve_token" not in data["agent"]["mcp"]
    assert {"name": "THREADLINE_MCP_SERVE_TOKEN", "secret": "support-secrets", "key": "mcp-serve-token",
            "optional": False, "description": "bearer token of the agent's MCP server"} in data["env"]
