"""What a channel adapter is to the agent process: extra Temporal workers and/or a server, run beside the agent's
own worker from start to graceful stop. Adapters parse input, derive the thread id and deliver turns through
`channels.delivery`; routing, retries and persistence stay in the runtime."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import temporalio
from temporalio.client import Client
from threadline.models.spec import AgentSpec

if TYPE_CHECKING:  # the worker half of the SDK is loaded by processes that run workers, not by `room queue send`
    from temporalio.worker import Worker

GRACEFUL_SHUTDOWN = timedelta(seconds=10)
"""How long a stopping worker lets in-flight activities finish before cancelling them (deployments give the process
longer than this plus a heartbeat timeout before killing it)."""


@functools.cache
def code_build_id() -> str:
    """The build id stamped on every workflow task the process's workers complete (the Temporal UI shows it, a reset
    by bad build picks by it): a hash of the SDK's version and the source of Threadline's loaded modules, so a new
    deployment of changed code gets a new id. Temporal's default hashes the bytecode of every loaded module, which
    cost 0.3-0.5 s of each start-up on 2 cores, on the path of kill -9 recovery."""
    digest = hashlib.sha256(f"temporalio {temporalio.__version__}".encode())
    for name in sorted(n for n in sys.modules if n.partition(".")[0] == "threadline"):
        if path := getattr(sys.modules[name], "__file__", None):
            digest.update(name.encode())
            with open(path, "rb") as source:
                digest.update(source.read())
    return f"threadline-{digest.hexdigest()[:32]}"


def temporal_worker(client: Client, task_queue: str, workflows: Sequence[type],
                    activities: Sequence[Callable[..., Any]] = (), max_cached_workflows: int = 1000) -> Worker:
    """Every worker of an agent process, built alike: the agent's own and each channel's.

    Workflow code runs without the SDK's sandbox. The sandbox passed Threadline's own modules through (re-importing
    them for every thread cost a third of the worker's CPU), so it no longer saw their calls (`datetime.now()` ran
    unguarded), yet it still ran a compiled snippet in its importer for each activation and for each payload of every
    workflow task: a quarter of the worker's CPU per turn under load. Determinism is checked in CI instead, where
    every recorded history replays in the full sandbox (tests/test_runtime_replay.py)."""
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker
    from threadline.channels.attempts import AttemptJournalInterceptor, attempt_journal

    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=list(activities),
        max_cached_workflows=max_cached_workflows,
        workflow_runner=UnsandboxedWorkflowRunner(),
        # A crashed worker's sticky queue is abandoned quickly so another worker replays its workflows.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        # Activities heartbeat every second; sending each one lets an interrupt reach a running model call or tool
        # within about a second (the default throttle, 80% of the heartbeat timeout, makes it up to 2.4 s).
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        interceptors=[AttemptJournalInterceptor(attempt_journal(client))],
        build_id=code_build_id(),
    )


@dataclass
class ChannelContext:
    client: Client
    spec: AgentSpec


class ChannelAdapter:
    """Base adapter: override `workers` for Temporal-side work, `serve` for a server (SMTP, HTTP)."""

    name: str = "channel"

    def workers(self, context: ChannelContext) -> list[Worker]:
        return []

    async def serve(self, context: ChannelContext, stop: asyncio.Event) -> None:
        """Runs until `stop` is set. The default has nothing to serve."""
        await stop.wait()
