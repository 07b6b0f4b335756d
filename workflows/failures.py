"""How workflows word an activity's failure for people: the activity's own message, not the wrapper's."""

from temporalio.exceptions import ActivityError, ApplicationError


def failure_message(e: BaseException) -> str:
    if isinstance(e, ActivityError) and e.cause is not None:
        cause = e.cause
        if isinstance(cause, ApplicationError):
            return cause.message
        return f"{cause.__class__.__name__}: {cause}"
    return str(e)
