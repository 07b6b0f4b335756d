"""The PostgreSQL thread store and stream log (`--thread-store-url postgresql://...`, activities/pg_store.py), against a
throwaway PostgreSQL server started for the session: the behaviours the SQLite store guarantees (run on both backends),
ordered write positions under concurrent writers, the CLI readers, and two agent processes with a THREADLINE_HOME
each (as on two machines) serving one thread in turn, the second seeing the first's history.

The server comes from Debian's `postgresql` package (`initdb`/`pg_ctl` in /usr/lib/postgresql/*/bin, or on PATH);
the tests skip when it is not installed. As root, the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from threadline.activities.stores import open_stream_log, open_thread_store
from threadline.activities.stream_log import StreamLog
from threadline.activities.thread_store import ThreadStore
from threadline.activities.thread_window import ThreadWindows
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import AgentSpec
from threadline.models.thread import ParsedItems, ThreadItem, Turn, Usage

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse
from tests.runtime_support import eventually
from tests.temporal_server import free_port


def _pg_bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    dirs = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "initdb").exists()]
    dirs.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return dirs[-1] if dirs else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server on a free port of 127.0.0.1 in a temporary directory, with a `threadline` database."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                    "apt-get install -y postgresql")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="threadline-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        try:
            shutil.chown(base, "postgres", "postgres")
        except (LookupError, OSError) as e:
            pytest.skip(f"running as root and no usable postgres user for the test server: {e}")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = free_port()

    def run(*args: str) -> None:
        result = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            detail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr or result.stdout}\n{detail}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-p {port} -h 127.0.0.1 -k {base} -F -c max_connections=200", "start")
    except Exception:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE threadline")
        yield f"postgresql://postgres:secret@127.0.0.1:{port}/threadline"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, room: str) -> tuple[ThreadStore, StreamLog]:
    """The room's store and stream log on each backend: the same tests hold for both."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return open_thread_store(room, url), open_stream_log(room, url)


def _user(seq: int, text: str, turn: str = "t1") -> ThreadItem:
    return ThreadItem(seq=seq, turn_id=turn, type="user", text=text)


def _assistant(seq: int, text: str, tokens: int, turn: str = "t1") -> ThreadItem:
    usage = Usage(prompt_tokens=tokens, completion_tokens=1, total_tokens=tokens + 1, model_calls=1)
    return ThreadItem(seq=seq, turn_id=turn, type="assistant", text=text, data={"usage": usage.model_dump()})


def test_append_is_idempotent_ordered_and_sliced(backend, room: str) -> None:
    store, _ = backend
    store.append("th", [_user(0, "  What is   the plan? "), _user(2, "second question", "t2")], room=room,
                 agent="support", status="running")
    store.append("th", [_assistant(1, "draft", 10)], room=room, agent="support")
    assert [i.text for i in store.items("th", before_seq=2)] == ["  What is   the plan? ", "draft"]
    store.append("th", [_assistant(1, "final answer", 10), _assistant(3, "later", 5, "t2")], room=room,
                 agent="support", status="idle")  # a retried write: seq 1 is replaced, not doubled
    assert [(i.seq, i.text) for i in store.items("th")] == [
        (0, "  What is   the plan? "), (1, "final answer"), (2, "second question"), (3, "later")]
    assert [i.seq for i in store.items("th", limit=2)] == [2, 3]
    assert [i.seq for i in store.items("th", before_seq=2)] == [0, 1]
    assert [i.seq for i in store.items("th", before_seq=3, limit=1)] == [2]
    assert store.items("other") == []
    info = store.thread("th")
    assert info is not None
    assert (info.name, info.status, info.items, info.agent, info.room) == ("What is the plan?", "idle", 4, "support",
                                                                           room)
    assert info.usage == Usage(prompt_tokens=15, completion_tokens=2, total_tokens=17, model_calls=2)
    assert store.thread("missing") is None
    assert (store.thread_agent("th"), store.thread_agent("missing")) == ("support", None)


