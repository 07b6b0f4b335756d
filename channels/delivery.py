"""How every channel hands work to a thread: one turn, delivered to the thread's workflow by its id.

`submit_turn` waits for the reply (update-with-start: chat, toolkit); `deliver_turn` returns once Temporal has the
turn (signal-with-start: mail, queue). Both start the thread on its first turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import common
from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
)
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    EncodingPayloadConverter,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from threadline import telemetry
from threadline.channels.payload_codec import codec_from_env
from threadline.channels.process_identity import process_identity
from threadline.models.limits import ErrorType
from threadline.models.thread import AgentRef, Interrupt, Reply, Steer, ThreadSnapshot, ThreadStart, ThreadState, Turn
from threadline.workflows.search_attributes import (
    SEARCH_ATTRIBUTES,
    start_attributes,
)
from threadline.workflows.thread import THREAD_PATCHES, ThreadWorkflow

POLL_INTERVAL = 0.2
FORGOTTEN_CHECK_EVERY = 25
ONLINE_WINDOW = timedelta(seconds=75)
"""A worker long-polls for about a minute: one that has not polled for longer is gone."""
UPDATES_IN_FLIGHT_PER_THREAD = 8
"""Temporal keeps at most 10 updates in flight per workflow and answers the 11th with RESOURCE_EXHAUSTED, but only
after the client's own retries (about 15 s): callers of one process past this many go by signal + poll at once, and
those behind this process's own turns wait for acceptance at most ACCEPT_WAIT_SECONDS (other processes count too)."""

_updates_in_flight: weakref.WeakKeyDictionary[Client, Counter[str]] = weakref.WeakKeyDictionary()


class ReplyForgotten(LookupError):
    """The turn ran long ago: its reply is in the thread store, no longer in the thread's workflow."""


class TemporalUnreachable(ConnectionError):
    """No Temporal server answered at the address."""


async def connect(
    address: str,
    namespace: str = "default",
    *,
    api_key: str | None = None,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    tls: bool | TLSConfig | None = None,
    rpc_metadata: Mapping[str, str] | None = None,
    runtime: Runtime | None = None,
) -> Client:
    """`tls` given wins over `tls_cert`/`tls_key`; without either, an API key turns TLS on. With a payload key in
    the environment every payload is encrypted (channels/payload_codec.py). Without `runtime`, the SDK's default."""
    if tls is None:
        tls = bool(api_key)
        if tls_cert is not None or tls_key is not None:
            tls = TLSConfig(client_cert=tls_cert, client_private_key=tls_key)
    try:
        return await Client.connect(
            address, namespace=namespace, api_key=api_key, tls=tls, rpc_metadata=rpc_metadata or {},
            data_converter=data_converter(), plugins=telemetry.tracing_plugins(), runtime=runtime,
            identity=process_identity(),  # what recovery after a kill -9 tells this process by (attempts.py)
        )
    except RuntimeError as e:
        raise TemporalUnreachable(f"cannot reach the Temporal server at {address}: {e}") from e


@functools.cache
def _pydantic_encoding_converters() -> tuple[EncodingPayloadConverter, ...]:
    return tuple(PydanticPayloadConverter().converters.values())


class SharedPydanticPayloadConverter(CompositePayloadConverter):
    """The SDK's pydantic payload converter (same encodings, same JSON), built from encoding converters made once per
    process. The SDK builds a data converter's payload converter anew for every workflow activation and activity;
    the pydantic one made its JSON serializer and emptied its type-adapter cache each time, so every payload of a
    turn was decoded by a TypeAdapter built for it (about 50 us each instead of 11)."""

    def __init__(self) -> None:
        super().__init__(*_pydantic_encoding_converters())


def data_converter() -> DataConverter:
    """Pydantic payloads; encrypted, failure messages included, when THREADLINE_PAYLOAD_KEY(_FILE) is set."""
    codec = codec_from_env()
    if codec is None:
        return DataConverter(payload_converter_class=SharedPydanticPayloadConverter)
    return DataConverter(payload_converter_class=SharedPydanticPayloadConverter, payload_codec=codec,
                         failure_converter_class=DefaultFailureConverterWithEncodedAttributes)


