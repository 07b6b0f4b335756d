"""The cost ledger: known token counts from the fake model give exact costs per thread and per day, from the thread
store (`room usage`, `process threads`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from temporalio.client import Client
from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn, thread_snapshot
from threadline.models.thread import Turn

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeOpenAI, FakeResponse


async def test_room_usage_prices_every_model_call(temporal_client: Client, agent_spec, agent_worker,
                                                  fake_model: FakeOpenAI, tmp_path):
    spec = agent_spec.model_copy(update={"model": "gpt-4o-mini"})  # priced at 0.15 / 0.60 $ per million tokens
    await agent_worker(spec)
    first, second = spec.ref.thread_id(new_thread_name()), spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(FakeResponse.tool_calls([("current_time", {})], usage=(1000, 100)),
                       FakeResponse.text("done", usage=(2000, 500)), FakeResponse.text("hi", usage=(10_000, 1000)))
    one = await submit_turn(temporal_client, spec.ref, first, Turn(turn_id=new_turn_id(), text="time?"))
    await submit_turn(temporal_client, spec.ref, second, Turn(turn_id=new_turn_id(), text="hello"))
    cost_first = (3000 * 0.15 + 600 * 0.60) / 1e6
    cost_second = (10_000 * 0.15 + 1000 * 0.60) / 1e6
    # Priced when the calls ran: the reply, the thread's snapshot and the store's thread row carry it.
    assert round(one.usage.cost_usd, 9) == round(cost_first, 9)
    assert round((await thread_snapshot(temporal_client, first)).usage.cost_usd, 9) == round(cost_first, 9)
    assert round(ThreadStore.for_room(spec.room).thread(second).usage.cost_usd, 9) == round(cost_second, 9)

    by_thread = run_cli("room", "usage", "--room", spec.room, "--by", "thread", "-o", "json")
    assert by_thread.returncode == 0, by_thread.stderr
    ledger = json.loads(by_thread.stdout)
    assert {e["thread"]: (e["model_calls"], e["prompt_tokens"], e["completion_tokens"], e["cost_usd"])
            for e in ledger["entries"]} == {first: (2, 3000, 600, round(cost_first, 6)),
                                            second: (1, 10_000, 1000, round(cost_second, 6))}
    assert ledger["total"]["cost_usd"] == round(cost_first + cost_second, 6)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    by_day = json.loads(run_cli("room", "usage", "--room", spec.room, "-o", "json").stdout)
    assert [(e["day"], e["cost_usd"]) for e in by_day["entries"]] == [(today, round(cost_first + cost_second, 6))]

    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o-mini: {input: 1.0, output: 2.0}\n")
    custom = json.loads(run_cli("room", "usage", "--room", spec.room, "--model-prices", str(prices), "-o",
                                "json").stdout)
    assert custom["total"]["cost_usd"] == round((13_000 * 1.0 + 1600 * 2.0) / 1e6, 6)

    listed = json.loads(run_cli("process", "threads", "--room", spec.room, "-o", "json").stdout)
    assert {t["thread_id"]: t["cost_usd"] for t in listed} == {first: round(cost_first, 6),
                                                               second: round(cost_second, 6)}
    table = run_cli("room", "usage", "--room", spec.room, "--by", "channel")
    assert "chat" in table.stdout and "total" in table.stdout and f"{cost_first + cost_second:.4f}" in table.stdout
    bad = run_cli("room", "usage", "--room", spec.room, "--since", "last week")
    assert bad.returncode == 2 and "--since 'last week'" in bad.stderr
