"""Threadline's metrics and traces. Metrics go through the Temporal SDK's own metric meter: `--metrics-port` serves
them with the SDK's runtime metrics on one Prometheus endpoint. Traces are OpenTelemetry, through the SDK's
`OpenTelemetryPlugin`, when the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variables name a collector.

Counted where each thing happens: turns and approval decisions in the thread workflow (the SDK's workflow meter records
nothing while a worker replays a history, so a replay does not count a turn twice), model calls, tokens, tool
calls and compactions in their activities, mail in the SMTP server and the reply activity, jobs when they finish.
The approvals waiting are a gauge the agent process sets from what its threads report (`--metrics-port` only).
Spans: a turn and a job (workflows), a model call, a tool call and a mail sent (activities), a mail received (the
SMTP server); Temporal's own spans link them, so one mail's trace runs from its receipt to its reply.
Without `--metrics-port` the SDK's default runtime has no exporter and these calls cost next to nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from temporalio import activity, workflow
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

TURNS = "threadline_turns"
TURN_SECONDS = "threadline_turn_duration"
MODEL_CALLS = "threadline_model_calls"
MODEL_TOKENS = "threadline_model_tokens"
MODEL_COST = "threadline_model_cost_microdollars"
TOOL_CALLS = "threadline_tool_calls"
COMPACTIONS = "threadline_compactions"
APPROVALS = "threadline_approvals"
APPROVALS_WAITING = "threadline_approvals_waiting"
MAIL = "threadline_mail"
JOBS = "threadline_jobs"


TRACER_NAME = "threadline"
TRACE_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_plugins(env: Mapping[str, str] | None = None) -> list[Any]:
    """The client plugin that traces workflows and activities (workers inherit it), when an OTLP endpoint is
    configured; [] otherwise. The tracer provider is Temporal's replay-safe one: a worker replaying a history
    emits no span a second time."""
    env = os.environ if env is None else env
    if not any(env.get(name) for name in TRACE_ENDPOINTS) or env.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return []
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin, create_tracer_provider
    from temporalio.contrib.opentelemetry._tracer_provider import ReplaySafeTracerProvider

    if not isinstance(trace.get_tracer_provider(), ReplaySafeTracerProvider):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = create_tracer_provider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME")
                                                                    or "threadline"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    return [OpenTelemetryPlugin()]


@contextlib.contextmanager
def workflow_span(name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[trace.Span]:
    """A span current for the workflow code in the block, as `start_as_current_span` makes one, but for an
    eviction: an evicted run's coroutine is closed (GeneratorExit) from another context, where its token cannot be
    detached (OpenTelemetry logs an ERROR with a traceback for each try), and its span is not over: the next worker
    replays the run."""
    span = trace.get_tracer(TRACER_NAME).start_span(name, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    evicted = False
    try:
        yield span
    except GeneratorExit:
        evicted = True
        raise
    except BaseException as e:
        span.record_exception(e)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(e).__name__}: {e}"))
        raise
    finally:
        if not evicted:
            otel_context.detach(token)
            span.end()


def serve_metrics(host: str, port: int) -> None:
    """Makes the SDK's default runtime export to Prometheus at host:port; call it before the first client."""
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        bind_address=f"{host}:{port}", counters_total_suffix=True, durations_as_seconds=True))),
        error_if_already_set=True)


def _add(meter: MetricMeter, name: str, description: str, attributes: Mapping[str, str | int | float | bool],
         value: int = 1) -> None:
    meter.create_counter(name, description).add(value, dict(attributes))


def in_workflow(name: str, description: str, **attributes: str) -> None:
    _add(workflow.metric_meter(), name, description, attributes)


def turn_finished(channel: str, status: str, seconds: float) -> None:
    meter = workflow.metric_meter()
    attributes = {"channel": channel.split(":", 1)[0], "status": status}
    _add(meter, TURNS, "turns that ended, by channel and status", attributes)
    meter.create_histogram_float(TURN_SECONDS, "how long turns took, queueing excluded", "s").record(
        seconds, attributes)


def in_activity(name: str, description: str, value: int = 1, **attributes: str) -> None:
    if value:
        _add(activity.metric_meter(), name, description, attributes, value)


def outside(name: str, description: str, **attributes: str) -> None:
    """For code that runs in no workflow or activity (the SMTP server)."""
    _add(Runtime.default().metric_meter, name, description, attributes)


def gauge_outside(name: str, description: str, value: int, **attributes: str) -> None:
    Runtime.default().metric_meter.create_gauge(name, description).set(value, dict(attributes))
