"""The OpenAPI schema class (settings: DEFAULT_SCHEMA_CLASS)."""

from drf_spectacular import openapi

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
