"""Threadline's custom search attributes: registered on every server it uses, so ops can filter in the Temporal UI."""

from temporalio.common import SearchAttributeKey

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
