"""OpenAPI description of the API key (drf-spectacular registers extensions on import;
imported from AgentsHooksConfig.ready, not from auth.py, which DRF imports while it starts)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "agents_hooks.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An organization API key: `Bearer ahk_…`"}
