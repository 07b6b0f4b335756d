"""Recovery after kill -9 of a worker process on this host.

Every worker journals the activity attempts it runs in a file named after its process (its id and start time:
channels/process_identity.py): a line as an attempt starts and one as it ends, so a kill -9 leaves the attempts it
cut off started and not ended. An agent process that starts on the same host, against the same
Temporal server, reads the journals of processes that no longer exist, and for each workflow named there:
- sends the workflow's next task (and its parent's, for a tool call's child workflow) to the task queue every
  worker polls, instead of the dead worker's sticky queue, which Temporal would wait out first;
- fails each attempt still running on a worker process of this host that no longer exists, so that Temporal retries
  it now rather than after its heartbeat timeout.

The journal is host-local on purpose: a process id means something only on its host, and a worker elsewhere is
never judged dead. Where there is no journal (another host, an unwritable temp directory), the same work goes on
after Temporal's timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    ResetStickyTaskQueueRequest,
)
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor
from threadline.channels.process_identity import local_process_is_gone, process_key, process_key_is_gone
from threadline.models.limits import ErrorType

log = logging.getLogger("threadline.attempts")

RECOVERIES_IN_FLIGHT = 64
COMPACT_AFTER_LINES = 4096
"""A process's journal is rewritten with only its running attempts once this many lines have been appended."""
RETRY_AFTER_WORKER_GONE = timedelta(seconds=1)
"""The attempt failed through no fault of the provider: retry it without the retry policy's backoff. Temporal
dispatches the retry of a failed attempt a second after the failure at the soonest, whatever the delay asked for
(server 1.32, measured: 1.0 s for a delay of 1 ms, 50 ms or 1 s), so asking for that second changes nothing here and
keeps a retry from coming before the starting worker polls on a server that honours shorter delays."""


class AttemptJournal:
    """The running activity attempts of this host's worker processes that use one Temporal server and namespace:
    one append-only file per process, `+n [workflow id, run id]` as attempt n starts and `-n` as it ends. An append
    is one write to an open file; a file per attempt (created, then removed) cost the worker's event loop a tenth of
    a millisecond per activity."""

    def __init__(self, directory: Path, compact_after: int = COMPACT_AFTER_LINES) -> None:
        self.directory = directory
        self.compact_after = compact_after
        self._names = itertools.count()
        self._running: dict[int, str] = {}
        self._lines = 0
        self._fd: int | None = None
        self._own_pid: int | None = None
        self._unwritable = False
        self._lock = threading.Lock()

    def started(self, info: activity.Info) -> int | None:
        """Journals an attempt; None when the journal cannot be written (recovery then waits for timeouts)."""
        with self._lock:
            if self._own_file() is None:
                return None
            entry = next(self._names)
            self._running[entry] = json.dumps([info.workflow_id, info.workflow_run_id])
            return entry if self._append(f"+{entry} {self._running[entry]}\n") else None

    def ended(self, entry: int) -> None:
        with self._lock:
            if self._running.pop(entry, None) is not None and self._own_pid == os.getpid():
                self._append(f"-{entry}\n")

    def _append(self, line: str) -> bool:
        try:
            if self._lines >= self.compact_after:
                self._compact()
            os.write(self._fd, line.encode())
        except OSError as e:
            self._give_up(e)
            return False
        self._lines += 1
        return True

    def _compact(self) -> None:
        """Rewrites the file with the attempts still running, so that it does not grow with every attempt."""
        own = self.directory / process_key()
        fresh = own.with_suffix(".new")
        fresh.write_text("".join(f"+{entry} {ids}\n" for entry, ids in self._running.items()))
        fresh.replace(own)
        os.close(self._fd)
        self._fd = os.open(own, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self._running)

    def _own_file(self) -> int | None:
        if self._unwritable:
            return None
        if self._own_pid != os.getpid():
            own = self.directory / process_key()
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                # An earlier process of this pid left its journal (no start time known): this one starts anew.
                if own.is_dir():  # an older version's
                    shutil.rmtree(own)
                self._fd = os.open(own, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as e:
                self._give_up(e)
                return None
            self._own_pid, self._running, self._lines = os.getpid(), {}, 0
        return self._fd

    def _give_up(self, e: OSError) -> None:
        self._unwritable = True
        log.warning("cannot journal activity attempts in %s (%s): after a kill -9 their retries wait for "
                    "Temporal's timeouts", self.directory, e)

    def of_dead_processes(self) -> dict[Path, set[tuple[str, str]]]:
        """The workflows (id, run id) of the attempts journaled by processes of this host that have exited."""
        dead: dict[Path, set[tuple[str, str]]] = {}
        with contextlib.suppress(FileNotFoundError):
            for journal in self.directory.iterdir():
                if journal.suffix or not process_key_is_gone(journal.name):
                    continue
                with contextlib.suppress(OSError):
                    dead[journal] = running_attempts(
                        "".join(f"+{e.name} {e.read_text()}\n" for e in journal.iterdir())  # an older version's
                        if journal.is_dir() else journal.read_text())
        return dead


def running_attempts(journal: str) -> set[tuple[str, str]]:
    """The attempts a journal's text shows started and not ended (a line cut short by a kill is left out)."""
    running: dict[str, str] = {}
    for line in journal.splitlines():
        entry, _, ids = line.partition(" ")
        if entry.startswith("+"):
            running[entry[1:]] = ids
        else:
            running.pop(entry[1:], None)
    found = set()
    for ids in running.values():
        with contextlib.suppress(ValueError):
            workflow_id, run_id = json.loads(ids)
            found.add((workflow_id, run_id))
    return found


_journals: dict[Path, AttemptJournal] = {}


def attempt_journal(client: Client) -> AttemptJournal:
    """The one journal of this process for the client's server and namespace (an agent's workers all share it)."""
    return attempt_journal_at(client.service_client.config.target_host, client.namespace)


def attempt_journal_at(address: str, namespace: str) -> AttemptJournal:
    server = f"{address}/{namespace}"
    directory = Path(tempfile.gettempdir()) / f"threadline-{os.getuid()}" / "attempts" / \
        hashlib.sha256(server.encode()).hexdigest()[:16]
    return _journals.setdefault(directory, AttemptJournal(directory))


class AttemptJournalInterceptor(Interceptor):
    def __init__(self, journal: AttemptJournal) -> None:
        self.journal = journal

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _JournaledAttempt(next, self.journal)


class _JournaledAttempt(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, journal: AttemptJournal) -> None:
        super().__init__(next)
        self.journal = journal

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        entry = None if info.is_local else self.journal.started(info)
        try:
            return await self.next.execute_activity(input)
        finally:
            if entry is not None:
                self.journal.ended(entry)


@dataclasses.dataclass
class Recovery:
    moved: int = 0
    """Workflows moved off the dead worker's sticky queue."""
    retried: int = 0
    """Activity attempts of a dead local worker failed so that Temporal retries them at once."""


async def recover_dead_local_workers(client: Client) -> Recovery:
    """Called as an agent process starts: recovers the workflows whose attempts a dead worker of this host cut off
    (see the module's docstring). Their journals are removed once every workflow of them has been looked at."""
    journal = attempt_journal(client)
    dead = await asyncio.to_thread(journal.of_dead_processes)
    recovery = Recovery()
    in_flight = asyncio.Semaphore(RECOVERIES_IN_FLIGHT)
    sticky = _StickyResets(client)

    async def recover(workflow_id: str, run_id: str) -> None:
        async with in_flight:
            with contextlib.suppress(RPCError):  # finished meanwhile
                description = await client.workflow_service.describe_workflow_execution(
                    DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(
                        workflow_id=workflow_id, run_id=run_id)))
                await _move_off_sticky_queue(sticky, description)
                retried = await _retry_attempts_of_dead_workers(client, description)
                recovery.retried += retried  # not `+= await`: that reads the count before the await, losing updates

    await asyncio.gather(*[recover(*execution) for execution in set().union(*dead.values())])
    recovery.moved = sticky.done()
    for journal in dead:
        await asyncio.to_thread(_remove_journal, journal)
    return recovery


