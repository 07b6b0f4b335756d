"""The `threadline` CLI, end to end: real subprocesses against the session's Temporal dev server (and one test of
the embedded default on a port of its own), the fake model, and each test's own THREADLINE_HOME."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from threadline.activities.stream_log import StreamLog
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import connect
from threadline.cli.app import COMMANDS, build_app
from threadline.models.thread import AgentRef, ThreadItem
from typer.testing import CliRunner

from tests.cli_helpers import REPO, CliProcess, cli_env, command, run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.temporal_server import TemporalDevServer

OFFLINE_REPLY = re.compile(r'^\[offline model\] You said: "(.*)"\. Earlier messages from you in this thread: (\d+)\.$')


@pytest.fixture
def address(temporal_server: TemporalDevServer) -> str:
    return temporal_server.address


def agent_args(room: str, address: str, *extra: str, agent: str = "support") -> list[str]:
    return ["--room", room, "--agent-name", agent, "--temporal-address", address, *extra]


def thread_name(stderr: str) -> str:
    match = re.search(r"thread: (\S+) \(continue with --thread-id \1\)", stderr)
    assert match, f"no thread hint in stderr:\n{stderr}"
    return match.group(1)


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


# process run


def test_run_one_message_with_the_offline_model(address: str, room: str) -> None:
    result = run_cli("process", "run", *agent_args(room, address, "--model", "offline", "-m", "hello there"))
    assert result.returncode == 0, result.stderr
    match = OFFLINE_REPLY.match(result.stdout.strip())
    assert match and match.groups() == ("hello there", "0"), result.stdout
    assert_clean(result.stderr)
    items = ThreadStore.for_room(room).items(AgentRef(room=room, agent_name="support").thread_id(thread_name(result.stderr)))
    assert [i.type for i in items] == ["user", "assistant"]


def test_run_one_message_that_fails_exits_1(address: str, room: str, fake_model: FakeOpenAI) -> None:
    fake_model.enqueue(FakeResponse.error(400, message="the request was rejected by the fake"))
    result = run_cli("process", "run", *agent_args(room, address, "--model", "fake-model", "-m", "hi"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert "error: the turn failed:" in result.stderr and "rejected by the fake" in result.stderr
    assert_clean(result.stderr)


def test_run_threading_mode_none_continues_the_main_thread(address: str, room: str) -> None:
    args = agent_args(room, address, "--model", "offline", "--threading-mode", "none")
    first = run_cli("process", "run", *args, "-m", "one")
    second = run_cli("process", "run", *args, "-m", "two")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert thread_name(first.stderr) == thread_name(second.stderr) == "main"
    assert OFFLINE_REPLY.match(second.stdout.strip()).groups() == ("two", "1")


def test_run_interactive_chat_commands(address: str, room: str) -> None:
    script = "hello\n/new\nsecond thread\n/threads\n/use main\n/tool current_time\n"
    result = subprocess.run(
        command(["process", "run", *agent_args(room, address, "--model", "offline")]),
        input=script, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if "[offline model]" in line]
    assert len(replies) == 3 and "Earlier messages from you in this thread: 0" in replies[1], result.stdout
    assert "The tools answered:" in replies[2], result.stdout
    assert "new thread:" in result.stderr and "switched to thread main" in result.stderr
    assert "unknown command" not in result.stderr
    assert len(ThreadStore.for_room(room).threads()) == 3
    assert_clean(result.stderr)


# process join + process use


@pytest.fixture
def join(address: str):  # noqa: ANN201
    started: list[CliProcess] = []

    def start(room: str, *extra: str, agent: str = "support") -> CliProcess:
        process = CliProcess("process", "join", *agent_args(room, address, "--channel", "chat", *extra, agent=agent))
        started.append(process)
        process.wait_for_line("task queue", stream="stdout", timeout=30)
        return process

    yield start
    for process in started:
        process.kill()


def test_join_and_use_continue_one_thread(join, address: str, room: str) -> None:  # noqa: ANN001
    agent = join(room, "--model", "offline")
    status_line = agent.stdout[0]
    for part in ("agent support", f"room {room}", f"task queue threadline/{room}/support", "channels chat", address):
        assert part in status_line, status_line

    use = ["process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address]
    first = run_cli(*use, "-m", "first message")
    assert first.returncode == 0, first.stderr
    assert OFFLINE_REPLY.match(first.stdout.strip()).groups() == ("first message", "0")
    name = thread_name(first.stderr)

    second = run_cli(*use, "--thread-id", name, "-m", "second message")
    assert second.returncode == 0, second.stderr
    assert OFFLINE_REPLY.match(second.stdout.strip()).groups() == ("second message", "1")
    assert thread_name(second.stderr) == name

    agent.proc.send_signal(signal.SIGINT)
    assert agent.wait(30) == 0, agent.transcript()
    assert any("stopping" in line for line in agent.stderr)
    assert_clean("\n".join(agent.stderr))


def test_use_waits_durably_for_an_agent_that_is_not_running(join, address: str, room: str) -> None:  # noqa: ANN001
    use = CliProcess("process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address,
                     "-m", "are you there?")
    try:
        use.wait_for_line("queued durably", stream="stderr", timeout=30)
        assert use.proc.poll() is None
        join(room, "--model", "offline")
        assert use.wait(30) == 0, use.transcript()
    finally:
        use.kill()
    assert OFFLINE_REPLY.match(use.stdout[0]).groups() == ("are you there?", "0")


def test_use_no_wait_fails_fast_when_the_agent_is_not_running(address: str, room: str) -> None:
    result = run_cli("process", "use", "--room", room, "--agent-name", "nobody", "--temporal-address", address,
                     "--no-wait", "-m", "hi")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: agent nobody is not running in room {room} (no worker polls threadline/{room}/nobody); "
        f"start it with: threadline process join --room {room} --agent-name nobody --channel chat"
    ]


def test_sigterm_during_a_turn_then_restart_completes_the_turn_once(
    join, address: str, room: str, fake_model: FakeOpenAI  # noqa: ANN001
) -> None:
    release = threading.Event()
    fake_model.enqueue(FakeResponse.block(release, then=FakeResponse.text("the one and only answer"), timeout=60))
    agent = join(room, "--model", "fake-model")
    use = CliProcess("process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address,
                     "-m", "do the thing")
    try:
        fake_model.wait_for(lambda: fake_model.in_flight == 1, timeout=30)
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait_for_line("stopping", stream="stderr", timeout=10)
        release.set()
        assert agent.wait(30) == 0, agent.transcript()
        assert use.proc.poll() is None, use.transcript()  # the turn is not finished without a worker

        join(room, "--model", "fake-model")
        assert use.wait(60) == 0, use.transcript()
    finally:
        use.kill()
    assert use.stdout == ["the one and only answer"]
    assert fake_model.count() == 1
    thread_id = AgentRef(room=room, agent_name="support").thread_id(thread_name("\n".join(use.stderr)))
    items = ThreadStore.for_room(room).items(thread_id)
    assert [(i.type, i.text) for i in items] == [("user", "do the thing"), ("assistant", "the one and only answer")]


# process threads / messages / grep (read the store: no Temporal needed)


@pytest.fixture
def stored_threads(room: str) -> dict[str, str]:
    store = ThreadStore.for_room(room)
    support = AgentRef(room=room, agent_name="support")
    sales = AgentRef(room=room, agent_name="sales")
    ids = {"refund": support.thread_id("20261128-100000-aaaaaa"), "quote": sales.thread_id("20261128-110000-bbbbbb")}
    store.append(ids["refund"], [
        ThreadItem(seq=1, turn_id="t1", type="user", text="I want a refund for invoice 42", sender="ann"),
        ThreadItem(seq=2, turn_id="t1", type="assistant", text="Refund started for invoice 42.", sender="support"),
    ], room=room, agent="support")
    store.append(ids["quote"], [
        ThreadItem(seq=1, turn_id="t2", type="user", text="Price for 3 seats?", sender="bob"),
    ], room=room, agent="sales", channel="mail")
    return ids


def test_threads_output_json_and_text(room: str, stored_threads: dict[str, str]) -> None:
    result = run_cli("process", "threads", "--room", room, "-o", "json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(t["id"], t["agent"], t["name"], t["items"]) for t in listed] == [
        ("20261128-110000-bbbbbb", "sales", "Price for 3 seats?", 1),
        ("20261128-100000-aaaaaa", "support", "I want a refund for invoice 42", 2),
    ]
    assert listed[0]["thread_id"] == stored_threads["quote"] and listed[0]["channel"] == "mail"

    text = run_cli("process", "threads", "--room", room, "--agent-name", "support")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("20261128-100000-aaaaaa  idle") and lines[0].endswith("support  I want a refund for invoice 42")


def test_messages_and_grep_output_json_and_text(room: str, stored_threads: dict[str, str]) -> None:
    messages = run_cli("process", "messages", "--room", room, "--thread-id", "20261128-100000-aaaaaa", "-o", "json")
    assert messages.returncode == 0, messages.stderr
    assert [(i["seq"], i["type"], i["text"]) for i in json.loads(messages.stdout)] == [
        (1, "user", "I want a refund for invoice 42"), (2, "assistant", "Refund started for invoice 42."),
    ]
    text = run_cli("process", "messages", "--room", room, "--agent-name", "sales", "--thread-id", "20261128-110000-bbbbbb")
    assert text.stdout.strip().splitlines() == ["[1] user (bob): Price for 3 seats?"]

    grep = run_cli("process", "grep", "STARTED", "-i", "--room", room, "--thread-id", stored_threads["refund"])
    assert grep.returncode == 0, grep.stderr
    assert grep.stdout.strip().splitlines() == ["[2] assistant (support): Refund started for invoice 42."]
    grep_json = run_cli("process", "grep", r"invoice \d+", "--room", room,
                        "--thread-id", ".threads/support/20261128-100000-aaaaaa", "-o", "json")
    assert [i["seq"] for i in json.loads(grep_json.stdout)] == [1, 2]
    nothing = run_cli("process", "grep", "no such words", "--room", room, "--thread-id", "20261128-100000-aaaaaa")
    assert nothing.returncode == 1 and nothing.stdout.strip() == ""
    ThreadStore.for_room(room).append(stored_threads["refund"], [ThreadItem(
        seq=3, turn_id="t3", type="summary", text="Ann asked for a refund of invoice 42; it was started.",
        data={"first_seq": 1, "last_seq": 2},
    )], room=room, agent="support")
    compacted = run_cli("process", "messages", "--room", room, "--thread-id", "20261128-100000-aaaaaa")
    assert compacted.stdout.strip().splitlines()[-2:] == [
        "[3] summary (compaction): earlier messages summarised (items 1–2):",
        "Ann asked for a refund of invoice 42; it was started.",
    ]


# Errors: one red line, the right exit code, no traceback.

ERROR_CASES = {
    "unknown channel": (
        ["process", "join", "--room", "r", "--agent-name", "a", "--model", "offline", "--channel", "smoke-signal"],
        {}, 2, "error: unknown channel 'smoke-signal': use chat, mail:ADDRESS[?reply-all=true|false], queue:NAME "
               "or toolkit:NAME",
    ),
    "bad mail option": (
        ["process", "join", "--room", "r", "--agent-name", "a", "--model", "offline", "--channel", "mail:a@b.io?cc=1"],
        {}, 2, "error: channel 'mail:a@b.io?cc=1': the only mail option is ?reply-all=true or ?reply-all=false",
    ),
    "join without channel": (
        ["process", "join", "--room", "r", "--agent-name", "a", "--model", "offline"],
        {}, 2, "error: process join needs at least one --channel (for example --channel chat)",
    ),
    "missing room": (
        ["process", "run", "--agent-name", "a", "--model", "offline", "-m", "hi"],
        {}, 2, "error: --room is required: pass --room NAME or set THREADLINE_ROOM",
    ),
    "unreadable rules file": (
        ["process", "run", "--room", "r", "--agent-name", "a", "--model", "offline", "--rules-file", "/no/such/rules.txt"],
        {}, 2, "error: cannot read rules file /no/such/rules.txt: No such file or directory; check the --rules-file path",
    ),
    "invalid model base URL": (
        ["process", "run", "--room", "r", "--agent-name", "a", "--model", "llama3", "--model-base-url", "localhost:11434"],
        {}, 2, "error: --model-base-url 'localhost:11434' is not an http(s) URL; use for example http://localhost:11434/v1",
    ),
    "model without a key": (
        ["process", "run", "--room", "r", "--agent-name", "a", "--model", "gpt-4o-mini", "-m", "hi"],
        {"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}, 2,
        "error: model 'gpt-4o-mini' needs OPENAI_API_KEY (or --model-base-url for a local OpenAI-compatible server, "
        "or --model offline)",
    ),
    "unreachable Temporal": (
        ["process", "run", "--room", "r", "--agent-name", "a", "--model", "offline", "-m", "hi",
         "--temporal-address", "127.0.0.1:{closed_port}"],
        {}, 1, "error: cannot reach the Temporal server at 127.0.0.1:{closed_port} (connection refused): the "
               "address comes from --temporal-address (THREADLINE_TEMPORAL_ADDRESS); fix it, or leave it out to use "
               "the embedded server",
    ),
    "invalid regex": (
        ["process", "grep", "(unclosed", "--room", "r", "--thread-id", "x"],
        {}, 2, "error: invalid regular expression '(unclosed': missing ), unterminated subpattern at position 0",
    ),
    "messages of an unknown thread": (
        ["process", "messages", "--room", "r", "--thread-id", "20200101-000000-nosuch"],
        {}, 2, "error: no thread '20200101-000000-nosuch' in room r: nothing is stored in this room",
    ),
    "reasoning effort for a model without it": (
        ["process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--model", "gpt-4o",
         "--reasoning-effort", "high"],
        {"OPENAI_API_KEY": "k"}, 2, "error: --reasoning-effort high: model gpt-4o does not take a reasoning effort",
    ),
    "a compaction threshold past the window": (
        ["process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--context-window", "4000",
         "--compaction-threshold", "3900", "--max-output-tokens", "500"],
        {"OPENAI_API_KEY": "k"}, 2,
        "error: --compaction-threshold 3900 plus --max-output-tokens 500 does not fit the context window of "
        "gpt-4o-mini (4000 tokens)",
    ),
    "an approver that is a domain": (
        ["process", "spec", "--room", "r", "--agent-name", "a", "--channel", "chat", "--approver", "@example.com"],
        {"OPENAI_API_KEY": "k"}, 2, "error: --approver '@example.com': name an address, not a domain",
    ),
    "not an approval id": (
        ["process", "approve", "nonsense"], {}, 2, "error: 'nonsense' is not an approval id",
    ),
    "unknown option": (
        ["process", "threads", "--room", "r", "--colour"],
        {}, 2, "error: No such option: --colour",
    ),
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_user_errors_are_one_red_line_with_the_right_exit_code() -> None:
    port = str(closed_port())
    running = {
        name: subprocess.Popen(
            command([a.replace("{closed_port}", port) for a in args]), cwd=REPO, env=cli_env(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        for name, (args, env, _, _) in ERROR_CASES.items()
    }
    failures = []
    for name, proc in running.items():
        stdout, stderr = proc.communicate(timeout=60)
        _, _, code, message = ERROR_CASES[name]
        message = message.replace("{closed_port}", port)
        lines = stderr.strip().splitlines()
        if proc.returncode != code or len(lines) != 1 or not lines[0].startswith(message) or stdout:
            failures.append(f"{name}: exit {proc.returncode} (want {code})\nstdout: {stdout}\nstderr: {stderr}")
    assert not failures, "\n\n".join(failures)


def test_use_unknown_thread_id(address: str, room: str) -> None:
    result = run_cli("process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address,
                     "--thread-id", "20200101-000000-nosuch", "-m", "hello?")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no thread '20200101-000000-nosuch' for agent support in room {room} (workflow id "
        f"{room}/.threads/support/20200101-000000-nosuch); list threads with: threadline process threads "
        f"--room {room} --agent-name support"
    ]


def test_server_start_on_a_busy_port(address: str) -> None:
    port = address.rsplit(":", 1)[1]
    result = run_cli("server", "start", "--port", port, "--headless")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: something already listens on 127.0.0.1:{port} (the background server? see threadline server "
        "status; stop it with threadline server stop)"
    ]


def test_verbose_shows_the_traceback(address: str) -> None:
    result = run_cli("process", "run", "--room", "r", "--agent-name", "a", "--model", "offline", "-m", "hi", "-v",
                     "--temporal-address", f"127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: cannot reach")


def test_help_lists_env_vars_and_examples() -> None:
    result = CliRunner().invoke(build_app(), ["process", "join", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("THREADLINE_ROOM", "THREADLINE_MODEL", "THREADLINE_CHANNEL", "TEMPORAL_API_KEY", "Examples",
                 "--require-storage", "--threading-mode"):
        assert text in result.output, text


def test_top_level_help_lists_every_command_with_its_own_help_and_loads_none() -> None:
    """`threadline --help` is what a new user types first: it lists each top-level command with the help that
    command's own --help shows, and imports no command's module (0.3 s, not 0.8)."""
    env = {"COLUMNS": "300"}
    for listed in (run_cli("--help", env=env), run_cli("-v", "-h", "process", env=env)):
        assert listed.returncode == 0
        for name, listed_command in COMMANDS.items():
            assert re.search(rf"│ {re.escape(name)} +{re.escape(listed_command.help)} +│", listed.stdout), name
    for name, listed_command in COMMANDS.items():
        assert listed_command.help in " ".join(run_cli(name, "--help", env=env).stdout.split()), name
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from threadline.cli.app import run; run(['--help']); "
         "print(*sorted(m for m in sys.modules if m.startswith('threadline.')))"],
        cwd=REPO, env=cli_env(env), capture_output=True, text=True, timeout=60)
    assert loaded.stdout.splitlines()[-1].split() == ["threadline.cli", "threadline.cli.app", "threadline.cli.errors",
                                                      "threadline.cli.output"]


# The embedded default: no --temporal-address, a server started in the background and reused.


def free_port_pair() -> int:
    """A port whose +1000 neighbour (the UI) is free as well."""
    for _ in range(50):
        port = closed_port()
        if port + 1000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def command_lines() -> list[list[bytes]]:
    """Every running process's argv (a process that exits meanwhile is skipped)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            found.append(path.read_bytes().split(b"\0"))
    return found


