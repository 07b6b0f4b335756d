"""Which model a name means (`offline`, `name`, `provider/name`, a base URL) and what its errors mean to Temporal:
transient ones retry, honouring Retry-After within bounds; the rest end the turn with the provider's message."""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from datetime import timedelta
from typing import Any

import openai
from temporalio.exceptions import ApplicationError
from threadline.models.limits import ErrorType

RETRYABLE_STATUS = {408, 409, 429}
MAX_RETRY_AFTER_SECONDS = 60.0
"""A provider asking for a longer wait is asked again after this; a turn never sleeps on its word for hours."""

PROVIDER_BASE_URLS = {
    "openai": None,
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "litellm": "http://localhost:4000",
}


class ModelConfigError(ValueError):
    """A model setting that cannot work: unknown provider, missing key."""


def resolve_model(model: str, base_url: str | None, env: dict[str, str]) -> tuple[str, str | None, str | None]:
    """`offline`, `name` or `provider/name` → (model name, base URL, API key)."""
    if model == "offline":
        return model, None, None
    provider, sep, name = model.partition("/")
    if not sep:
        provider, name = "openai", model
    if provider not in PROVIDER_BASE_URLS:
        raise ModelConfigError(
            f"unknown model provider {provider!r} in {model!r}: use one of {', '.join(PROVIDER_BASE_URLS)}, "
            "or a plain model name with --model-base-url"
        )
    url = base_url or env.get("OPENAI_BASE_URL") or PROVIDER_BASE_URLS[provider]
    key = env.get("OPENAI_API_KEY")
    if key is None:
        if url is None:
            raise ModelConfigError(
                f"model {model!r} needs OPENAI_API_KEY (or --model-base-url for a local OpenAI-compatible server, "
                "or --model offline)"
            )
        key = "not-needed"
    return name, url, key


def _seconds(value: str | None, scale: float = 1.0) -> float | None:
    try:
        seconds = float(value) * scale if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def retry_delay(headers: Any) -> timedelta | None:
    """The server's requested wait, from `retry-after-ms` or `retry-after` (seconds or an HTTP date), clamped to
    [0, MAX_RETRY_AFTER_SECONDS]; a value that is neither is ignored (Temporal's own backoff applies)."""
    if headers is None:
        return None
    seconds = _seconds(headers.get("retry-after-ms"), 0.001)
    if seconds is None and (value := (headers.get("retry-after") or "").strip()):
        seconds = _seconds(value)
        if seconds is None:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - time.time() if when.tzinfo is not None else None
    if seconds is None:
        return None
    return timedelta(seconds=min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS))


def model_error(e: Exception, model: str) -> ApplicationError:
    """openai exceptions → Temporal errors: transient ones retry (honouring Retry-After), the rest end the turn."""
    if isinstance(e, openai.APIStatusError):
        detail = error_detail(e)
        message = f"model {model} answered HTTP {e.status_code}: {detail}"
        if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
            return ApplicationError(message, type=ErrorType.MODEL_UNAVAILABLE, next_retry_delay=retry_delay(e.response.headers))
        return ApplicationError(message, type=ErrorType.MODEL_REQUEST_REJECTED, non_retryable=True)
    if isinstance(e, openai.APITimeoutError):
        return ApplicationError(f"model {model} timed out", type=ErrorType.MODEL_UNAVAILABLE)
    if isinstance(e, openai.APIConnectionError):
        return ApplicationError(f"cannot reach model {model}: {e}", type=ErrorType.MODEL_UNAVAILABLE)
    return ApplicationError(f"model {model} failed: {e}", type=ErrorType.MODEL_FAILED)


def error_detail(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return e.message
