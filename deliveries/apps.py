from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    name = "deliveries"
    verbose_name = "Deliveries"

    def ready(self) -> None:
        from . import operational, signals

        signals.outcomes_recorded.connect(operational.report_outcomes, dispatch_uid="operational-events")
