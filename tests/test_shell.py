"""The shell tool in its sandbox (bubblewrap) and apply_patch, driven through the agent: the fake model calls the
tool, and what the tool returned is what the model sees next."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading

import pytest
import yaml
from temporalio.client import Client
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec, ShellSettings
from threadline.models.thread import Turn

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="the shell tests need bubblewrap: install it with `sudo apt-get install -y bubblewrap`, then run them again",
)


def tool_result(request: FakeRequest) -> FakeResponse | None:
    """After a tool ran, the model answers with exactly what the tool returned."""
    if request.messages[-1]["role"] != "tool":
        return None
    return FakeResponse.text(request.messages[-1]["content"])


@pytest.fixture
def shell_agent(agent_spec: AgentSpec, agent_worker, fake_model: FakeOpenAI):
    async def start(**settings: object) -> AgentSpec:
        spec = agent_spec.model_copy(update={"shell": ShellSettings(enabled=True, apply_patch=True, **settings)})
        fake_model.script(tool_result)
        await agent_worker(spec)
        return spec

    return start


async def run(client: Client, spec: AgentSpec, fake: FakeOpenAI, thread_id: str, tool: str, **arguments: str) -> str:
    fake.enqueue(FakeResponse.tool_calls([(tool, arguments)]))
    reply = await submit_turn(client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text=f"use {tool}"))
    assert reply.status == "completed", reply.error
    return reply.text


async def test_the_shell_runs_in_a_sandbox_that_keeps_the_agent_and_the_machine_out(
        temporal_client: Client, shell_agent, fake_model: FakeOpenAI, tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t")
    spec = await shell_agent(copy_env=["SHARED_NAME"], set_env={"GREETING": "hi"})
    thread_id = spec.ref.thread_id(new_thread_name())
    shell = lambda command: run(temporal_client, spec, fake_model, thread_id, "shell", command=command)

    first = await shell("echo kept > note.txt; pwd; echo \"[$OPENAI_API_KEY][$SECRET_TOKEN][$GREETING]\"")
    assert first.startswith("exit code 0\n--- stdout ---\n/work\n[][][hi]\n")
    assert (await shell("cat note.txt")).startswith("exit code 0\n--- stdout ---\nkept\n")  # the folder stays
    other = spec.ref.thread_id(new_thread_name())
    elsewhere = await run(temporal_client, spec, fake_model, other, "shell", command="cat note.txt")
    assert elsewhere.startswith("exit code 1") and "No such file" in elsewhere  # threads do not share it

    home = str(tmp_path)  # THREADLINE_HOME is under it
    hidden = await shell(f"ls {home} || echo absent; ls /root 2>&1 | head -1")
    assert "absent" in hidden and "No such file" in hidden

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        accepted: list[object] = []
        threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
        offline = await shell(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 3)\"")
    assert offline.startswith("exit code 1") and "Error" in offline and accepted == []

    memory = await shell("python3 -c \"x = bytearray(2 * 1024 ** 3)\"")
    assert memory.startswith("exit code 1") and "MemoryError" in memory
    bomb = await shell("bomb() { bomb | bomb & }; bomb; sleep 2; echo still-here")
    assert "still-here" in bomb or "time limit" in bomb
    assert (await shell("echo after")).startswith("exit code 0\n--- stdout ---\nafter\n")  # the agent is fine


async def test_a_command_past_its_time_limit_is_stopped(temporal_client: Client, shell_agent,
                                                         fake_model: FakeOpenAI):
    spec = await shell_agent(timeout_seconds=2)
    thread_id = spec.ref.thread_id(new_thread_name())
    text = await run(temporal_client, spec, fake_model, thread_id, "shell", command="echo started; sleep 60")
    assert text.startswith("error: the command ran past its time limit of 2 s and was stopped\n--- stdout ---\n"
                           "started\n")


async def test_apply_patch_changes_files_all_or_nothing(temporal_client: Client, shell_agent,
                                                        fake_model: FakeOpenAI):
    spec = await shell_agent()
    thread_id = spec.ref.thread_id(new_thread_name())
    patch = lambda text: run(temporal_client, spec, fake_model, thread_id, "apply_patch", patch=text)
    shell = lambda command: run(temporal_client, spec, fake_model, thread_id, "shell", command=command)
    await shell("printf 'def f():\\n    return 1\\n' > a.py; printf 'bye\\n' > old.txt; printf 'x\\n' > m.txt")
    done = await patch("*** Begin Patch\n*** Update File: a.py\n@@ def f():\n-    return 1\n+    return 2\n"
                       "*** Add File: b.txt\n+hello\n*** Delete File: old.txt\n*** End Patch")
    assert done == "updated a.py (1 hunk)\nadded b.txt\ndeleted old.txt"
    unified = ("diff --git a/m.txt b/n.txt\nsimilarity index 100%\nrename from m.txt\nrename to n.txt\n"
               "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1,2 @@\n hello\n+world\n")
    assert await patch(unified) == "moved m.txt to n.txt\nupdated b.txt (1 hunk)"
    listing = await shell("cat a.py b.txt; ls")
    assert "return 2" in listing and "hello\nworld" in listing and "old.txt" not in listing
    assert "n.txt" in listing and "m.txt" not in listing
    failed = await patch("*** Begin Patch\n*** Add File: c.txt\n+new\n*** Update File: a.py\n-    return 9\n"
                         "+    return 3\n*** End Patch")
    assert failed.startswith("error: a.py: hunk 1 does not apply") and "nothing was changed" in failed
    outside = await patch("*** Begin Patch\n*** Add File: ../escape.txt\n+x\n*** End Patch")
    assert outside.startswith("error: '../escape.txt' is outside the working directory")
    assert "c.txt" not in await shell("ls")


def test_an_unsandboxed_shell_needs_confirming() -> None:
    result = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                     "--shell", "--shell-image", "none")
    assert result.returncode == 2 and "add --shell-unsafe to confirm" in result.stderr
    ok = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                 "--shell", "--apply-patch", "--shell-network", "--shell-copy-env", "LANG")
    assert ok.returncode == 0, ok.stderr
    shell = yaml.safe_load(ok.stdout)["agent"]["shell"]
    assert (shell["enabled"], shell["apply_patch"], shell["network"], shell["copy_env"]) == (True, True, True,
                                                                                            ["LANG"])


async def test_a_worker_killed_mid_command_reruns_it_in_the_same_directory(
        temporal_client: Client, agent_spec: AgentSpec, agent_process, fake_model: FakeOpenAI):
    from tests.runtime_support import eventually

    spec = agent_spec.model_copy(update={"shell": ShellSettings(enabled=True)})
    fake_model.script(tool_result)
    fake_model.enqueue(FakeResponse.tool_calls([("shell", {"command": "echo run >> runs.txt; sleep 3; cat runs.txt"})]))
    first = agent_process(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    turn = asyncio.ensure_future(submit_turn(temporal_client, spec.ref, thread_id,
                                             Turn(turn_id=new_turn_id(), text="run it")))
    runs = working_dir_of(spec, thread_id) / "runs.txt"
    await eventually(runs.exists, 30, what="the command started")
    first.kill()
    agent_process(spec)
    reply = await asyncio.wait_for(turn, 90)
    assert reply.status == "completed"
    assert reply.text.startswith("exit code 0\n--- stdout ---\nrun\nrun\n")  # the retry saw the first attempt's file
    assert fake_model.count() == 2


def working_dir_of(spec: AgentSpec, thread_id: str):  # noqa: ANN201
    from threadline.activities.storage import RoomStorage

    return RoomStorage.for_spec(spec).root / thread_id.partition("/")[2] / "work"


def test_a_missing_sandbox_is_a_start_up_error_that_says_how_to_install_it(tmp_path) -> None:
    result = run_cli("process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "offline",
                     "--shell", env={"PATH": str(tmp_path)})  # a PATH without bwrap
    assert result.returncode == 2
    assert "--shell needs bubblewrap (bwrap) for its sandbox: install it (Debian/Ubuntu: apt-get install " \
           "bubblewrap)" in result.stderr
