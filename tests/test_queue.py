"""The queue channel end to end: real Temporal dev server, fake model, in-process and killable consumers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import thread_snapshot
from threadline.channels.queue import QueueChannel
from threadline.channels.queue_jobs import (
    JobNotFound,
    expand_path,
    job_status,
    list_jobs,
    queue_has_consumers,
    send_job,
    wait_for_job,
)
from threadline.cli.app import build_app
from threadline.models.jobs import JobPayloadError, JobStatus
from threadline.models.limits import MAX_PAYLOAD_BYTES, ErrorType
from threadline.models.spec import AgentSpec
from threadline.workflows.search_attributes import (
    AGENT_ATTRIBUTE,
    JOB_STATUS_ATTRIBUTE,
    QUEUE_ATTRIBUTE,
    ROOM_ATTRIBUTE,
)
from typer.testing import CliRunner

from tests.conftest import REPO
from tests.fake_openai import FakeOpenAI, FakeRequest, FakeResponse
from tests.runtime_support import eventually, record_history

QUEUE = "jobs"


@pytest.fixture
def consumer(agent_worker) -> Callable[..., asyncio.Task[None]]:  # noqa: ANN001
    """Starts in-process agents consuming queues, each with a client of its own as separate processes would."""

    async def start(spec: AgentSpec, *queues: str) -> asyncio.Task[None]:
        return await agent_worker(spec, [QueueChannel(q) for q in queues or (QUEUE,)], own_client=True)

    return start


async def finished(client: Client, room: str, job_id: str, timeout: float = 30) -> JobStatus:
    return await asyncio.wait_for(wait_for_job(client, room, job_id), timeout)


def prompts(fake: FakeOpenAI) -> Counter[str]:
    return Counter(r.last_user_text for r in fake.requests)


async def test_job_sent_before_any_consumer_runs_once_one_starts(temporal_client, agent_spec, consumer, fake_model):
    accepted = await send_job(temporal_client, agent_spec.room, QUEUE, {"prompt": "summarise", "ticket": 42})
    assert accepted.created and accepted.job_id.startswith(f"{QUEUE}/")
    assert not await queue_has_consumers(temporal_client, agent_spec.room, QUEUE)
    queued = await job_status(temporal_client, agent_spec.room, accepted.job_id)
    assert queued.status == "queued" and queued.started_at is None
    assert fake_model.count() == 0

    await consumer(agent_spec)
    job = await finished(temporal_client, agent_spec.room, accepted.job_id)
    assert job.status == "completed" and job.text == "echo: summarise" and job.error is None
    assert job.agent == "support" and job.metadata == {"ticket": 42}
    assert job.thread_id == agent_spec.ref.thread_id(accepted.thread)
    assert job.accepted_at <= job.started_at <= job.finished_at
    items = ThreadStore.for_room(agent_spec.room).items(job.thread_id)
    assert [(i.type, i.text) for i in items] == [("user", "summarise"), ("assistant", "echo: summarise")]
    assert items[0].sender == f"queue:{QUEUE}"

    description = await temporal_client.get_workflow_handle(accepted.workflow_id).describe()
    attributes = description.typed_search_attributes
    assert attributes.get(ROOM_ATTRIBUTE) == agent_spec.room
    assert attributes.get(QUEUE_ATTRIBUTE) == QUEUE
    assert attributes.get(AGENT_ATTRIBUTE) == "support"
    assert attributes.get(JOB_STATUS_ATTRIBUTE) == "completed"
    assert await job_status(temporal_client, agent_spec.room, accepted.job_id) == job


async def test_two_consumers_share_jobs_and_each_runs_once(temporal_client, room, consumer, fake_model):
    fake_model.script(lambda req: FakeResponse.delay(0.05))
    await consumer(AgentSpec(room=room, agent_name="worker-a", model="fake-model"))
    await consumer(AgentSpec(room=room, agent_name="worker-b", model="fake-model"))
    sent = await asyncio.gather(*[send_job(temporal_client, room, QUEUE, f"job number {n}") for n in range(40)])
    jobs = await asyncio.gather(*[finished(temporal_client, room, a.job_id, 60) for a in sent])
    assert all(job.status == "completed" for job in jobs)
    assert sorted(job.text for job in jobs) == sorted(f"echo: job number {n}" for n in range(40))
    assert prompts(fake_model) == Counter({f"job number {n}": 1 for n in range(40)})
    by_agent = Counter(job.agent for job in jobs)
    assert set(by_agent) == {"worker-a", "worker-b"}, by_agent


class ConsumerProcess:
    def __init__(self, address: str, spec: AgentSpec, queues: str) -> None:
        self.args = [sys.executable, "-m", "tests.queue_consumer_process", address, spec.model_dump_json(), queues]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ConsumerProcess:
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"consumer process did not start (exit code {self.proc.wait()})")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_consumer_killed_mid_job_the_job_completes_once(temporal_server, temporal_client, agent_spec, fake_model):
    """The new consumer fails the dead one's attempt of the job's turn, so the job goes on without waiting for that
    attempt's heartbeat timeout."""
    hold = threading.Event()

    def script(req: FakeRequest) -> FakeResponse | None:
        return FakeResponse.block(hold) if "slow job" in req.last_user_text and not hold.is_set() else None

    fake_model.script(script)
    processes: list[ConsumerProcess] = []
    try:
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, agent_spec, QUEUE).start))
        accepted = await send_job(temporal_client, agent_spec.room, QUEUE, "slow job")
        await fake_model.wait_for_async(lambda: fake_model.in_flight == 1, timeout=30)
        running = await job_status(temporal_client, agent_spec.room, accepted.job_id)
        assert running.status == "running" and running.agent == "support"

        dead_pid = processes[0].proc.pid if processes[0].proc else None
        processes[0].kill()
        hold.set()  # the held request's consumer is gone; later attempts get the default answer
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, agent_spec, QUEUE).start))
        job = await finished(temporal_client, agent_spec.room, accepted.job_id, 60)
        snapshot = await thread_snapshot(temporal_client, job.thread_id)
        history = await temporal_client.get_workflow_handle(accepted.workflow_id).fetch_history()
    finally:
        for process in processes:
            process.kill()
    assert job.status == "completed" and job.text == "echo: slow job"
    job_turn_attempts = [e.activity_task_started_event_attributes for e in history.events
                         if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert [a.attempt for a in job_turn_attempts][:1] == [2]
    failure = job_turn_attempts[0].last_failure
    assert failure.application_failure_info.type == ErrorType.WORKER_GONE
    assert f"({dead_pid}@" in failure.message
    items = ThreadStore.for_room(agent_spec.room).items(job.thread_id)
    assert [(i.type, i.text) for i in items] == [("user", "slow job"), ("assistant", "echo: slow job")]
    assert snapshot.turns_completed == 1


async def test_a_job_retried_on_another_agents_worker_stays_in_the_first_agents_thread(
    temporal_server, temporal_client, room, fake_model
):
    """worker-a takes a job and dies mid-turn; the job's retry lands on worker-b, which must not run it again in its
    own thread: the first claim holds, the turn completes once, in worker-a's thread, when worker-a is back."""
    hold = threading.Event()
    fake_model.script(
        lambda req: FakeResponse.block(hold) if "slow job" in req.last_user_text and not hold.is_set() else None)
    worker_a = AgentSpec(room=room, agent_name="worker-a", model="fake-model")
    worker_b = AgentSpec(room=room, agent_name="worker-b", model="fake-model")
    processes: list[ConsumerProcess] = []

    async def retried_on_b() -> bool:
        description = await temporal_client.get_workflow_handle(accepted.workflow_id).describe()
        return any(a.activity_type.name == "run_queue_turn" and a.attempt >= 2 and a.last_worker_identity
                   for a in description.raw_description.pending_activities)

    try:
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, worker_a, QUEUE).start))
        accepted = await send_job(temporal_client, room, QUEUE, "slow job")
        await fake_model.wait_for_async(lambda: fake_model.in_flight == 1, timeout=30)
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, worker_b, QUEUE).start))
        processes[0].kill()
        hold.set()
        await eventually(retried_on_b, 60, what="the job's turn retried on worker-b")
        processes.append(await asyncio.to_thread(ConsumerProcess(temporal_server.address, worker_a, QUEUE).start))
        job = await finished(temporal_client, room, accepted.job_id, 90)
        await record_history(temporal_client.get_workflow_handle(accepted.workflow_id), "queue_job_claimed_retry")
    finally:
        for process in processes:
            process.kill()
    assert job.status == "completed" and job.agent == "worker-a" and job.text == "echo: slow job"
    assert job.thread_id.startswith(f"{room}/.threads/worker-a/")
    store = ThreadStore.for_room(room)
    assert store.threads(agent="worker-b") == []
    assert [(i.type, i.text) for i in store.items(job.thread_id)] == [("user", "slow job"), ("assistant", "echo: slow job")]


