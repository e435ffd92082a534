from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhook endpoints"

    def ready(self) -> None:
        from deliveries import signals

        from . import run_subscriptions

        signals.outcomes_recorded.connect(run_subscriptions.end_delivered, dispatch_uid="run-subscriptions-end")
