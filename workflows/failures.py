"""How workflows word a failure for people: the failing activity's own message, not its wrappers'."""

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, TimeoutError, TimeoutType


def failure_message(e: BaseException) -> str:
    wrapped = isinstance(e, (ActivityError, ChildWorkflowError))
    while isinstance(e, (ActivityError, ChildWorkflowError)) and e.cause is not None:
        e = e.cause
    if isinstance(e, ApplicationError):
        return e.message
    return f"{e.__class__.__name__}: {e}" if wrapped else str(e)


def tool_failure_result(name: str, timeout_seconds: float, e: BaseException) -> str:
    """The tool's answer to the model when its activity failed for good (its last attempt timed out, or its worker
    died): an `error:` result the model can act on, like an exception inside the tool."""
    cause = e
    while isinstance(cause, (ActivityError, ChildWorkflowError)) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, TimeoutError):
        if cause.type == TimeoutType.HEARTBEAT:
            return f"error: the tool {name} stopped responding (its worker sent no heartbeat) and was given up"
        return f"error: the tool {name} timed out after {timeout_seconds:g} s"
    return f"error: {name} failed: {failure_message(e)}"
