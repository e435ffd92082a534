"""The event types an endpoint can subscribe to, with a description and an example `data`.

Endpoint filters are checked against this list (a typo would otherwise subscribe to nothing,
silently); `GET /api/v1/event-types/` serves it.
"""

import fnmatch
from collections.abc import Iterable

_STEP = {
    "step_id": "step-6f1c2a8e-0b7d-4c59-9a51-2f4e7d0c9b13",
    "run_id": "run-0d9a4c1e-5b2f-4e8a-8c7d-1a2b3c4d5e6f",
    "usage": {"prompt_tokens": 812, "completion_tokens": 96, "total_tokens": 908},
    "error": None,
    "completed_at": "2026-11-28T12:00:00.000000Z",
}

EVENT_TYPES: dict[str, tuple[str, dict]] = {
    "agent.step.completed": ("An agent step finished successfully.", {**_STEP, "status": "success"}),
    "agent.step.failed": (
        "An agent step ended with an error.",
        {**_STEP, "status": "failed", "error": "tool call timed out"},
    ),
    "agent.step.cancelled": ("An agent step was cancelled.", {**_STEP, "status": "cancelled"}),
    "agent.message.sent": (
        "A message was sent to or by an agent.",
        {"message_id": "message-3e1f…", "role": "user", "content": "Summarise the ticket", "step_id": None},
    ),
    "agent.tool.attached": ("A tool was attached to an agent.", {"tool_id": "tool-9a2b…", "tool_name": "web_search"}),
    "agent.tool.detached": ("A tool was detached from an agent.", {"tool_id": "tool-9a2b…", "tool_name": "web_search"}),
    "agent.run.completed": (
        "A run ended; `status` is completed, failed or cancelled.",
        {"run_id": "run-0d9a…", "status": "completed", "completed_at": "2026-11-28T12:00:00Z", "metadata": {}},
    ),
    "agent.job.completed": (
        "A job ended; `status` is completed, failed or cancelled.",
        {"job_id": "job-7c3d…", "status": "failed", "completed_at": "2026-11-28T12:00:00Z", "metadata": {}},
    ),
    "tool.execution.completed": (
        "A tool execution finished; `status` is success or error.",
        {
            "tool_execution_id": "toolexec-51aa…",
            "tool_id": "tool-9a2b…",
            "tool_name": "web_search",
            "step_id": "step-6f1c…",
            "status": "success",
            "duration_ms": 420,
        },
    ),
    "webhook.test": (
        "Sent on request to one endpoint, to check it is reachable.",
        {"endpoint_id": "ep_…", "message": "Test event from agent-webhooks: your endpoint is reachable."},
    ),
    # Operational events: about the service's own deliveries, for the people running it
    # (deliveries/operational.py). Only endpoints whose filter names them receive them.
    "endpoint.disabled": (
        "An endpoint was disabled: by an operator, after answering 410 Gone, or after every attempt "
        "failed for WEBHOOK_DISABLE_AFTER_HOURS. Its deliveries are held until it is enabled. Operational.",
        {
            "endpoint_id": "ep_5f0c…",
            "url": "https://hooks.example.com/letta?[redacted]",
            "reason": "every attempt failed for 120 hours",
            "disabled_at": "2026-11-28T12:00:00.000000Z",
        },
    ),
    "endpoint.enabled": (
        "A disabled endpoint was enabled again; its held deliveries are being sent. Operational.",
        {"endpoint_id": "ep_5f0c…", "url": "https://hooks.example.com/letta", "deliveries_released": 42},
    ),
    "endpoint.failing": (
        "An endpoint's attempts failed WEBHOOK_FAILING_AFTER_FAILURES times in a row (at most one event "
        "per endpoint per WEBHOOK_FAILING_WINDOW). Operational.",
        {
            "endpoint_id": "ep_5f0c…",
            "url": "https://hooks.example.com/letta",
            "consecutive_failures": 10,
            "failing_since": "2026-11-28T11:42:10.000000Z",
            "last_status_code": 503,
            "last_error": "",
        },
    ),
    "delivery.dead": (
        "A delivery's attempts ran out: it is dead, and can be retried by hand. Never sent about a delivery "
        "of an operational event. Operational.",
        {
            "delivery_id": 81234,
            "event_id": "evt_01JDX7Q2M4N8P0R2S4T6V8W0Y2",
            "event_type": "agent.step.completed",
            "endpoint_id": "ep_5f0c…",
            "attempts": 8,
            "last_status_code": None,
            "last_error": "connection refused",
        },
    ),
}

# Sent only to endpoints whose filter names them ("endpoint.*", "delivery.dead", "*"): an empty
# filter means every agent event, not these (Endpoint.receives).
OPERATIONAL_EVENT_TYPES = frozenset({"endpoint.disabled", "endpoint.enabled", "endpoint.failing", "delivery.dead"})

# A run's last event: a run subscription always takes it, and ends once it was delivered.
RUN_ENDED = "agent.run.completed"

# Which stream each built-in event is numbered in: the envelope's `run_id`, `sequence` (1, 2, 3...
# per stream, no gaps) and `previous_event_id` (deliveries/streams.py). Outside a run, an event
# with an agent is numbered in that agent's stream of events outside runs; with neither: null.
_IN_RUN = "its run's ({}); outside a run, its agent's"
STREAMS: dict[str, str] = {
    "agent.step.completed": _IN_RUN.format("the step's run"),
    "agent.step.failed": _IN_RUN.format("the step's run"),
    "agent.step.cancelled": _IN_RUN.format("the step's run"),
    "agent.message.sent": _IN_RUN.format("the run of the message's step"),
    "tool.execution.completed": _IN_RUN.format("the run of the execution's step"),
    "agent.run.completed": "its run's: the run's last event",
    "agent.tool.attached": "its agent's (never in a run)",
    "agent.tool.detached": "its agent's (never in a run)",
    "agent.job.completed": "its agent's (jobs have no run); a job without an agent: none (`sequence` is null)",
    "webhook.test": "none (`sequence` is null)",
    **{name: "none (`sequence` is null)" for name in OPERATIONAL_EVENT_TYPES},
}
# The examples in a run (the message's example has no step, so it is in its agent's stream).
_EXAMPLES_IN_RUN = frozenset(name for name, stream in STREAMS.items() if stream.startswith("its run's")) - {
    "agent.message.sent"
}


def envelope_example(event_type: str) -> dict:
    """An example of the whole body POSTed for a built-in event type: the envelope around its `data`."""
    data = EVENT_TYPES[event_type][1]
    in_stream = not STREAMS[event_type].startswith("none")
    return {
        "event_id": "evt_01JDX7Q2M4N8P0R2S4T6V8W0Y2",
        "event_type": event_type,
        "timestamp": "2026-11-28T12:00:00.123456Z",
        "agent_id": "agent-2c4e…" if in_stream else None,
        "run_id": data.get("run_id", "run-0d9a…") if event_type in _EXAMPLES_IN_RUN else None,
        "sequence": 7 if in_stream else None,
        "previous_event_id": "evt_01JDX7Q1Z9B3C5D7E9F1G3H5J7" if in_stream else None,
        "organization_id": "org-8b1d…",
        "data": data,
    }


def unknown_patterns(patterns: list[str], registered: Iterable[str] = ()) -> list[str]:
    """The patterns that match no known event type (`agent.step.*` style wildcards allowed): none
    of the catalog's, nor of `registered` (an organization's own types, webhooks/event_types.py)."""
    known = [*EVENT_TYPES, *registered]
    return [p for p in patterns if not any(fnmatch.fnmatchcase(t, p) for t in known)]