def _remove_journal(journal: Path) -> None:
    if journal.is_dir():
        shutil.rmtree(journal, ignore_errors=True)
    for path in (journal, journal.with_suffix(".new")):
        path.unlink(missing_ok=True)


async def recover_dead_workers(client: Client) -> Recovery:
    """`recover_dead_local_workers`, reported in the log; a failure is logged, not raised."""
    try:
        recovery = await recover_dead_local_workers(client)
    except (RPCError, OSError) as e:  # an optimisation: without it the work still goes on, after Temporal's timeouts
        log.warning("could not recover the work of a worker that exited: %s", e)
        return Recovery()
    if recovery.moved:
        log.info("%d workflows moved off the sticky queue of a worker that exited", recovery.moved)
    if recovery.retried:
        log.info("%d activity attempts of a worker that exited retried at once", recovery.retried)
    return recovery


class _StickyResets:
    """Each workflow moved off the dead worker's sticky queue once, however many of its children were cut off too."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.resets: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def reset(self, execution: WorkflowExecution) -> None:
        key = (execution.workflow_id, execution.run_id)
        if key not in self.resets:
            self.resets[key] = asyncio.ensure_future(self.client.workflow_service.reset_sticky_task_queue(
                ResetStickyTaskQueueRequest(namespace=self.client.namespace, execution=execution)))
        await asyncio.shield(self.resets[key])  # a child's recovery given up must not cancel its siblings' reset

    def done(self) -> int:
        return sum(1 for reset in self.resets.values() if reset.done() and not reset.cancelled()
                   and reset.exception() is None)


async def _move_off_sticky_queue(sticky: _StickyResets, description: DescribeWorkflowExecutionResponse) -> None:
    """Moved before any attempt is failed, so that an attempt retried at once reports to a live worker; the parent
    too, as a tool call's child workflow completes into it."""
    info = description.workflow_execution_info
    for execution in [info.execution, *([info.parent_execution] if info.HasField("parent_execution") else [])]:
        await sticky.reset(execution)


async def _retry_attempts_of_dead_workers(client: Client, description: DescribeWorkflowExecutionResponse) -> int:
    execution = description.workflow_execution_info.execution
    retried = 0
    for attempt in description.pending_activities:
        if attempt.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            continue
        if not local_process_is_gone(attempt.last_worker_identity):
            continue
        gone = ApplicationError(f"the worker that ran this attempt ({attempt.last_worker_identity}) is gone",
                                type=ErrorType.WORKER_GONE, next_retry_delay=RETRY_AFTER_WORKER_GONE)
        with contextlib.suppress(RPCError):  # completed or timed out meanwhile
            await client.get_async_activity_handle(workflow_id=execution.workflow_id, run_id=execution.run_id,
                                                   activity_id=attempt.activity_id).fail(gone)
            retried += 1
    return retried
