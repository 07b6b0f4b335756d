"""Room storage on S3-compatible object storage (`--storage-url s3://...`), against moto's server mode on 127.0.0.1:
storage tools in a turn, path escapes, large tool output, two agent processes (each with a THREADLINE_HOME of its
own, as on two machines) sharing the storage, and `--require-storage` with an unreachable endpoint."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from threadline.activities.storage import RoomStorage, StoragePathError, StorageUnavailable, s3_filesystem
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec
from threadline.models.thread import Turn

from tests.cli_helpers import REPO, run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.temporal_server import free_port

BUCKET = "threadline-tests"


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in a subprocess on a free port, with the test bucket; skips when moto cannot start."""
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        pytest.skip(f"moto[server] is not installed (pip install -e '.[test]'): {e}")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto's S3 server did not start on 127.0.0.1:{port}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        s3_filesystem(_s3_env(endpoint)).mkdir(BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "eu-west-1"}


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The S3 settings in this process's environment (agent subprocesses inherit them); the test's storage URL."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "THREADLINE_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in _s3_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def _objects(url: str) -> list[str]:
    """Every object under an s3:// URL, relative to it."""
    root = url.removeprefix("s3://").rstrip("/")
    fs = s3_filesystem(_s3_env(_endpoint_of_env()))
    return sorted(p[len(root) + 1:] for p in fs.find(root, withdirs=False))


def _endpoint_of_env() -> str:
    return os.environ["AWS_ENDPOINT_URL"]


def _s3_spec(spec: AgentSpec, url: str, **update: object) -> AgentSpec:
    return spec.model_copy(update={"storage": True, "require_storage": True, "storage_url": url, **update})


def _tool_messages(fake_model: FakeOpenAI) -> list[str]:
    return [m["content"] for m in fake_model.requests[-1].messages if m["role"] == "tool"]


def test_s3_backend_reads_writes_lists_and_refuses_escapes(s3: str, room: str, _model_and_home: Path) -> None:
    storage = RoomStorage.for_url(s3, room)
    assert storage.url == f"{s3}/{room}"
    storage.check_writable()
    assert storage.write("notes/plan.md", "step one") == 8
    storage.write("notes/data.bin", b"\x00\x01")
    storage.write(".mail/q/hidden.eml", "x")
    assert storage.read_text("notes/plan.md") == "step one"
    assert storage.read_bytes("notes/data.bin") == b"\x00\x01"
    assert storage.list() == ["notes/"]
    assert storage.list("notes") == ["notes/data.bin", "notes/plan.md"]
    assert storage.list("notes/plan.md") == ["notes/plan.md"]
    assert storage.list("missing") == []
    with pytest.raises(FileNotFoundError, match="no file at 'missing.txt'"):
        storage.read_text("missing.txt")
    for escape in ("../other-room/x.txt", "/etc/passwd", "notes/../../x", "..\\x", ""):
        with pytest.raises(StoragePathError):
            storage.write(escape, "nope")
        with pytest.raises(StoragePathError):
            storage.read_text(escape or " ")
    # Only the room's prefix was written, and nothing reached the local disk.
    assert _objects(s3) == [f"{room}/.mail/q/hidden.eml", f"{room}/notes/data.bin", f"{room}/notes/plan.md"]
    assert not (_model_and_home / "rooms").exists()


async def test_storage_tools_in_a_turn_use_s3(s3: str, temporal_client: Client, agent_spec: AgentSpec, agent_worker,
                                              fake_model: FakeOpenAI, _model_and_home: Path) -> None:
    spec = _s3_spec(agent_spec, s3)
    await agent_worker(spec)
    fake_model.enqueue(
        FakeResponse.tool_calls([("storage_write", {"path": "reports/q3.md", "content": "revenue up 12%"})]),
        FakeResponse.tool_calls([("storage_read", {"path": "reports/q3.md"})]),
        FakeResponse.tool_calls([("storage_list", {"path": "reports"}),
                                 ("storage_write", {"path": "../escape.md", "content": "x"}, "call_escape")]),
        FakeResponse.text("filed"),
    )
    thread_id = spec.ref.thread_id(new_thread_name())
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="file it"))
    assert reply.status == "completed" and reply.text == "filed"
    assert {t["function"]["name"] for t in fake_model.requests[0].tools} >= {"storage_write", "storage_read"}
    written, read, listed, escape = _tool_messages(fake_model)
    assert written == "wrote 14 bytes to reports/q3.md"
    assert read == "revenue up 12%"
    assert listed == '["reports/q3.md"]'
    assert escape == "error: storage path '../escape.md' must be relative to the room and must not contain '..'"
    assert _objects(s3) == [f"{spec.room}/reports/q3.md"]
    assert not (_model_and_home / "rooms" / spec.room / "storage").exists()


async def test_large_tool_output_is_spilled_to_s3(s3: str, temporal_client: Client, agent_spec: AgentSpec,
                                                  agent_worker, fake_model: FakeOpenAI) -> None:
    spec = agent_spec.model_copy(update={"tools": ["tests.tools_for_tests:big_output"], "storage_url": s3})
    await agent_worker(spec)
    fake_model.enqueue(FakeResponse.tool_calls([("big_output", {"size": 40_000})]), FakeResponse.text("got it"))
    thread_id = spec.ref.thread_id(new_thread_name())
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="dump"))
    assert reply.status == "completed"
    [preview] = _tool_messages(fake_model)
    path = preview.rsplit("saved to room storage at ", 1)[1].rstrip("]")
    assert _objects(s3) == [f"{spec.room}/{path}"]
    saved = RoomStorage.for_spec(spec).read_text(path)
    assert len(saved) == 40_000 and saved.startswith(preview[:1000])


