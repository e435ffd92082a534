"""What each platform change publishes: event type, `data`, and the extra targets of seeds
000 and 003. Called by the thin receivers in `signals.py`.

An event fires once, on the transition into a state. The receivers compare with the status
loaded from the database (cheap, in-process); the event's `dedupe_key` makes it hold across
processes too: two concurrent terminal updates of one run race on a unique index, one wins.

Each event is numbered in a stream (deliveries/streams.py): a run's, or its agent's outside
runs. What belongs to a run: a step of a run, the run's own end, a message or a tool execution
of a step of a run (`run_of_step`). Everything else with an agent is in the agent's stream: a
step without a run, a message or tool execution without a step (or of a step without a run),
tool attach/detach, a job's end (jobs have no run). A job without an agent has no sequence.

`too_large_for_its_event` is what the API asks before it saves: the event an object would
publish, measured as `publish` will record it.
"""

import json

from django.conf import settings

from deliveries.events import Target, dumps, encoded_size, envelope_size, isoformat, publish
from deliveries.models import DeliveryKind

from .models import AgentTool, Job, Message, Run, Step, StepStatus, ToolExecution

STEP_EVENT_TYPES = {
    StepStatus.SUCCESS: "agent.step.completed",
    StepStatus.FAILED: "agent.step.failed",
    StepStatus.CANCELLED: "agent.step.cancelled",
}

# Seed 003, as Letta behaves: runs call back on completed/failed/cancelled, jobs on
# completed/failed only.
RUN_CALLBACK_STATUSES = ("completed", "failed", "cancelled")
JOB_CALLBACK_STATUSES = ("completed", "failed")


def step_finished(step: Step) -> None:
    targets = ()
    if settings.STEP_COMPLETE_WEBHOOK:
        targets = (Target(DeliveryKind.STEP_COMPLETE, settings.STEP_COMPLETE_WEBHOOK, {"step_id": step.id}),)
    publish(
        STEP_EVENT_TYPES[step.status],
        organization=step.agent.organization_id,
        agent=step.agent_id,
        run=step.run_id,
        data=_step_data(step),
        dedupe_key=f"{step.id}:finished",
        targets=targets,
    )


def _step_data(step: Step) -> dict:
    return {
        "step_id": step.id,
        "status": step.status,
        "run_id": step.run_id,
        "usage": step.usage,
        "error": step.error or None,
        "completed_at": isoformat(step.completed_at) if step.completed_at else None,
    }


def run_finished(run: Run) -> None:
    data = _completion(run, "run_id")
    targets = ()
    if run.callback_url and run.status in RUN_CALLBACK_STATUSES:
        targets = (Target(DeliveryKind.RUN_CALLBACK, run.callback_url, data),)
    publish(
        "agent.run.completed",
        organization=run.agent.organization_id,
        agent=run.agent_id,
        run=run.id,
        data=data,
        dedupe_key=f"{run.id}:finished",
        targets=targets,
    )


def job_finished(job: Job) -> None:
    data = _completion(job, "job_id")
    targets = ()
    if job.callback_url and job.status in JOB_CALLBACK_STATUSES:
        targets = (Target(DeliveryKind.JOB_CALLBACK, job.callback_url, data),)
    publish(
        "agent.job.completed",
        organization=job.organization_id,
        agent=job.agent_id,
        data=data,
        dedupe_key=f"{job.id}:finished",
        targets=targets,
    )


def _completion(obj: Run | Job, id_name: str) -> dict:
    """Seed 003's callback payload, also the `data` of run/job events."""
    return {
        id_name: obj.id,
        "status": obj.status,
        "completed_at": isoformat(obj.completed_at) if obj.completed_at else None,
        "metadata": obj.metadata,
    }


def message_sent(message: Message) -> None:
    publish(
        "agent.message.sent",
        organization=message.agent.organization_id,
        agent=message.agent_id,
        run=run_of_step(message),
        data=_message_data(message),
        dedupe_key=f"{message.id}:sent",
    )


def _message_data(message: Message) -> dict:
    return {"message_id": message.id, "role": message.role, "content": message.content, "step_id": message.step_id}


