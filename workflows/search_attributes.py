"""Threadline's custom search attributes: registered on every server it uses, so ops can filter in the Temporal UI."""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

ROOM_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineRoom")
AGENT_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineAgent")
CHANNEL_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineChannel")
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineStatus")
QUEUE_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineQueue")
JOB_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("ThreadlineJobStatus")

SEARCH_ATTRIBUTES = (
    ROOM_ATTRIBUTE, AGENT_ATTRIBUTE, CHANNEL_ATTRIBUTE, STATUS_ATTRIBUTE, QUEUE_ATTRIBUTE, JOB_STATUS_ATTRIBUTE,
)
"""Every key here must be a Keyword: registration code registers them all as such."""


def start_attributes(*, room: str, channel: str, agent: str | None = None, queue: str | None = None,
                     status: str | None = None, job_status: str | None = None) -> TypedSearchAttributes:
    """The search attributes a Threadline workflow starts with (threads, jobs, toolkits): the one builder."""
    pairs = [SearchAttributePair(ROOM_ATTRIBUTE, room)]
    if agent is not None:
        pairs.append(SearchAttributePair(AGENT_ATTRIBUTE, agent))
    if queue is not None:
        pairs.append(SearchAttributePair(QUEUE_ATTRIBUTE, queue))
    pairs.append(SearchAttributePair(CHANNEL_ATTRIBUTE, channel.split(":", 1)[0]))
    if status is not None:
        pairs.append(SearchAttributePair(STATUS_ATTRIBUTE, status))
    if job_status is not None:
        pairs.append(SearchAttributePair(JOB_STATUS_ATTRIBUTE, job_status))
    return TypedSearchAttributes(pairs)