async def register_search_attributes(client: Client) -> None:
    """Adds Threadline's search attributes to the namespace where they are missing, so ops can filter threads."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
            )
        except RPCError as e:
            # Replicas starting together race to add them: the loser finds them added.
            if e.status != RPCStatusCode.ALREADY_EXISTS:
                raise


def new_thread_name() -> str:
    """Sortable and readable in the Temporal UI: `20261128-134501-k3f9q2`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def new_turn_id() -> str:
    return f"turn-{uuid.uuid4().hex}"


WORKFLOW_TASK_TIMEOUT = timedelta(seconds=3)
"""A workflow task of a thread or a job takes milliseconds (histories are flat: a thread rolls over); one that a
killed worker had begun is given to another after this, instead of Temporal's default 10 s. Continue-as-new keeps it."""


def _start_operation(
    agent: AgentRef, thread_id: str, channel: str
) -> WithStartWorkflowOperation[ThreadWorkflow, None]:
    return WithStartWorkflowOperation(
        ThreadWorkflow.run,
        _initial_start(agent, thread_id, channel),
        id=thread_id,
        task_queue=agent.task_queue,
        id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(agent, channel),
        task_timeout=WORKFLOW_TASK_TIMEOUT,
    )


def _initial_start(agent: AgentRef, thread_id: str, channel: str) -> ThreadStart:
    state = ThreadState(thread_id=thread_id, room=agent.room, agent_name=agent.agent_name, channel=channel,
                        patches=list(THREAD_PATCHES))
    return ThreadStart(state=state)


def _search_attributes(agent: AgentRef, channel: str) -> common.TypedSearchAttributes:
    return start_attributes(room=agent.room, agent=agent.agent_name, channel=channel, status="idle")


class DuplicateTurn(Exception):
    """The turn id was already used in this thread for other input (the thread refused it)."""


async def submit_until_replied(client: Client, agent: AgentRef, thread_id: str, turn: Turn) -> Reply:
    """`submit_turn` until the reply: a long turn outlasts one update RPC, and submitting the same turn id again
    re-attaches to it. Used by every caller that waits for a turn however long it takes (queue jobs, toolkits)."""
    while True:
        try:
            return await submit_turn(client, agent, thread_id, turn)
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.DUPLICATE_TURN:
                raise DuplicateTurn(cause.message) from e
            raise


async def start_job(client: Client, run: Any, job: Any, *, workflow_id: str, task_queue: str,
                    search_attributes: common.TypedSearchAttributes, memo: dict[str, Any], summary: str) -> bool:
    """Starts a job workflow once per id (False: it already exists). A server that never ran an agent may lack
    Threadline's search attributes: they are added once and the start retried."""
    for attempt in range(2):
        try:
            await client.start_workflow(
                run, job, id=workflow_id, task_queue=task_queue, task_timeout=WORKFLOW_TASK_TIMEOUT,
                id_reuse_policy=common.WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=common.WorkflowIDConflictPolicy.FAIL,
                search_attributes=search_attributes, memo=memo, static_summary=summary,
            )
            return True
        except WorkflowAlreadyStartedError:
            return False
        except RPCError as e:
            if attempt or e.status != RPCStatusCode.INVALID_ARGUMENT or "search attribute" not in str(e).lower():
                raise
            await register_search_attributes(client)
    raise AssertionError("unreachable")


UPDATE_OUTLIVED_RUN = "AcceptedUpdateCompletedWorkflow"
"""Temporal's error type for an accepted update whose workflow run ended (here: continued as new) first."""


ACCEPT_WAIT_SECONDS = 2.0
"""How long `start_turn` (and `submit_turn` on a thread busy with this process's turns) waits for the thread's worker
to accept the turn before it queues it by signal instead."""