def test_embedded_server_starts_in_background_and_is_reused(tmp_path: Path, room: str) -> None:
    port = free_port_pair()
    env = {"THREADLINE_TEMPORAL_PORT": str(port), "THREADLINE_HOME": str(tmp_path / "embedded-home")}
    args = ["process", "run", "--room", room, "--agent-name", "support", "--model", "offline"]
    try:
        first = run_cli(*args, "-m", "one", env=env, timeout=90)
        assert first.returncode == 0, first.stderr
        assert f"started the embedded Temporal server on 127.0.0.1:{port} in the background" in first.stderr
        assert f"Temporal UI: http://localhost:{port + 1000}/namespaces/default/workflows" in first.stderr
        assert (tmp_path / "embedded-home" / "temporal" / "temporal.db").exists()
        # Started as the embedded server is meant to run: workflow tasks dispatched without the dev default's wait,
        # short timers firing on time.
        servers = [cmd for cmd in command_lines() if b"start-dev" in cmd and str(port).encode() in cmd]
        assert len(servers) == 1, servers
        assert b"history.transferProcessorMaxPollRPS=1000" in servers[0], servers
        assert b'history.timerProcessorMaxTimeShift="10ms"' in servers[0], servers

        # The server outlived the first process; the second one reuses it and its threads.
        second = run_cli(*args, "--thread-id", thread_name(first.stderr), "-m", "two", env=env)
        assert second.returncode == 0, second.stderr
        assert "started the embedded" not in second.stderr
        assert OFFLINE_REPLY.match(second.stdout.strip()).groups() == ("two", "1")

        status = run_cli("server", "status", env=env)
        assert status.returncode == 0 and f"127.0.0.1:{port}: running" in status.stdout, status.stdout + status.stderr
    finally:
        stopped = run_cli("server", "stop", env=env)
    assert stopped.returncode == 0 and "stopped the Temporal server" in stopped.stdout, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the embedded server still listens on {port}")


