"""Celery beat's scheduler: Celery's persistent one, plus beat's heartbeat.

The readiness probe (webhooks_project/probes.py) wants to know that beat is running, and beat
has work only hourly: so `tick` writes the `beat` heartbeat row at most every
WEBHOOK_HEARTBEAT_INTERVAL seconds, and never sleeps longer than that between ticks (Celery's
default is up to five minutes). Settings name it: CELERY_BEAT_SCHEDULER.
"""

import logging
import time

from celery.beat import PersistentScheduler
from django.conf import settings

logger = logging.getLogger("deliveries.beat")


class HeartbeatScheduler(PersistentScheduler):
    _heartbeat_at: float | None = None  # time.monotonic() of the last try
    _failures = 0

    def tick(self, *args, **kwargs) -> float:
        wait = super().tick(*args, **kwargs)
        interval = settings.WEBHOOK_HEARTBEAT_INTERVAL
        if self._heartbeat_at is None or time.monotonic() - self._heartbeat_at >= interval:
            self._heartbeat(first=self._heartbeat_at is None)
            self._heartbeat_at = time.monotonic()
        return min(wait, max(0.0, interval - (time.monotonic() - self._heartbeat_at)))

    def _heartbeat(self, first: bool) -> None:
        """Write the row; a database away is said once (and when it is back), never raised:
        the schedule goes on without it."""
        from django.db import close_old_connections

        from deliveries.models import Heartbeat

        try:
            close_old_connections()  # a connection the database dropped is replaced
            Heartbeat.record("beat", prune=first)
        except Exception as exc:
            self._failures += 1
            if self._failures == 1:
                logger.warning("beat: could not write its heartbeat (%s); trying again each interval", exc)
        else:
            if self._failures:
                logger.warning("beat: heartbeat written again after %d failed tries", self._failures)
            self._failures = 0