def run_of_step(obj: Message | ToolExecution) -> str | None:
    """The run of the step `obj` belongs to, if any: from the step when it is loaded already (as
    the API and `create(step=step)` leave it), else one small query, whose step is kept on `obj`
    for the next call (the API checks an event's size before the save that publishes it)."""
    if obj.step_id is None:
        return None
    if not type(obj).step.is_cached(obj):
        step = Step.objects.only("run_id").filter(pk=obj.step_id).first()
        if step is None:
            return None
        obj.step = step
    return obj.step.run_id


def tool_attachment_changed(attachment: AgentTool, attached: bool) -> None:
    publish(
        "agent.tool.attached" if attached else "agent.tool.detached",
        organization=attachment.agent.organization_id,
        agent=attachment.agent_id,
        data={"tool_id": attachment.tool_id, "tool_name": attachment.tool.name},
    )


def tool_execution_finished(execution: ToolExecution) -> None:
    publish(
        "tool.execution.completed",
        organization=execution.agent.organization_id,
        agent=execution.agent_id,
        run=run_of_step(execution),
        data={
            "tool_execution_id": execution.id,
            "tool_id": execution.tool_id,
            "tool_name": execution.tool.name,
            "step_id": execution.step_id,
            "status": execution.status,
            "duration_ms": execution.duration_ms,
        },
        dedupe_key=f"{execution.id}:finished",
    )


# The objects whose event can grow past WEBHOOK_MAX_PAYLOAD_BYTES: the event each publishes
# (when created, or when it finishes), how its data is built, and its one free-form field,
# which is what makes it large and what a refusal names. (Tool events carry ids and names.)
SIZED_EVENTS = {
    Message: ("agent.message.sent", _message_data, "content"),
    Step: ("agent.step.completed", _step_data, "error"),
    Run: ("agent.run.completed", lambda run: _completion(run, "run_id"), "metadata"),
    Job: ("agent.job.completed", lambda job: _completion(job, "job_id"), "metadata"),
}
# Everything in an envelope but that field (ids of at most 64 characters, a status, two times,
# token counts) is well under this many bytes.
ENVELOPE_REST_MAX = 2048
# What an event measured before its object finished can still grow by when it does: a longer
# status and event type, and `completed_at` set.
GROWTH = 64


def too_large_for_its_event(obj) -> tuple[str, str] | None:
    """If the event `obj` publishes (when created, or when it finishes) would be too large to
    send as `obj` stands, return the field to blame and why; else None.

    The API asks before it saves, to refuse such a change (400 naming the field). A save by
    code is never refused: its event is recorded without its data, and its endpoints'
    deliveries fail saying why (deliveries.events.publish). Costs no query unless the field
    comes within ENVELOPE_REST_MAX bytes of the limit."""
    sized = SIZED_EVENTS.get(type(obj))
    if sized is None:
        return None
    event_type, build, field = sized
    if isinstance(obj, Step):
        event_type = STEP_EVENT_TYPES.get(obj.status, event_type)
    limit = settings.WEBHOOK_MAX_PAYLOAD_BYTES
    try:
        if encoded_size(dumps(getattr(obj, field))) + ENVELOPE_REST_MAX <= limit:
            return None
        organization = obj.organization_id if isinstance(obj, Job) else obj.agent.organization_id
        size = envelope_size(event_type, organization=organization, agent=obj.agent_id, run=_run(obj), data=build(obj))
    except Exception as exc:  # what publish could not record either (an integer over 64 bits)
        return field, f"cannot be sent in a webhook event: {exc}"
    if size + GROWTH <= limit:
        return None
    return field, f"too large for its {event_type} event: {size} bytes, over WEBHOOK_MAX_PAYLOAD_BYTES ({limit})"


def _run(obj) -> str | None:
    """The run whose stream `obj`'s event is numbered in (see the module's docstring)."""
    if isinstance(obj, Run):
        return obj.id
    if isinstance(obj, Step):
        return obj.run_id
    if isinstance(obj, Message | ToolExecution):
        return run_of_step(obj)
    return None


def record_callback_attempt(delivery, attempt) -> None:
    """Seed 003's tracking fields: last attempt time, any HTTP status, network errors only."""
    body = json.loads(delivery.body)
    if delivery.kind == DeliveryKind.RUN_CALLBACK:
        rows = Run.objects.filter(pk=body["run_id"])
    else:
        rows = Job.objects.filter(pk=body["job_id"])
    rows.update(
        callback_sent_at=attempt.started_at,
        callback_status_code=attempt.status_code,
        callback_error=attempt.error or None,
    )
