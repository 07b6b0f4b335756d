"""Builds the Temporal worker of one agent process: the thread workflow plus the agent's activities."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker
from threadline.activities.agent import AgentActivities
from threadline.activities.mcp_tools import load_mcp_tools
from threadline.activities.rules import AgentRules, load_skills, skill_tools
from threadline.activities.shell import shell_tools
from threadline.activities.storage import MountedStorage, RoomStorage
from threadline.activities.stores import RoomStreamLog, open_stream_log, open_thread_store
from threadline.activities.tools import Tool, build_toolbox
from threadline.activities.web import web_tools
from threadline.channels.approvals import report_waiting_approvals
from threadline.channels.attempts import recover_dead_workers
from threadline.channels.base import ChannelAdapter, ChannelContext, temporal_worker
from threadline.channels.delivery import register_search_attributes
from threadline.channels.mail.send_tool import send_email_tools
from threadline.channels.toolkit.calls import toolkit_tools
from threadline.models.spec import AgentSpec
from threadline.workflows.thread import ThreadWorkflow
from threadline.workflows.tool_call import ToolCallWorkflow

log = logging.getLogger("threadline.worker")

MAX_CACHED_THREADS = 200
"""Idle threads beyond this are evicted from worker memory and replayed from history when they get a turn."""

STREAM_PRUNE_INTERVAL = timedelta(hours=1)


async def prune_stream_log(stream: RoomStreamLog, stop: asyncio.Event) -> None:
    """The stream log serves followers of live turns: its events older than `KEEP_SECONDS` are deleted at start and
    every `STREAM_PRUNE_INTERVAL`, so the table stays bounded by a day of streaming (every replica prunes; deletes
    of the same rows are harmless)."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(stream.prune)
        except Exception as e:  # noqa: BLE001 - a failed prune is tried again at the next interval
            log.warning("could not prune the stream log: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STREAM_PRUNE_INTERVAL.total_seconds())


class RulesFileError(ValueError):
    """A rules file that cannot be read."""


def load_rules(spec: AgentSpec) -> list[str]:
    """`--rule` lines, then each rules file's non-empty lines (`#` starts a comment line)."""
    rules = list(spec.rules)
    for name in spec.rules_files:
        path = Path(name).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise RulesFileError(f"cannot read rules file {name}: {e.strerror or e}") from e
        rules += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return rules


def build_activities(
    spec: AgentSpec, env: Mapping[str, str] | None = None, extra_tools: Sequence[Tool] = ()
) -> AgentActivities:
    """`extra_tools`: tools found at start-up (the `--mcp` servers' tools, see `load_extra_tools`)."""
    env = dict(os.environ if env is None else env)
    storage = RoomStorage.for_spec(spec, env)
    if spec.require_storage:
        storage.check_writable()
    skills = load_skills(spec.skill_dirs)
    if spec.log_llm_requests:
        show_llm_log()
    return AgentActivities(
        spec,
        rules=AgentRules(spec, load_rules(spec), storage, skills),
        store=open_thread_store(spec.room, spec.thread_store_url),
        stream=open_stream_log(spec.room, spec.thread_store_url),
        storage=storage,
        toolbox=build_toolbox(
            storage=MountedStorage.for_spec(spec, storage) if spec.storage else None, tool_references=spec.tools,
            extra_tools=[*toolkit_tools(spec), *send_email_tools(spec, storage, env), *web_tools(spec.web, env),
                         *shell_tools(spec, storage, env), *skill_tools(skills), *extra_tools],
            time_tool=spec.time_tool, uuid_tool=spec.uuid_tool, read_only_storage=spec.read_only_storage,
        ),
        env=env,
    )


def show_llm_log() -> None:
    """`--log-llm-requests`: the model requests and answers go to stderr whatever the log level of the rest."""
    logger = logging.getLogger("threadline.llm")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


async def load_extra_tools(spec: AgentSpec, env: Mapping[str, str] | None = None) -> list[Tool]:
    """Tools that need I/O at start-up: the tools of the agent's `--mcp` servers."""
    if not spec.mcp.servers:
        return []
    return await load_mcp_tools(spec.mcp.servers, dict(os.environ if env is None else env), spec.mcp.optional)


def build_worker(client: Client, spec: AgentSpec, activities: AgentActivities) -> Worker:
    return temporal_worker(client, spec.ref.task_queue, [ThreadWorkflow, ToolCallWorkflow], activities.all(),
                           max_cached_workflows=MAX_CACHED_THREADS)


async def run_agent(
    client: Client,
    spec: AgentSpec,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    channels: Sequence[ChannelAdapter] = (),
) -> None:
    """Runs the agent's worker and its channel adapters until `stop` is set, then shuts down gracefully
    (in-flight activities finish or are handed back to Temporal)."""
    activities = build_activities(spec, extra_tools=await load_extra_tools(spec))
    if spec.mcp.serve_port is not None:
        from threadline.channels.mcp_serve import McpServeChannel

        channels = [*channels, McpServeChannel()]
    await register_search_attributes(client)
    context = ChannelContext(client=client, spec=spec)
    workers = [build_worker(client, spec, activities)]
    for channel in channels:
        workers += channel.workers(context)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(activities.close)  # after every worker has stopped
        for worker in workers:
            await stack.enter_async_context(worker)
        servers = [asyncio.create_task(channel.serve(context, stop)) for channel in channels]
        chores = [asyncio.create_task(prune_stream_log(activities.stream, stop)),
                  asyncio.create_task(recover_dead_workers(client))]
        if spec.metrics_port is not None:
            chores.append(asyncio.create_task(report_waiting_approvals(client, spec.room, spec.agent_name, stop)))
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *servers], return_when=asyncio.FIRST_COMPLETED)
        # A channel server that ends on its own has failed: stop everything and report it.
        stop.set()
        await asyncio.gather(*servers, *chores)
