"""Rules that live in room storage (read at every model call), skills, and the small tool switches, as the model
sees them: the system message and the tool list of each request."""

from __future__ import annotations

from temporalio.client import Client
from threadline.activities.rules import PREAMBLE_RULE
from threadline.activities.storage import RoomStorage
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse


def system(request: FakeRequest) -> str:
    return request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""


async def ask(client: Client, spec: AgentSpec, thread_id: str, text: str = "hello") -> str:
    reply = await submit_turn(client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=text))
    assert reply.status == "completed", reply.error
    return reply.text


async def test_rules_in_room_storage_change_the_agent_from_its_next_call(
        temporal_client: Client, agent_spec: AgentSpec, agent_worker, fake_model: FakeOpenAI):
    storage = RoomStorage.for_spec(agent_spec)
    storage.write("rules/agent.md", "# the house style\nAnswer in French.\n")
    storage.write("rules/room.md", "Never promise a delivery date.\n")
    spec = agent_spec.model_copy(update={"rules": ["You are ACME support."],
                                         "instructions_files": ["rules/agent.md"],
                                         "room_rules_files": ["rules/room.md"]})
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    await ask(temporal_client, spec, thread_id)
    assert system(fake_model.requests[-1]) == ("You are ACME support.\nAnswer in French.\n"
                                               "Never promise a delivery date.")
    storage.write("rules/agent.md", "Answer in German.\n")
    await ask(temporal_client, spec, thread_id)
    assert system(fake_model.requests[-1]) == ("You are ACME support.\nAnswer in German.\n"
                                               "Never promise a delivery date.")


async def test_skills_are_listed_and_read_on_demand(temporal_client: Client, agent_spec: AgentSpec, agent_worker,
                                                    fake_model: FakeOpenAI, tmp_path):
    skill = tmp_path / "skills" / "refunds"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: refunds\ndescription: how to refund an order\n---\n"
                                    "1. Check the invoice.\n2. Refund at most 100 EUR.\n")
    spec = agent_spec.model_copy(update={"skill_dirs": [str(tmp_path / "skills")]})
    fake_model.enqueue(FakeResponse.tool_calls([("read_skill", {"name": "refunds"})]))
    fake_model.script(lambda r: FakeResponse.text(r.messages[-1]["content"]) if r.messages[-1]["role"] == "tool"
                      else None)
    await agent_worker(spec)
    text = await ask(temporal_client, spec, spec.ref.thread_id(new_thread_name()), "refund order 7")
    assert text == "1. Check the invoice.\n2. Refund at most 100 EUR.\n"
    assert "refunds: how to refund an order" in system(fake_model.requests[0])
    assert "read_skill" in fake_model.requests[0].tool_names


async def test_tool_switches_and_the_preamble_rule(temporal_client: Client, agent_spec: AgentSpec, agent_worker,
                                                   fake_model: FakeOpenAI):
    spec = agent_spec.model_copy(update={"storage": True, "read_only_storage": True, "time_tool": False,
                                         "uuid_tool": True, "preamble_rule": True})
    await agent_worker(spec)
    await ask(temporal_client, spec, spec.ref.thread_id(new_thread_name()))
    request = fake_model.requests[-1]
    assert sorted(request.tool_names) == ["new_uuid", "storage_list", "storage_read"]
    assert system(request) == PREAMBLE_RULE


async def test_model_requests_are_logged_without_secrets(temporal_client: Client, agent_spec: AgentSpec,
                                                          agent_worker, fake_model: FakeOpenAI, capfd):
    spec = agent_spec.model_copy(update={"log_llm_requests": True})
    await agent_worker(spec)
    await ask(temporal_client, spec, spec.ref.thread_id(new_thread_name()), "my key is sk-live0123456789abcdef")
    logged = capfd.readouterr().err
    assert "threadline.llm model request:" in logged and "my key is ***" in logged
    assert "sk-live0123456789abcdef" not in logged and "test-key" not in logged
    assert "threadline.llm model answer (stop): echo: my key is ***" in logged


def test_a_missing_storage_rules_file_is_a_start_up_error() -> None:
    result = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                     "--instructions", "rules/none.md")
    assert result.returncode == 2
    assert "error: the rules file rules/none.md is not readable in room storage" in result.stderr


async def test_storage_tools_see_mounted_folders_and_read_only_ones_refuse_writes(
        temporal_client: Client, agent_spec: AgentSpec, agent_worker, fake_model: FakeOpenAI, tmp_path):
    from threadline.models.spec import StorageMount

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.txt").write_text("press the red button")
    storage = RoomStorage.for_spec(agent_spec)
    storage.write("shared/prices.txt", "10 EUR")
    spec = agent_spec.model_copy(update={"storage": True, "storage_mounts": [
        StorageMount(kind="local", source=str(docs), mount="docs", writable=False),
        StorageMount(kind="room", source="shared", mount="team", writable=True),
    ]})
    fake_model.script(lambda r: FakeResponse.text(r.messages[-1]["content"]) if r.messages[-1]["role"] == "tool"
                      else None)
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())

    async def tool(name: str, **arguments: str) -> str:
        fake_model.enqueue(FakeResponse.tool_calls([(name, arguments)]))
        return await ask(temporal_client, spec, thread_id, f"use {name}")

    assert await tool("storage_read", path="docs/manual.txt") == "press the red button"
    assert await tool("storage_read", path="team/prices.txt") == "10 EUR"
    refused = await tool("storage_write", path="docs/manual.txt", content="changed")
    assert refused == "error: docs/manual.txt is in docs/, which is mounted read-only: write somewhere else"
    assert (docs / "manual.txt").read_text() == "press the red button"
    assert await tool("storage_write", path="team/new.txt", content="hi") == "wrote 2 bytes to team/new.txt"
    assert storage.read_text("shared/new.txt") == "hi"
    listed = await tool("storage_list", path="")
    assert "docs/" in listed and "team/" in listed
    assert await tool("storage_list", path="docs") == '["docs/manual.txt"]'


def test_mount_options_reach_the_spec(tmp_path) -> None:
    import yaml

    ok = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                 "--storage", "--storage-tool-local-path", f"{tmp_path}:docs:ro", "--storage-tool-room-path",
                 "shared:team")
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["agent"]["storage_mounts"] == [
        {"kind": "local", "source": str(tmp_path), "mount": "docs", "writable": False},
        {"kind": "room", "source": "shared", "mount": "team", "writable": True}]
    bad = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                  "--storage-tool-local-path", f"{tmp_path}/nope:docs")
    assert bad.returncode == 2 and "is not a folder on this machine" in bad.stderr
