"""The OpenAPI schema class (settings: DEFAULT_SCHEMA_CLASS) and its post-processing hook
(SPECTACULAR_SETTINGS POSTPROCESSING_HOOKS): one tag per resource, and descriptions written for
the API's users, never a view's internal docstring."""

from drf_spectacular import openapi
from drf_spectacular.plumbing import get_doc

from webhooks import catalog

API_PREFIX = "/api/v1/"

# Each resource (the path segment after /api/v1/, its tag): what it is, for the docs' readers.
RESOURCES = {
    "agents": "Your agents. Attaching or detaching a tool publishes `agent.tool.attached` / `.detached`.",
    "tools": "The tools your agents can call.",
    "runs": "Runs of an agent. An ended status publishes `agent.run.completed`. History: never deleted. "
    "A run's subscriptions take that run's events only, until it ends.",
    "jobs": "Jobs of an agent. An ended status publishes `agent.job.completed`. History: never deleted.",
    "steps": "Steps of an agent's runs. Setting a final status publishes `agent.step.completed`, "
    "`.failed` or `.cancelled`. History: never deleted.",
    "messages": "Messages sent to or by an agent (`agent.message.sent`). Written once, never changed.",
    "tool-executions": "Calls of a tool. A final status publishes `tool.execution.completed`. History: never deleted.",
    "webhooks": "Webhook endpoints: where events are POSTed, signed (Standard Webhooks), and which "
    "event types each receives. The signing secret is shown once, on create and on rotation.",
    "events": "Events of your organization, each delivered to every subscribed endpoint: read them, publish your "
    "own (of a type you registered), or follow the pull feed.",
    "deliveries": "One delivery per event and endpoint: its status and every attempt (status code, "
    "duration, response). Failed or dead deliveries can be retried.",
    "event-types": "The event types an endpoint can subscribe to: the built-in ones, with an example of each `data`, "
    "and those your organization registers (with an optional JSON Schema) to publish its own events.",
    "payload-removals": "The record of your organization's payload erasures (and retention passes for its own "
    "period): who asked, when, why, how much; an erasure too large for one request is `running` here until done.",
    "stats": "Delivery statistics of the whole service (staff only).",
    "organizations": "Organizations, for staff users: erase an organization's payloads (see also an agent's `erase`).",
}
SINGULAR = {
    "agents": "agent", "tools": "tool", "runs": "run", "jobs": "job", "steps": "step",
    "messages": "message", "tool-executions": "tool execution", "webhooks": "webhook endpoint",
    "events": "event", "deliveries": "delivery", "payload-removals": "payload removal",
}  # fmt: skip
# The description of a standard action, from the resource's singular and plural names.
ACTIONS = {
    "list": "Your organization's {plural}, a page at a time.",
    "create": "Create {a} {singular}.",
    "retrieve": "One {singular}, by id.",
    "update": "Replace {a} {singular}'s writable fields.",
    "partial_update": "Change some of {a} {singular}'s fields.",
    "destroy": "Delete {a} {singular}.",
}