async def test_path_continues_one_thread_across_jobs(temporal_client, agent_spec, consumer, fake_model):
    await consumer(agent_spec)
    jobs = []
    for n in range(3):
        accepted = await send_job(temporal_client, agent_spec.room, QUEUE, {"prompt": f"step {n}", "path": "weekly"})
        assert accepted.thread_id is None and accepted.thread == "weekly"
        jobs.append(await finished(temporal_client, agent_spec.room, accepted.job_id))
    assert {job.thread_id for job in jobs} == {agent_spec.ref.thread_id("weekly")}
    last = fake_model.requests[-1]
    assert [m["content"] for m in last.messages if m["role"] in ("user", "assistant")] == [
        "step 0", "echo: step 0", "step 1", "echo: step 1", "step 2",
    ]


async def test_path_date_tokens_expand_in_utc_at_acceptance(temporal_client, agent_spec, consumer):
    when = datetime(2026, 3, 7, 4, 5, 6, tzinfo=timezone.utc)
    assert expand_path("daily/{YYYY}-{MM}-{DD}/{HH}{mm}{SS}", when) == "daily/2026-03-07/040506"
    with pytest.raises(JobPayloadError, match="unknown token"):
        expand_path("daily/{yyyy}", when)

    await consumer(agent_spec)
    accepted = await send_job(temporal_client, agent_spec.room, QUEUE, {"prompt": "report", "path": "daily/{YYYY}-{MM}-{DD}"})
    expected = f"{agent_spec.room}/daily/{accepted.accepted_at:%Y-%m-%d}"
    assert accepted.thread_id == expected
    job = await finished(temporal_client, agent_spec.room, accepted.job_id)
    assert job.thread_id == expected and job.status == "completed"