# Temporal's own environment configuration (TEMPORAL_ADDRESS, profiles in temporal.toml).


def _reaches_session_server(result: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    try:
        assert result.returncode == 0, result.stderr
        assert "started the embedded" not in result.stderr, result.stderr
        assert OFFLINE_REPLY.match(result.stdout.strip()), result.stdout
    finally:
        if "started the embedded" in result.stderr:
            run_cli("server", "stop", env=env)


@pytest.mark.parametrize("how", ["TEMPORAL_ADDRESS", "profile"])
def test_temporal_environment_configuration_is_read(how: str, address: str, room: str, tmp_path: Path) -> None:
    env = {"THREADLINE_TEMPORAL_PORT": str(closed_port()), "TEMPORAL_CONFIG_FILE": str(tmp_path / "none.toml")}
    if how == "TEMPORAL_ADDRESS":
        env["TEMPORAL_ADDRESS"] = address
    else:
        (tmp_path / "temporal.toml").write_text(
            f'[profile.default]\naddress = "127.0.0.1:1"\n\n[profile.staging]\naddress = "{address}"\n'
            'namespace = "default"\n'
        )
        env.update(TEMPORAL_CONFIG_FILE=str(tmp_path / "temporal.toml"), TEMPORAL_PROFILE="staging")
    result = run_cli("process", "run", "--room", room, "--agent-name", "support", "--model", "offline", "-m", "hi",
                     env=env)
    _reaches_session_server(result, env)
    thread_id = AgentRef(room=room, agent_name="support").thread_id(thread_name(result.stderr))
    assert asyncio.run(_workflow_status(address, thread_id)) == "RUNNING"


async def _workflow_status(address: str, thread_id: str) -> str:
    client = await connect(address)
    return (await client.get_workflow_handle(thread_id).describe()).status.name


def test_threadline_settings_win_over_temporal_environment_configuration(address: str, room: str) -> None:
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:1", "THREADLINE_TEMPORAL_ADDRESS": address}
    result = run_cli("process", "run", "--room", room, "--agent-name", "support", "--model", "offline", "-m", "hi",
                     env=env)
    _reaches_session_server(result, env)
    flagged = run_cli("process", "run", "--room", room, "--agent-name", "support", "--model", "offline", "-m", "hi",
                      "--temporal-address", address, env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})
    _reaches_session_server(flagged, env)