ERROR_BODY = {
    "type": "object",
    "additionalProperties": {},
    "description": '`{"detail": "…"}`, or for a 400 `{"<field>": ["…"]}` naming each field in error.',
}
ERRORS = {
    "400": "Invalid input; the body names each field in error.",
    "401": "No API key, or an invalid or revoked one.",
    "403": "Logged in, but not as staff (or the CSRF check failed).",
    "404": "No such object in your organization (or no such page).",
}
BODY_ERRORS = {
    "413": "Request body over API_MAX_BODY_BYTES.",
    "415": "Request body is not application/json.",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, plus the error answers every operation can give (so clients, and
    schemathesis, know them): an undocumented status code is a schema violation too."""

    def get_tags(self) -> list[str]:
        """One tag per resource: `/api/v1/webhooks/{id}/test/` is under "webhooks"."""
        if self.path.startswith(API_PREFIX):
            return [self.path.removeprefix(API_PREFIX).split("/")[0]]
        return super().get_tags()

    def get_description(self) -> str:
        """The action's own docstring (custom actions, APIViews), else a line for the standard
        action. Never the view class's docstring: those are notes for maintainers."""
        action = getattr(self.view, "action", None) or self.method.lower()
        own = get_doc(getattr(self.view, action, None))
        if own:
            return own
        plural = self.get_tags()[0]
        template = ACTIONS.get(action, "")
        singular = SINGULAR.get(plural, plural)
        article = "an" if singular[0] in "aeiou" else "a"
        return template.format(plural=plural.replace("-", " "), singular=singular, a=article)

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        errors = {**ERRORS, **(BODY_ERRORS if "requestBody" in operation else {})}
        responses = operation.setdefault("responses", {})
        for code, description in errors.items():
            responses.setdefault(
                code, {"description": description, "content": {"application/json": {"schema": ERROR_BODY}}}
            )
        return operation


def webhook_schema_name(event_type: str) -> str:
    """The component naming the body POSTed for an event type: `agent.step.completed` ->
    `AgentStepCompletedWebhook`."""
    return "".join(part.capitalize() for part in event_type.replace("_", ".").split(".")) + "Webhook"


def _field_types() -> dict[str, dict]:
    """The schema of each `data` field, from the first example where it is not null, nullable if
    it is null in any: `"error": None` in one example and `"tool call timed out"` in another make
    a nullable string wherever `error` appears."""
    types: dict[str, dict] = {}
    nullable = set()
    for _, example in catalog.EVENT_TYPES.values():
        for key, value in example.items():
            if value is None:
                nullable.add(key)
            elif key not in types:
                types[key] = _example_schema(value)
    for key in nullable:
        types[key] = {**types.get(key, {"type": "string"}), "nullable": True}
    return types


def _example_schema(value) -> dict:
    if value is None:
        return {"type": "string", "nullable": True}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array", "items": _example_schema(value[0]) if value else {}}
    if not value:  # an empty example object (metadata): any keys
        return {"type": "object", "additionalProperties": {}}
    return {"type": "object", "properties": {key: _example_schema(item) for key, item in value.items()}}


def webhook_schemas() -> dict[str, dict]:
    """One schema per event type (webhooks/catalog.py) for the JSON body POSTed to an endpoint, so a
    receiver can generate its types: the envelope, and `data` typed from the catalog's example."""
    types = _field_types()
    schemas = {}
    for event_type, (description, example) in catalog.EVENT_TYPES.items():
        schemas[webhook_schema_name(event_type)] = {
            "type": "object",
            "description": f"The body POSTed for `{event_type}`: {description}",
            "properties": {
                "event_id": {"type": "string", "description": "Unique; the same on every retry."},
                "event_type": {"type": "string", "enum": [event_type]},
                "timestamp": {"type": "string", "format": "date-time"},
                "agent_id": {"type": "string", "nullable": True},
                "run_id": {"type": "string", "nullable": True, "description": "The run it belongs to, if any."},
                "sequence": {
                    "type": "integer",
                    "nullable": True,
                    "description": "Its number in its stream, 1, 2, 3... with no gaps, across all event types of "
                    "the stream: a missing number is an event not received yet (late, being retried) or of a type "
                    f"this endpoint does not subscribe to. Stream: {catalog.STREAMS[event_type]}.",
                },
                "previous_event_id": {
                    "type": "string",
                    "nullable": True,
                    "description": "The event numbered `sequence - 1` in the same stream; null for the first.",
                },
                "organization_id": {"type": "string"},
                # No "required" in data: an oversize event's stand-in keeps only its ids.
                "data": {"type": "object", "properties": {key: types[key] for key in example}, "example": example},
                "truncated": {
                    "type": "boolean",
                    "description": "Present (true) only when the event was too large: `data` then "
                    "holds only its ids, and `payload_bytes` the size it had.",
                },
                "payload_bytes": {"type": "integer"},
            },
            "required": [
                "event_id",
                "event_type",
                "timestamp",
                "agent_id",
                "run_id",
                "sequence",
                "previous_event_id",
                "organization_id",
                "data",
            ],
            "example": catalog.envelope_example(event_type),
        }
    return schemas


def describe(result, generator, request, public):
    """Post-processing hook: the tags in the order of RESOURCES, each with its description; and a
    schema per webhook body (webhook_schemas) among the components."""
    used = {
        tag
        for operations in result.get("paths", {}).values()
        for op in operations.values()
        for tag in op.get("tags", [])
    }
    result["tags"] = [{"name": name, "description": text} for name, text in RESOURCES.items() if name in used]
    result.setdefault("components", {}).setdefault("schemas", {}).update(webhook_schemas())
    return result