def test_items_parsed_before_are_reused_and_never_stale() -> None:
    parsed = ParsedItems(size=3)
    bodies = [_user(n, f"question {n}").model_dump_json() for n in range(5)]
    first = parsed.parse(bodies[:2])
    again = parsed.parse(bodies[:2])
    assert again == first and all(a is b for a, b in zip(again, first))
    rewritten = _user(1, "question 1, edited").model_dump_json()
    assert [i.text for i in parsed.parse([bodies[0], rewritten])] == ["question 0", "question 1, edited"]
    assert [i.seq for i in parsed.parse(bodies)] == [0, 1, 2, 3, 4]  # past the size: older entries are dropped
    assert [i.text for i in parsed.parse(bodies[::-1])] == [f"question {n}" for n in range(4, -1, -1)]


def test_thread_listing_status_names_and_archive(backend, room: str) -> None:
    store, _ = backend
    store.ensure_thread("a", room=room, agent="support", channel="queue", name="Job 1")
    store.ensure_thread("a", room=room, agent="support", name="ignored")  # exists: unchanged
    store.append("b", [_user(0, "hi from b")], room=room, agent="other")
    store.ensure_thread("c", room=room, agent="support")
    store.append("c", [_user(0, "names c")], room=room, agent="support")  # an unnamed thread is named by its first
    assert [t.thread_id for t in store.threads()] == ["c", "b", "a"]
    assert [t.thread_id for t in store.threads(agent="support")] == ["c", "a"]
    assert [t.thread_id for t in store.threads(limit=1, offset=1)] == ["b"]
    a = store.thread("a")
    assert a is not None and (a.name, a.channel, a.items, a.usage) == ("Job 1", "queue", 0, Usage())
    assert store.thread("c").name == "names c"
    store.append("a", [], room=room, agent="support", status="failed")
    store.rename("b", "Renamed")
    assert store.thread("a").status == "failed" and store.thread("b").name == "Renamed"
    assert store.archive("b") is True and store.archive("nope") is False
    assert [t.thread_id for t in store.threads(archived=False)] == ["a", "c"]
    assert [t.thread_id for t in store.threads(archived=True)] == ["b"] and store.thread("b").archived
    assert store.archive("b", archived=False) and not store.thread("b").archived


def test_changes_follow_writes_and_rewrites(backend, room: str) -> None:
    store, _ = backend
    assert store.position("th") == (0, 0.0) and store.changes("th") == []
    store.append("th", [_user(0, "q"), _assistant(1, "partial", 3)], room=room, agent="support")
    first = store.changes("th")
    assert [i.seq for _, i in first] == [0, 1]
    position, newest = store.position("th")
    assert position == first[-1][0] and newest == max(i.created_at for _, i in first) > 0
    store.append("th", [_assistant(1, "complete", 3)], room=room, agent="support")  # a rewrite moves it on
    later = store.changes("th", after=position)
    assert [(i.seq, i.text) for _, i in later] == [(1, "complete")] and later[0][0] > position
    assert store.position("th")[0] == later[0][0]
    assert store.changes("th", after=later[0][0]) == []


def test_a_kept_thread_window_reads_what_the_store_holds(backend, room: str) -> None:
    """The model activity's window (activities/thread_window.py) against a full read after every write: appends,
    retried rewrites, a rewrite older than the window, seqs left out and written later, an answer written beyond the
    next call's seq, by this worker or another (a second set of windows on the same store)."""
    store, _ = backend
    size = 5
    windows, other_worker = ThreadWindows(store, size), ThreadWindows(store, size)
    rng = random.Random(7)
    store.append("th", [_user(2, "written first")], room=room, agent="support")
    assert [i.seq for i in windows.read("th", before_seq=3)] == [2]
    store.append("th", [_user(1, "written second")], room=room, agent="support")
    assert [i.seq for i in windows.read("th", before_seq=3)] == [1, 2]
    written = {1: "written second", 2: "written first"}
    next_seq = 3
    for step in range(300):
        move = rng.random()
        if move < 0.5 or not written:
            seqs = [next_seq] if rng.random() < 0.8 else [next_seq + 1]  # now and then a seq is left out
            next_seq = seqs[-1] + 1
        elif move < 0.8:
            seqs = [rng.choice(sorted(written)[-3:])]  # a retried write of a recent item
        else:
            seqs = [rng.randint(1, next_seq)]  # anything: an old item, a gap filled, the next seq
            next_seq = max(next_seq, seqs[0] + 1)
        for seq in seqs:
            written[seq] = f"step {step}"
        store.append("th", [_user(seq, written[seq]) for seq in seqs], room=room, agent="support")
        before_seq = next_seq - rng.choice([0, 0, 0, 1, 2])
        expected = store.items("th", before_seq=before_seq, limit=size)
        for reader in (windows, other_worker) if step % 3 else (windows,):
            assert [(i.seq, i.text) for i in reader.read("th", before_seq=before_seq)] == \
                [(i.seq, i.text) for i in expected], f"step {step}"
    assert windows.read("missing", before_seq=10) == []


