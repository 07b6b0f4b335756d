"""The toolkit channel: an agent exposed to the room as a callable tool (see channels/toolkit.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from threadline.models.thread import AgentRef


class ToolkitTool(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class ToolkitInfo(BaseModel):
    """What a toolkit is: registered by the agent that serves it, kept in the toolkit's registry workflow."""

    room: str
    name: str
    description: str
    agent: AgentRef
    tools: list[ToolkitTool]
    registered_at: datetime | None = None


class ToolkitInstance(BaseModel):
    """One agent process serving a toolkit; `identity` is its Temporal worker identity (as pollers report it)."""

    identity: str
    started_at: datetime


class ToolkitState(BaseModel):
    """The registry workflow's whole state (and its memo, so reads need no worker)."""

    room: str
    name: str
    info: ToolkitInfo | None = None
    instances: list[ToolkitInstance] = Field(default_factory=list)


class ToolkitRegistration(BaseModel):
    info: ToolkitInfo
    instance: ToolkitInstance


class ToolkitListing(BaseModel):
    """A toolkit as `room agent list-toolkits` shows it."""

    name: str
    room: str
    description: str
    agent: str
    thread_dir: str
    task_queue: str
    online: bool
    registered_at: datetime | None = None
    tools: list[ToolkitTool]


class ToolResult(BaseModel):
    """What invoking a toolkit's tool returns: the serving agent's reply and where to continue the conversation."""

    text: str
    thread_id: str
    turn_id: str
