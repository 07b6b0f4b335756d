"""How workflows word a failure for people: the failing activity's own message, not its wrappers'."""

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError


def failure_message(e: BaseException) -> str:
    wrapped = isinstance(e, (ActivityError, ChildWorkflowError))
    while isinstance(e, (ActivityError, ChildWorkflowError)) and e.cause is not None:
        e = e.cause
    if isinstance(e, ApplicationError):
        return e.message
    return f"{e.__class__.__name__}: {e}" if wrapped else str(e)