def test_stream_events_after_id_by_turn_and_prune(backend, room: str) -> None:
    _, log = backend
    log.publish("th", "t1", 1, "delta", {"text": "Hel"})
    log.publish("th", "t1", 1, "delta", {"text": "lo"})
    log.publish("th", "t2", 1, "tool_started", {"name": "x"})
    log.publish("elsewhere", "t9", 1, "retry", {"step": 0})
    events = log.events("th")
    assert [(e.turn_id, e.kind, e.data) for e in events] == [
        ("t1", "delta", {"text": "Hel"}), ("t1", "delta", {"text": "lo"}), ("t2", "tool_started", {"name": "x"})]
    assert events[0].id < events[1].id < events[2].id
    assert [e.data for e in log.events("th", after_id=events[0].id)] == [{"text": "lo"}, {"name": "x"}]
    assert [e.kind for e in log.events("th", turn_id="t2")] == ["tool_started"]
    assert log.last_id_until("th", events[1].created_at) == events[1].id
    assert log.last_id_until("th", 0.0) == 0
    log.prune(older_than=3600)
    assert len(log.events("th")) == 3
    log.prune(older_than=-60)
    assert log.events("th") == [] and log.events("elsewhere") == []


def test_rooms_are_apart_in_one_database(postgres_url: str, room: str) -> None:
    other = f"{room}-b"
    open_thread_store(room, postgres_url).append("th", [_user(0, "room a")], room=room, agent="support")
    open_thread_store(other, postgres_url).append("th", [_user(0, "room b"), _user(1, "more")], room=other,
                                                  agent="support")
    open_stream_log(other, postgres_url).publish("th", "t1", 1, "delta", {"text": "b"})
    assert [i.text for i in open_thread_store(room, postgres_url).items("th")] == ["room a"]
    assert [t.items for t in open_thread_store(other, postgres_url).threads()] == [2]
    assert open_stream_log(room, postgres_url).events("th") == []
    assert open_thread_store(room, postgres_url) is open_thread_store(room, f" {postgres_url} ")  # reused


def test_concurrent_writers_never_hide_a_write_from_a_follower(postgres_url: str, room: str) -> None:
    """Positions become visible in order: a follower polling `changes(after=...)` while two processes write
    misses nothing (the writers of a thread are serialised, so write order is commit order)."""
    from threadline.activities.pg_store import PgThreadStore

    writers = [PgThreadStore(postgres_url, room) for _ in range(2)]
    reader = open_thread_store(room, postgres_url)
    done = threading.Event()
    seen: dict[int, int] = {}

    def write(n: int) -> None:
        for k in range(40):
            writers[n].append("th", [_user(n * 1000 + k, f"{n}-{k}")], room=room, agent="support")

    def follow() -> None:
        after = 0
        while True:
            finished = done.is_set()
            for position, item in reader.changes("th", after=after):
                seen[item.seq] = position
                after = position
            if finished:
                return

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    follower = threading.Thread(target=follow)
    follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join(30)
    assert len(seen) == 80 and len(set(seen.values())) == 80


