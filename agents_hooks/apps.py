from django.apps import AppConfig


class AgentsHooksConfig(AppConfig):
    name = "agents_hooks"
    verbose_name = "Agent platform"

    def ready(self) -> None:
        from . import schema, signals  # noqa: F401  (connect the receivers, describe the API key)
