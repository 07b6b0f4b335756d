"""The JSON bodies of the chat API, the error it answers with, and reading a request into one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from threadline.models.limits import PayloadTooLarge
from threadline.models.thread import Reply, ThreadItem


class ThreadOut(BaseModel):
    thread_id: str
    name: str
    short: str = Field(description="the last part of the id, as `process use --thread-id` takes it")
    status: str
    channel: str = "chat"
    created_at: float = 0.0
    modified_at: float = 0.0
    items: int = 0
    archived: bool = False
    temporal_url: str | None = None
    running_turn_id: str | None = None
    queued_turn_ids: list[str] = Field(default_factory=list)
    cost_usd: float = Field(0.0, description="what the thread's priced model calls cost")


class ThreadList(BaseModel):
    threads: list[ThreadOut]


class CreateThread(BaseModel):
    name: str = Field("", max_length=200)
    main: bool | None = Field(None, description="the agent's `main` thread; default: as the threading mode says")


class Rename(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class ItemsPage(BaseModel):
    thread_id: str
    items: list[ThreadItem]
    has_more: bool
    cursor: str = Field(description="the SSE position right after these items: pass it as ?after= to /events")


class PostTurn(BaseModel):
    text: str = Field(min_length=1)
    turn_id: str | None = Field(None, min_length=1, max_length=200, description="idempotency key")
    sender: str = Field("user", min_length=1, max_length=200)


class TurnAccepted(BaseModel):
    thread_id: str
    turn_id: str
    status: Literal["accepted"] = "accepted"
    reply: Reply | None = None


class SteerIn(BaseModel):
    text: str = Field(min_length=1)
    turn_id: str | None = None
    sender: str = "user"


class DecisionIn(BaseModel):
    decision: Literal["approve", "deny"]
    reason: str = Field("", max_length=2000)
    by: str = Field("web user", min_length=1, max_length=200)
    digest: str | None = None


class InterruptIn(BaseModel):
    turn_id: str | None = None


class ConfigOut(BaseModel):
    agent: str
    room: str
    threading_mode: str
    model: str
    namespace: str
    temporal_ui_url: str | None
    auth: bool


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


def invalid(e: ValidationError) -> ApiError:
    """A model's validation error as the API's answer: 413 for content over the payload limits, else 422."""
    first = e.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, PayloadTooLarge):
        return ApiError(413, str(cause), "too_large")
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = str(first.get("msg")).removeprefix("Value error, ")
    return ApiError(422, f"{where}: {message}" if where else message, "invalid_body")


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        raise invalid(e) from e


def int_param(value: str | None, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as e:
        raise ApiError(422, f"{value!r} is not a number", "invalid_query") from e
    return min(max(number, low), high)