_turns_awaited: set[asyncio.Task[None]] = set()


async def submit_turn(
    client: Client, agent: AgentRef, thread_id: str, turn: Turn
) -> Reply:
    """Delivers the turn and waits for its reply. Delivering the same turn id again returns the same reply."""
    ahead = _take_update_slot(client, thread_id)
    if ahead is not None:
        operation = _start_operation(agent, thread_id, turn.channel)
        try:
            # Behind this process's own turns the thread may be at Temporal's limit of updates in flight (other
            # processes' count too), which the client would retry for about 15 s: there the update waits only for
            # acceptance, bounded.
            if not ahead:
                return await client.execute_update_with_start_workflow(
                    ThreadWorkflow.submit_turn, turn, id=turn.turn_id, start_workflow_operation=operation
                )
            handle = await _accepted_update(client, turn, operation)
            if handle is not None:
                return await handle.result()
        except (WorkflowUpdateFailedError, RPCError) as e:
            _fall_back_to_signal_or_raise(e)
        finally:
            _release_update_slot(client, thread_id)
            _retrieve_start_error(operation)
    await deliver_turn(client, agent, thread_id, turn)
    return await wait_for_reply(client, thread_id, turn.turn_id)


async def start_turn(client: Client, agent: AgentRef, thread_id: str, turn: Turn) -> None:
    """Returns once the turn is durably the thread's, without waiting for its reply. An update accepted by the running
    thread gets the turn going sooner than a signal (its workflow task is dispatched at once, not through the
    server's transfer queue); one not accepted in time goes by signal."""
    if _take_update_slot(client, thread_id) is not None:
        operation = _start_operation(agent, thread_id, turn.channel)
        handle = None
        try:
            handle = await _accepted_update(client, turn, operation)
        except (WorkflowUpdateFailedError, RPCError) as e:
            _fall_back_to_signal_or_raise(e)
        finally:
            _retrieve_start_error(operation)
            if handle is None:
                _release_update_slot(client, thread_id)
        if handle is not None:
            # Temporal counts the update as in flight until the turn ends: so does this process.
            awaited = asyncio.create_task(_release_when_answered(client, thread_id, handle))
            _turns_awaited.add(awaited)
            awaited.add_done_callback(_turns_awaited.discard)
            return
    await deliver_turn(client, agent, thread_id, turn)


async def _accepted_update(client: Client, turn: Turn, operation: WithStartWorkflowOperation[ThreadWorkflow, None]
                           ) -> WorkflowUpdateHandle[Reply] | None:
    """The turn's update once the running thread accepted it; None when it was not accepted within
    ACCEPT_WAIT_SECONDS: no worker is up, or the client is retrying Temporal's RESOURCE_EXHAUSTED. The caller then
    sends the turn by signal (delivered twice, a turn id runs once)."""
    try:
        return await asyncio.wait_for(client.start_update_with_start_workflow(
            ThreadWorkflow.submit_turn, turn, id=turn.turn_id, start_workflow_operation=operation,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        ), ACCEPT_WAIT_SECONDS)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):  # the SDK's word for the wait's cancellation
        return None


async def _release_when_answered(client: Client, thread_id: str, handle: WorkflowUpdateHandle[Reply]) -> None:
    try:
        with contextlib.suppress(Exception):  # the caller follows the reply elsewhere (the feed, wait_for_reply)
            await handle.result()
    finally:
        _release_update_slot(client, thread_id)


def _take_update_slot(client: Client, thread_id: str) -> int | None:
    """One of this process's UPDATES_IN_FLIGHT_PER_THREAD updates to the thread, if one is free: how many of them were
    in flight before it (None: no slot)."""
    in_flight = _updates_in_flight.setdefault(client, Counter())
    ahead = in_flight[thread_id]
    if ahead >= UPDATES_IN_FLIGHT_PER_THREAD:
        return None
    in_flight[thread_id] += 1
    return ahead