async def test_idempotency_key_makes_one_job(temporal_client, agent_spec, consumer, fake_model):
    first = await send_job(temporal_client, agent_spec.room, QUEUE, "nightly export", idempotency_key="export-2026-03-07")
    again = await send_job(temporal_client, agent_spec.room, QUEUE, "nightly export", idempotency_key="export-2026-03-07")
    assert first.created and not again.created
    assert again.job_id == first.job_id == f"{QUEUE}/export-2026-03-07"
    assert again.accepted_at == first.accepted_at and again.thread == first.thread
    await consumer(agent_spec)
    job = await finished(temporal_client, agent_spec.room, first.job_id)
    after = await send_job(temporal_client, agent_spec.room, QUEUE, "nightly export", idempotency_key="export-2026-03-07")
    assert not after.created and job.status == "completed"
    assert prompts(fake_model)["nightly export"] == 1


async def test_failed_jobs_keep_their_error(temporal_client, agent_spec, consumer, fake_model):
    fake_model.script(lambda req: FakeResponse.error(400, message="bad request body") if "break" in req.last_user_text else None)
    await consumer(agent_spec)
    accepted = await send_job(temporal_client, agent_spec.room, QUEUE, "please break")
    job = await finished(temporal_client, agent_spec.room, accepted.job_id)
    assert job.status == "failed" and "HTTP 400" in job.error and "bad request body" in job.error
    assert job.thread_id and job.finished_at

    # A payload that cannot become a turn (sent past the sender's checks) is a failed job, not a lost one.
    bad = await send_job(temporal_client, agent_spec.room, QUEUE, {"content": [{"type": "image"}]}, validate=False)
    job = await finished(temporal_client, agent_spec.room, bad.job_id)
    assert job.status == "failed" and "cannot become a turn" in job.error and "content.0.type" in job.error

    with pytest.raises(JobNotFound):
        await job_status(temporal_client, agent_spec.room, f"{QUEUE}/no-such-job")

    async def two_failed():
        jobs = await list_jobs(temporal_client, agent_spec.room, QUEUE, "failed")
        return jobs if len(jobs) == 2 else None

    failed = await eventually(two_failed, 10, what="two failed jobs listed")
    assert {j.job_id for j in failed} == {accepted.job_id, bad.job_id}


