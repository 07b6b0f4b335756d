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