async def test_two_agent_processes_share_s3_storage(s3: str, temporal_client: Client, agent_spec: AgentSpec,
                                                    agent_process, fake_model: FakeOpenAI, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Two "machines": each agent process has a THREADLINE_HOME of its own, so only S3 is shared.
    writer = _s3_spec(agent_spec, s3, agent_name="writer")
    reader = _s3_spec(agent_spec, s3, agent_name="reader")
    monkeypatch.setenv("THREADLINE_HOME", str(tmp_path / "machine-a"))
    agent_process(writer)
    monkeypatch.setenv("THREADLINE_HOME", str(tmp_path / "machine-b"))
    agent_process(reader)

    fake_model.enqueue(
        FakeResponse.tool_calls([("storage_write", {"path": "handoff/brief.txt", "content": "call Ada at 10"})]),
        FakeResponse.text("saved"),
    )
    first = await submit_turn(temporal_client, writer.ref, writer.ref.thread_id(new_thread_name()),
                              Turn(turn_id=new_turn_id(), text="save the brief"))
    assert first.status == "completed" and first.text == "saved"

    fake_model.enqueue(
        FakeResponse.tool_calls([("storage_list", {"path": "handoff"}),
                                 ("storage_read", {"path": "handoff/brief.txt"})]),
        FakeResponse.text("read it"),
    )
    second = await submit_turn(temporal_client, reader.ref, reader.ref.thread_id(new_thread_name()),
                               Turn(turn_id=new_turn_id(), text="what is the brief?"))
    assert second.status == "completed" and second.text == "read it"
    assert _tool_messages(fake_model) == ['["handoff/brief.txt"]', "call Ada at 10"]
    for machine in ("machine-a", "machine-b"):
        assert not (tmp_path / machine / "rooms" / agent_spec.room / "storage").exists()


def test_require_storage_fails_at_start_with_an_unreachable_endpoint(temporal_server, room: str) -> None:
    url = f"s3://{BUCKET}/nowhere"
    result = run_cli(
        "process", "run", "--room", room, "--agent-name", "support", "--model", "offline", "-m", "hi",
        "--require-storage", "--storage-url", url, "--temporal-address", temporal_server.address,
        env={**_s3_env(f"http://127.0.0.1:{free_port()}"), "THREADLINE_S3_ENDPOINT_URL": None}, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: room storage is not usable:") and f"{url}/{room}" in last, result.stderr
    assert "Could not connect to the endpoint URL" in last


def test_unusable_storage_urls_are_refused(room: str) -> None:
    with pytest.raises(StorageUnavailable, match=rf"room storage s3://{BUCKET}/x/{room} is not usable"):
        RoomStorage.for_url(f"s3://{BUCKET}/x", room, _s3_env(f"http://127.0.0.1:{free_port()}")).check_writable()
    result = run_cli("process", "run", "--room", room, "--agent-name", "a", "--model", "offline", "-m", "hi",
                     "--storage-url", "ftp://files/x")
    assert result.returncode == 2 and "--storage-url" in result.stderr and "s3://BUCKET" in result.stderr


def test_local_storage_urls_put_each_room_under_the_directory(tmp_path: Path, room: str) -> None:
    for url in (str(tmp_path / "shared"), f"file://{tmp_path / 'shared'}"):
        storage = RoomStorage.for_url(url, room)
        assert storage.resolve("a/b.txt") == tmp_path / "shared" / room / "a" / "b.txt"
    storage.write("a/b.txt", "hi")
    assert (tmp_path / "shared" / room / "a" / "b.txt").read_text() == "hi"
    assert RoomStorage.for_url(None, room).root == RoomStorage.for_room(room).root


async def test_mail_eml_and_attachments_go_to_s3(s3: str, temporal_server, temporal_client: Client,
                                                 agent_spec: AgentSpec, fake_model: FakeOpenAI,
                                                 _model_and_home: Path) -> None:
    from email.message import EmailMessage
    from email.utils import make_msgid

    from threadline.channels.mail.registry import MailStore

    from tests.mail_support import ADDRESS, ALICE, Sink, job_done, mail_agent, mail_spec, send

    MailStore.default().create_mailbox(ADDRESS, agent_spec.room)
    sink = Sink()
    sink.controller.start()
    try:
        fake_model.script(lambda request: FakeResponse.text("thanks"))
        spec = mail_spec(_s3_spec(agent_spec, s3), sink)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = ALICE, ADDRESS, "Notes attached"
        msg["Message-ID"] = make_msgid(domain="example.com")
        msg.set_content("see the notes")
        msg.add_attachment(b"the secret is 42", maintype="text", subtype="plain", filename="notes.txt")
        async with mail_agent(temporal_server, spec) as port:
            assert await send(port, msg) == 250
            job = await job_done(temporal_client, spec, msg["Message-ID"])
        assert job.status == "completed", job.error
    finally:
        sink.release()
        sink.controller.stop()
    objects = _objects(s3)
    [eml] = [o for o in objects if o.endswith(".eml")]
    [notes] = [o for o in objects if o.endswith("/notes.txt")]
    assert eml.startswith(f"{spec.room}/.mail/") and notes.startswith(f"{spec.room}/.threads/")
    storage = RoomStorage.for_spec(spec)
    assert storage.read_text(notes.partition("/")[2]) == "the secret is 42"
    assert not (_model_and_home / "rooms" / spec.room / "storage").exists()
