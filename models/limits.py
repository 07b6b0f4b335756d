"""Limits, name rules and error types that every boundary shares: one place for each number and each name."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_TURN_TEXT_BYTES = 256 * 1024
"""Turn text beyond this goes to room storage as an attachment; it would bloat every history that carries it."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""What one message from outside (a job payload, a steer, toolkit arguments) may put into a Temporal payload;
Temporal refuses payloads past 2 MiB, and every history that carries one grows by its size."""


class PayloadTooLarge(ValueError):
    """Content over the size a Temporal payload may carry; the message names the size, the limit and the fix."""


def check_size(what: str, size: int, fix: str, limit: int = MAX_PAYLOAD_BYTES) -> None:
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size:,} bytes, over the {limit:,} byte limit: {fix}")


def text_limit(what: str, fix: str) -> AfterValidator:
    """A text field's size check (MAX_TURN_TEXT_BYTES), raising `PayloadTooLarge` inside the ValidationError."""

    def check(value: str) -> str:
        check_size(what, len(value.encode()), fix, MAX_TURN_TEXT_BYTES)
        return value

    return AfterValidator(check)


_ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_name(kind: str, value: str) -> str:
    """Rooms and agent names become path segments, task queues and search attribute values."""
    if not _ROOM_RE.match(value):
        raise ValueError(
            f"{kind} {value!r} is not valid: use letters, digits, '.', '_' or '-' (at most 63 characters, "
            "starting with a letter or digit)"
        )
    return value


_QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,253}$")


def validate_queue_name(value: str, kind: str = "queue") -> str:
    """Queue names become task-queue names, workflow-id and storage-path segments; an email address is one (the
    mail channel's queue defaults to nothing else), so `@` and `+` are allowed, `/`, whitespace and control
    characters are not."""
    if not value or not value.strip():
        raise ValueError(f"the {kind} name is empty")
    if not _QUEUE_RE.match(value):
        raise ValueError(
            f"{kind} {value!r} is not valid: use letters, digits, '.', '_', '-', '@' or '+' (at most 254 characters, "
            "starting with a letter or digit)"
        )
    return value


class ErrorType:
    """`ApplicationError.type` of the failures that callers tell apart: workflows, activities and channels match on
    these constants, never on message text."""

    DUPLICATE_TURN = "DuplicateTurn"
    """The turn id already ran in this thread and its reply is no longer kept."""
    THREAD_ROLLING_OVER = "ThreadRollingOver"
    """The thread is about to continue-as-new and takes no more updates: deliver by signal."""
    MODEL_UNAVAILABLE = "ModelUnavailable"
    MODEL_REQUEST_REJECTED = "ModelRequestRejected"
    MODEL_CONFIG_ERROR = "ModelConfigError"
    MODEL_FAILED = "ModelFailed"
    MODEL_OUTPUT_TRUNCATED = "ModelOutputTruncated"
    CONTEXT_WINDOW_EXCEEDED = "ContextWindowExceeded"
    NO_SUCH_APPROVAL = "NoSuchApproval"
    APPROVAL_MISMATCH = "ApprovalMismatch"
    JOB_PATH_ERROR = "JobPathError"
    MAIL_CONFIG_ERROR = "MailConfigError"
    MAIL_REJECTED = "MailRejected"
    MAIL_UNAVAILABLE = "MailUnavailable"
    MAIL_UNREADABLE = "MailUnreadable"
    WORKER_GONE = "WorkerGone"
    """An activity attempt whose worker process exited (kill -9), failed by the agent process that replaced it."""


RoomName = Annotated[str, AfterValidator(lambda value: validate_name("room", value))]
AgentName = Annotated[str, AfterValidator(lambda value: validate_name("agent name", value))]
"""A room's and an agent's name as fields: one rule wherever they are declared."""