def _release_update_slot(client: Client, thread_id: str) -> None:
    in_flight = _updates_in_flight[client]
    in_flight[thread_id] -= 1
    if not in_flight[thread_id]:
        del in_flight[thread_id]


def _fall_back_to_signal_or_raise(e: WorkflowUpdateFailedError | RPCError) -> None:
    if isinstance(e, WorkflowUpdateFailedError):
        # A run that rolls over refuses new updates, and leaves a turn waiting for approvals unanswered: the turn
        # goes on in the next run, where the signal path finds it and its reply.
        if not (isinstance(e.cause, ApplicationError) and e.cause.type in (ErrorType.THREAD_ROLLING_OVER,
                                                                           UPDATE_OUTLIVED_RUN)):
            raise e
    # Temporal allows 10 updates in flight per workflow (other processes count too): past that the turn queues by
    # signal instead.
    elif e.status != RPCStatusCode.RESOURCE_EXHAUSTED:
        raise e


def _retrieve_start_error(operation: WithStartWorkflowOperation[ThreadWorkflow, None]) -> None:
    """A failed update-with-start leaves its error on the start operation too; nobody awaits that, and asyncio would
    log "Future exception was never retrieved" for every fallback."""
    future = getattr(operation, "_workflow_handle", None)
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()


async def deliver_turn(
    client: Client, agent: AgentRef, thread_id: str, turn: Turn
) -> None:
    """Returns once Temporal has durably accepted the turn; the thread runs it when its worker is up."""
    await client.start_workflow(
        ThreadWorkflow.run,
        _initial_start(agent, thread_id, turn.channel),
        id=thread_id,
        task_queue=agent.task_queue,
        id_conflict_policy=common.WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=_search_attributes(agent, turn.channel),
        task_timeout=WORKFLOW_TASK_TIMEOUT,
        start_signal="enqueue_turn",
        start_signal_args=[turn],
    )


async def wait_for_reply(client: Client, thread_id: str, turn_id: str, timeout: float | None = None) -> Reply:
    """Polls the thread for a turn's reply (for turns delivered by signal)."""
    handle = client.get_workflow_handle(thread_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    for polls in itertools.count(1):
        reply = await handle.query(ThreadWorkflow.turn_reply, turn_id)
        if reply is not None:
            return reply
        if polls % FORGOTTEN_CHECK_EVERY == 0 and await handle.query(ThreadWorkflow.turn_forgotten, turn_id):
            raise ReplyForgotten(
                f"turn {turn_id} ran in thread {thread_id}, but its reply is no longer kept by the thread; "
                "read it with: threadline process messages --thread-id " + thread_id
            )
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no reply for turn {turn_id} in thread {thread_id} after {timeout} s")
        await asyncio.sleep(POLL_INTERVAL)


async def steer_turn(client: Client, thread_id: str, steer: Steer) -> None:
    await client.get_workflow_handle(thread_id).signal(ThreadWorkflow.steer, steer)


async def interrupt_turn(client: Client, thread_id: str, turn_id: str | None = None) -> None:
    await client.get_workflow_handle(thread_id).signal(ThreadWorkflow.interrupt, Interrupt(turn_id=turn_id))


async def thread_snapshot(client: Client, thread_id: str) -> ThreadSnapshot:
    return await client.get_workflow_handle(thread_id).query(ThreadWorkflow.snapshot)


async def recent_pollers(client: Client, task_queue: str, window: timedelta = ONLINE_WINDOW) -> set[str]:
    """Identities of the workers that polled the task queue's workflow tasks within `window` (Temporal keeps
    listing a stopped worker for minutes, so its mere presence says little)."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    since = datetime.now(timezone.utc) - window
    return {
        p.identity for p in response.pollers
        if p.HasField("last_access_time") and p.last_access_time.ToDatetime(timezone.utc) >= since
    }


async def agent_is_online(client: Client, agent: AgentRef) -> bool:
    """True when a worker of the agent polled its task queue recently."""
    return bool(await recent_pollers(client, agent.task_queue))