async def test_reply_to_sends_the_result_to_another_queue(temporal_client, agent_spec, consumer):
    await consumer(agent_spec, QUEUE, "review")
    accepted = await send_job(temporal_client, agent_spec.room, QUEUE, {"prompt": "draft", "reply_to": "review"})
    job = await finished(temporal_client, agent_spec.room, accepted.job_id)
    assert job.status == "completed" and job.reply_job_id and job.reply_job_id.startswith("review/")
    reply = await finished(temporal_client, agent_spec.room, job.reply_job_id)
    assert reply.text == "echo: echo: draft"
    assert reply.metadata == {"source_job": accepted.job_id, "source_thread": job.thread_id}


# The CLI.


def cli(*args: str, input: str | None = None):
    argv = ["room", "queue", *args]
    return CliRunner().invoke(build_app(argv), argv, input=input)


async def test_cli_send_wait_prints_result_and_exit_code(temporal_server, temporal_client, agent_spec, consumer, fake_model):
    fake_model.script(lambda req: FakeResponse.error(400) if "break" in req.last_user_text else None)
    await consumer(agent_spec)
    where = ["--room", agent_spec.room, "--queue", QUEUE, "--temporal-address", temporal_server.address]

    ok = await asyncio.to_thread(cli, "send", *where, "--json", '{"prompt": "hello there"}', "--wait")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[0].startswith(f"job: {QUEUE}/")
    assert "status:   completed" in ok.stdout and ok.stdout.rstrip().endswith("result:\necho: hello there")

    failed = await asyncio.to_thread(cli, "send", *where, "--json", '"please break"', "--wait", "-o", "json")
    assert failed.exit_code == 1
    result = json.loads(failed.stdout)
    assert result["status"] == "failed" and "HTTP 400" in result["error"]
    assert "error: job" in failed.stderr

    sent = await asyncio.to_thread(cli, "send", *where, "-f", "-", "-o", "json", "--idempotency-key", "k1",
                                   input='{"prompt": "from stdin"}')
    assert sent.exit_code == 0, sent.output
    accepted = json.loads(sent.stdout)
    assert accepted["job_id"] == f"{QUEUE}/k1" and accepted["created"] is True
    await finished(temporal_client, agent_spec.room, accepted["job_id"])
    status = await asyncio.to_thread(cli, "status", accepted["job_id"], *where[:2], *where[4:], "-o", "json")
    assert status.exit_code == 0 and json.loads(status.stdout)["text"] == "echo: from stdin"
    missing = await asyncio.to_thread(cli, "status", f"{QUEUE}/nope", *where[:2], *where[4:])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: there is no job")

    # Visibility is eventually consistent: a finished job may be listed with the status it had a moment before.
    async def settled_list():
        listed = await asyncio.to_thread(cli, "list", *where, "-o", "json")
        assert listed.exit_code == 0, listed.output
        return sorted(j["status"] for j in json.loads(listed.stdout)) == ["completed", "completed", "failed"]

    await eventually(settled_list, 10, interval=0.2, what="three jobs listed with their final status")
    await record_history(temporal_client.get_workflow_handle(f"{agent_spec.room}/.queues/{accepted['job_id']}"),
                         "queue_job")