def test_cli_readers_take_the_thread_store_url(postgres_url: str, room: str) -> None:
    store = open_thread_store(room, postgres_url)
    thread_id = f"{room}/support/{uuid.uuid4().hex[:6]}"
    store.append(thread_id, [_user(0, "where is my parcel"), _assistant(1, "on its way", 4)], room=room,
                 agent="support")
    listed = run_cli("process", "threads", "--room", room, "-o", "json",
                     env={"THREADLINE_THREAD_STORE_URL": postgres_url})
    assert listed.returncode == 0, listed.stderr
    assert thread_id in listed.stdout and "where is my parcel" in listed.stdout
    shown = run_cli("process", "messages", "--room", room, "--thread-id", thread_id, "--thread-store-url", postgres_url)
    assert shown.returncode == 0 and "on its way" in shown.stdout, shown.stderr
    found = run_cli("process", "grep", "parcel", "--room", room, "--thread-id", thread_id,
                    "--thread-store-url", postgres_url)
    assert found.returncode == 0 and "where is my parcel" in found.stdout, found.stderr
    wrong = run_cli("process", "threads", "--room", room, "--thread-store-url", "mysql://u:hunter2@h/db")
    assert wrong.returncode == 2 and "postgresql://" in wrong.stderr and "hunter2" not in wrong.stderr
    down = run_cli("process", "threads", "--room", room,
                   "--thread-store-url", f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/threadline")
    assert down.returncode == 1 and "thread store" in down.stderr and "hunter2" not in down.stderr


async def test_two_agent_processes_on_two_machines_share_a_thread(
    postgres_url: str, temporal_client: Client, agent_spec: AgentSpec, agent_process: Callable,
    fake_model: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = agent_spec.model_copy(update={"thread_store_url": postgres_url})
    thread_id = spec.ref.thread_id(new_thread_name())

    monkeypatch.setenv("THREADLINE_HOME", str(tmp_path / "machine-a"))
    first = agent_process(spec)
    fake_model.enqueue(FakeResponse.text("Noted: your order number is 4711."))
    reply = await submit_turn(temporal_client, spec.ref, thread_id,
                              Turn(turn_id=new_turn_id(), text="my order number is 4711"))
    assert reply.status == "completed"
    first.terminate()

    monkeypatch.setenv("THREADLINE_HOME", str(tmp_path / "machine-b"))
    agent_process(spec)
    fake_model.enqueue(FakeResponse.text("It is 4711."))
    reply = await submit_turn(temporal_client, spec.ref, thread_id,
                              Turn(turn_id=new_turn_id(), text="what was my order number?"))
    assert reply.status == "completed" and reply.text == "It is 4711."
    prompt = fake_model.requests[-1].messages
    assert [m["content"] for m in prompt if m["role"] in ("user", "assistant")][-3:] == [
        "my order number is 4711", "Noted: your order number is 4711.", "what was my order number?"]
    info = open_thread_store(spec.room, postgres_url).thread(thread_id)
    assert info is not None and info.items == 4 and info.name == "my order number is 4711"
    for machine in ("machine-a", "machine-b"):
        assert not (tmp_path / machine / "rooms" / spec.room / "threads.sqlite3").exists()


def test_a_service_spec_keeps_the_url_as_a_secret(room: str, tmp_path: Path) -> None:
    """`process spec --thread-store-url`: the URL (with its password) is a secret reference, not spec text; `join
    --spec` reads it back from the environment."""
    import yaml
    from threadline.cli.spec import from_service_spec, load_service_spec

    url = "postgresql://threadline:pa55word@db.internal:5432/threadline"
    result = run_cli("process", "spec", "--room", room, "--agent-name", "support", "--model", "offline",
                     "--channel", "chat", "--thread-store-url", url)
    assert result.returncode == 0, result.stderr
    assert "pa55word" not in result.stdout
    data = yaml.safe_load(result.stdout)
    assert data["agent"]["thread_store_url"] is None
    ref = next(e for e in data["env"] if e["name"] == "THREADLINE_THREAD_STORE_URL")
    assert ref["key"] == "thread-store-url" and not ref["optional"]
    path = tmp_path / "spec.yaml"
    path.write_text(result.stdout)
    agent, _, _ = from_service_spec(load_service_spec(path), {"THREADLINE_THREAD_STORE_URL": url})
    assert agent.thread_store_url == url


def test_the_chat_feed_reads_either_backend(backend, room: str) -> None:
    """channels/chat_feed.py's cursors (stream event id, item write position) over both backends."""
    from threadline.channels.chat_feed import Cursor, current_cursor, read_after

    store, log = backend
    store.append("th", [_user(0, "hi")], room=room, agent="support")
    log.publish("th", "t1", 1, "delta", {"text": "Hel"})
    log.publish("th", "t1", 1, "delta", {"text": "lo"})
    store.append("th", [_assistant(1, "Hello", 2)], room=room, agent="support")
    events = read_after(store, log, "th", Cursor())
    assert [e.event for e in events] == ["turn", "item", "delta", "delta", "item", "turn"]
    end = events[-1].cursor
    assert end == current_cursor(store, log, "th") and read_after(store, log, "th", end) == []
    store.append("th", [_user(2, "again", "t2")], room=room, agent="support")
    assert [e.event for e in read_after(store, log, "th", end)] == ["turn", "item"]


@pytest.fixture(params=["sqlite", "postgres"])
def mail_registry(request: pytest.FixtureRequest):  # noqa: ANN201
    from threadline.channels.mail.registry import open_mail_store

    return open_mail_store(request.getfixturevalue("postgres_url") if request.param == "postgres" else None)


def test_the_mail_registry_behaves_alike_on_both_backends(mail_registry, room: str) -> None:
    from threadline.channels.mail.addresses import MailboxExists, MailboxNotFound

    address = f"desk-{uuid.uuid4().hex[:8]}@example.com"
    box = mail_registry.create_mailbox(address.upper(), room)
    assert (box.address, box.room, box.queue) == (address, room, address.replace("@", "_at_"))
    with pytest.raises(MailboxExists, match=f"already registered \\(room {room}"):
        mail_registry.create_mailbox(address, room)
    assert [b.address for b in mail_registry.mailboxes(room)] == [address]
    found = mail_registry.mailbox(address)
    assert found is not None and (found.address, found.room, found.queue) == (address, room, box.queue)

    key = f"mail-{uuid.uuid4().hex[:8]}"
    assert mail_registry.inbound_status(key) is None
    mail_registry.record_inbound(key, address, "<m1@x>", "alice@example.com", "Order 42", "queued", None, "a.eml")
    mail_registry.record_inbound(key, address, "<m1@x>", "alice@example.com", "Order 42", "ignored", "bounce")
    assert mail_registry.inbound_status(key) == "ignored"
    assert [(i["status"], i["reason"]) for i in mail_registry.inbound(address)] == [("ignored", "bounce")]

    thread_id = f"{room}/.threads/desk/{uuid.uuid4().hex[:6]}"
    mail_registry.remember(room, "<m1@x>", thread_id, "in")
    mail_registry.remember(room, "<m1@x>", "someone else's", "in")
    assert mail_registry.thread_of(room, ["<unknown@x>", "<m1@x>"]) == thread_id
    assert mail_registry.thread_of("other-room", ["<m1@x>"]) is None

    mail_registry.add_participants(room, thread_id, ["Alice@Example.com", " ", "bob@example.com"])
    assert mail_registry.is_participant(room, thread_id, "alice@example.com")
    assert not mail_registry.is_participant(room, thread_id, "mallory@evil.example")
    assert not mail_registry.was_sent("<r1@x>")
    mail_registry.mark_sent("<r1@x>", thread_id, ["carol@example.com"])
    mail_registry.mark_sent("<r1@x>", thread_id, ["carol@example.com"])
    assert mail_registry.was_sent("<r1@x>") and mail_registry.is_participant(room, thread_id, "carol@example.com")

    mail_registry.delete_mailbox(address)
    with pytest.raises(MailboxNotFound):
        mail_registry.delete_mailbox(address)
    assert mail_registry.mailbox(address) is None


async def test_a_mailbox_in_the_shared_registry_is_answered_from_another_machine(
    postgres_url: str, temporal_server, agent_spec: AgentSpec, fake_model: FakeOpenAI, tmp_path: Path,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registered from one machine with `--thread-store-url`, answered by a mail agent on another that has no
    mail.sqlite3 of its own: the registry, the Message-ID index and the sent record are in PostgreSQL."""
    from tests.mail_support import Sink, mail_agent, mail_spec, new_mail, send

    address = f"parcels-{uuid.uuid4().hex[:8]}@example.com"
    created = run_cli("mailbox", "create", "--address", address, "--room", agent_spec.room,
                      "--thread-store-url", postgres_url, env={"THREADLINE_HOME": str(tmp_path / "machine-a")})
    assert created.returncode == 0, created.stderr
    listed = run_cli("mailbox", "list", "-o", "json", env={"THREADLINE_HOME": str(tmp_path / "machine-c"),
                                                            "THREADLINE_THREAD_STORE_URL": postgres_url})
    assert address in listed.stdout, listed.stderr
    assert address not in run_cli("mailbox", "list", "-o", "json",
                                  env={"THREADLINE_HOME": str(tmp_path / "machine-c")}).stdout

    monkeypatch.setenv("THREADLINE_HOME", str(tmp_path / "machine-b"))
    sink = Sink()
    sink.controller.start()
    try:
        spec = mail_spec(agent_spec, sink).model_copy(update={"thread_store_url": postgres_url})
        fake_model.enqueue(FakeResponse.text("Your parcel ships today."))
        async with mail_agent(temporal_server, spec, address) as port:
            question = new_mail("Where is my parcel?", "Parcel", to=address)
            assert await send(port, question) == 250
            await eventually(lambda: sink.messages, 60, what="the reply")
        reply = sink.messages[0]
        assert reply["In-Reply-To"] == question["Message-ID"]
        assert "ships today" in reply.get_body(("plain",)).get_content()
        assert open_mail_store_for(postgres_url).was_sent(reply["Message-ID"])
        assert not (tmp_path / "machine-b" / "mail.sqlite3").exists()
    finally:
        sink.controller.stop()


def open_mail_store_for(url: str):  # noqa: ANN201
    from threadline.channels.mail.registry import open_mail_store

    return open_mail_store(url)


def test_changed_threads_names_only_the_threads_written_since(backend, room: str) -> None:
    """What the chat feed's one poller asks each tick, on each backend."""
    store, log = backend
    quiet, busy = f"{room}/.threads/a/quiet", f"{room}/.threads/a/busy"
    store.append(quiet, [_user(0, "hello")], room=room, agent="a")
    log.publish(quiet, "t1", 1, "delta", {"text": "hi"})
    items_mark, streamed_mark = store.changed_threads(None)[0], log.changed_threads(None)[0]
    assert store.changed_threads(items_mark) == (items_mark, set())
    store.append(busy, [_user(0, "news")], room=room, agent="a")
    log.publish(busy, "t1", 1, "delta", {"text": "n"})
    new_items_mark, written = store.changed_threads(items_mark)
    new_stream_mark, streamed = log.changed_threads(streamed_mark)
    assert written == {busy} and new_items_mark > items_mark
    assert streamed == {busy} and new_stream_mark > streamed_mark


def test_conversation_keys_and_item_types_behave_alike(backend, room: str) -> None:
    store, _ = backend
    assert store.conversation("k1") is None
    store.remember_conversation("k1", "thread-a")
    assert store.conversation("k1") == ("thread-a", True)
    store.remember_conversation("k2", "thread-a")  # the thread went on: k1 is no longer its newest key
    assert (store.conversation("k1"), store.conversation("k2")) == (("thread-a", False), ("thread-a", True))
    store.remember_conversation("k1", "thread-b")  # the same history answered again, in another thread
    assert (store.conversation("k1"), store.conversation("k2")) == (("thread-b", True), ("thread-a", True))
    store.append("th", [_user(1, "hi"), ThreadItem(seq=2, turn_id="t1", type="summary", text="s1"),
                        _user(3, "again"), ThreadItem(seq=4, turn_id="t1", type="summary", text="s2")],
                 room=room, agent="support")
    assert [i.text for i in store.items("th", item_type="summary")] == ["s1", "s2"]
    assert [i.text for i in store.items("th", before_seq=4, limit=1, item_type="summary")] == ["s1"]


def test_usage_rows_behave_alike(backend, room: str) -> None:
    store, _ = backend
    answer = _assistant(2, "a", 10)
    answer.data["model"] = "gpt-4o-mini"
    store.append("th", [_user(1, "q"), answer], room=room, agent="support", channel="mail:x@example.com")
    store.append("other", [_assistant(1, "b", 5)], room=room, agent="sales")
    rows = store.usage_rows(agent="support")
    assert [(r.thread_id, r.agent, r.channel, r.model, r.usage.prompt_tokens) for r in rows] == [
        ("th", "support", "mail:x@example.com", "gpt-4o-mini", 10)]
    assert len(store.usage_rows()) == 2 and store.usage_rows(since=rows[0].at + 3600) == []