def test_unreachable_address_from_temporal_environment_names_its_source(room: str) -> None:
    port = closed_port()
    result = run_cli("process", "run", "--room", room, "--agent-name", "support", "--model", "offline", "-m", "hi",
                     env={"TEMPORAL_ADDRESS": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert (f"error: cannot reach the Temporal server at 127.0.0.1:{port} (connection refused): the address comes "
            "from Temporal's environment configuration (TEMPORAL_ADDRESS or the TEMPORAL_PROFILE profile)"
            in result.stderr), result.stderr
    assert_clean(result.stderr)


def test_health_server_binds_loopback_unless_told(join, room: str) -> None:  # noqa: ANN001
    default = join(room, "--model", "offline", "--health-port", "0")
    assert default.wait_for_line("health checks: http://", stream="stderr").startswith(
        "health checks: http://127.0.0.1:")
    everywhere = join(f"{room}-b", "--model", "offline", "--health-port", "0", "--health-host", "0.0.0.0")
    assert everywhere.wait_for_line("health checks: http://", stream="stderr").startswith(
        "health checks: http://0.0.0.0:")


def test_second_signal_exits_at_once(join, room: str, fake_model: FakeOpenAI, address: str) -> None:  # noqa: ANN001
    release = threading.Event()
    fake_model.enqueue(FakeResponse.block(release, timeout=60))
    agent = join(room, "--model", "fake-model")
    use = CliProcess("process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address,
                     "-m", "slow one")
    try:
        fake_model.wait_for(lambda: fake_model.in_flight == 1, timeout=30)
        agent.proc.send_signal(signal.SIGTERM)
        agent.wait_for_line("stopping", stream="stderr", timeout=10)
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        # At once: well before the worker's 10 s grace period for the blocked model call would end.
        assert agent.wait(5) == 128 + signal.SIGTERM, agent.transcript()
        assert time.monotonic() - started < 5
        assert any("exiting now" in line for line in agent.stderr)
    finally:
        release.set()
        use.kill()


def test_use_streams_the_reply_as_it_is_written(join, address: str, room: str, fake_model: FakeOpenAI) -> None:  # noqa: ANN001
    words = " ".join(f"word{n}" for n in range(40))
    fake_model.enqueue(FakeResponse.text(words, chunk_delay=0.02))
    join(room, "--model", "fake-model")
    result = run_cli("process", "use", "--room", room, "--agent-name", "support", "--temporal-address", address,
                     "--stream", "-m", "write forty words")
    assert result.returncode == 0, result.stderr
    assert result.stdout == words + "\n"
    thread_id = f"{room}/.threads/support/{thread_name(result.stderr)}"
    deltas = [e for e in StreamLog.for_room(room).events(thread_id) if e.kind == "delta"]
    assert len(deltas) >= 2, "the reply was published in one piece, not streamed"
    assert "".join(e.data["text"] for e in deltas) == words


def test_cli_defaults_are_the_agent_specs_defaults(monkeypatch) -> None:  # noqa: ANN001
    """One configuration schema: an agent built from the options as the CLI defaults them is the spec's default
    agent, field for field (a default changed on one side only fails here)."""
    from threadline.cli.agent_options import AgentOptions
    from threadline.cli.agent_spec import build_spec
    from threadline.cli.options import ConnectionOptions
    from threadline.models.spec import AgentSpec

    monkeypatch.delenv("THREADLINE_RULES", raising=False)
    built = build_spec(AgentOptions(room="r", agent_name="a", model="offline"),
                       ConnectionOptions(temporal_address="localhost:7233"))
    default = AgentSpec(room="r", agent_name="a", model="offline", temporal_address="localhost:7233",
                        namespace=built.namespace)
    assert built.model_dump() == default.model_dump()
    assert AgentOptions().model == AgentSpec.model_fields["model"].default