async def test_queue_named_like_an_address_works_everywhere(temporal_server, temporal_client, agent_spec, consumer,
                                                             fake_model):
    queue = "support-agent@mail.example.com"
    await consumer(agent_spec, queue)
    where = ["--room", agent_spec.room, "--queue", queue, "--temporal-address", temporal_server.address]
    sent = await asyncio.to_thread(cli, "send", *where, "--json", '{"prompt": "hi"}', "--wait", "-o", "json")
    assert sent.exit_code == 0, sent.output
    result = json.loads(sent.stdout)
    assert result["status"] == "completed" and result["text"] == "echo: hi"
    assert result["job_id"].startswith(f"{queue}/")
    status = await asyncio.to_thread(cli, "status", result["job_id"], *where[:2], *where[4:], "-o", "json")
    assert status.exit_code == 0 and json.loads(status.stdout)["status"] == "completed", status.output
    async def listed_ids():
        return [j["job_id"] for j in json.loads((await asyncio.to_thread(cli, "list", *where, "-o", "json")).stdout)]

    assert await eventually(listed_ids, 10, interval=0.2, what="the job listed") == [result["job_id"]]


async def test_a_job_payload_over_the_limit_is_refused_before_sending(temporal_server, temporal_client, room,
                                                                       tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"prompt": "x" * (3 << 20)}))
    where = ["--room", room, "--queue", QUEUE, "--temporal-address", temporal_server.address]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "threadline.cli.app", "room", "queue", "send", *where, "--file", str(big),
                         "--idempotency-key", "big"],
        cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: the job payload is {3 * 1024 * 1024 + 14:,} bytes, over the {MAX_PAYLOAD_BYTES:,} byte limit: put "
        'large content in room storage and send its path: {"content": [{"type": "file", "path": "PATH"}]} (the agent '
        "reads it with its storage tools), or split the job"
    ], result.stderr
    with pytest.raises(JobNotFound):
        await job_status(temporal_client, room, f"{QUEUE}/big")


@pytest.mark.parametrize("queue", ["a b", "tab\there", "bell\x07", "x" * 255, "-leading", "a/b"])
async def test_truly_bad_queue_names_are_refused(temporal_server, room, queue):
    where = ["--room", room, "--queue", queue, "--temporal-address", temporal_server.address]
    result = await asyncio.to_thread(cli, "send", *where, "--json", '"x"')
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: queue ") and "is not valid" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json", "{not json"], "is not valid JSON"),
        (["--json", ""], "is empty"),
        (["--json", "{}"], "payload is empty"),
        (["--json", '""'], "payload is empty"),
        (["--json", "null"], "payload is empty"),
        (["--json", '{"content": [{"type": "image"}]}'], "content.0.type"),
        (["--json", '{"prompt": "x", "path": "d/{yyyy}"}'], "unknown token {yyyy}"),
        (["--json", '{"prompt": "x", "reply_to": "no spaces"}'], "reply_to queue"),
        (["--file", "-"], "payload from stdin is empty"),
        (["--file", "/nonexistent/payload.json"], "cannot read"),
        ([], "give the payload"),
        (["--json", '"x"', "--file", "-"], "not both"),
        (["--json", '"x"', "--queue", ""], "--queue is empty"),
        (["--json", '"x"', "--queue", "bad/name"], "queue 'bad/name' is not valid"),
        (["--json", '"x"', "--room", ""], "--room is required"),
    ],
)
async def test_cli_bad_input_exits_2_and_sends_nothing(temporal_server, temporal_client, room, args, message):
    where = ["--room", room, "--queue", QUEUE, "--temporal-address", temporal_server.address, "--idempotency-key", "bad"]
    result = await asyncio.to_thread(cli, "send", *where, *args, input="")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    with pytest.raises(JobNotFound):
        await job_status(temporal_client, room, f"{QUEUE}/bad")


async def test_cli_bad_idempotency_key_and_status_exit_2(temporal_server, room):
    where = ["--room", room, "--temporal-address", temporal_server.address]
    result = await asyncio.to_thread(cli, "send", *where, "--queue", QUEUE, "--json", '"x"', "--idempotency-key", "a b")
    assert result.exit_code == 2 and "idempotency key" in result.stderr
    result = await asyncio.to_thread(cli, "list", *where, "--queue", QUEUE, "--status", "done")
    assert result.exit_code == 2 and "unknown --status" in result.stderr
    result = await asyncio.to_thread(cli, "status", "bare-id", *where)
    assert result.exit_code == 2 and "has no queue" in result.stderr
