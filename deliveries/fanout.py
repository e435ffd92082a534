"""Fan-out: turn published events into one Delivery per destination, in the worker.

Publishing only writes the Event row, so the save that publishes pays for one INSERT, not for
an endpoint lookup and N delivery rows. The worker does that here, for a whole batch of events
at once (one endpoint query, one bulk INSERT), in one transaction that also marks the events
fanned out: a crash before commit leaves them for the sweeper, after commit they are never
fanned out twice (rows are locked with SKIP LOCKED, so two workers split a batch). The new
deliveries are created already leased to this worker for their first attempt.
"""

from django.db import transaction
from django.utils import timezone

from webhooks.models import Endpoint

from .attempts import new_lease, relaxed_commit
from .models import Delivery, Event


def fan_out(event_ids: list[str]) -> list[Delivery]:
    """Create the deliveries of the given events not yet fanned out; return them, leased to the
    caller, with `event` and `endpoint` loaded, ready for `attempts.send_claimed`."""
    with transaction.atomic():
        relaxed_commit()
        events = list(
            Event.objects.select_for_update(skip_locked=True).filter(pk__in=event_ids, fanned_out_at__isnull=True)
        )
        if not events:
            return []
        now = timezone.now()
        lease, locked_until = new_lease()
        Event.objects.filter(pk__in=[e.pk for e in events]).update(fanned_out_at=now)
        endpoints = _active_endpoints({e.organization_id for e in events})
        fresh = {"created_at": now, "next_attempt_at": now, "lease": lease, "locked_until": locked_until}
        deliveries = []
        for event in events:
            fresh["created_at"] = event.created_at
            deliveries += [Delivery(event=event, endpoint=ep, **fresh) for ep in _destinations(event, endpoints)]
            deliveries += [
                Delivery(event=event, kind=t["kind"], url=t["url"], body=t["body"], **fresh)
                for t in event.targets
                if "kind" in t
            ]
        Delivery.objects.bulk_create(deliveries)
    return deliveries


def _active_endpoints(organization_ids: set[str]) -> dict[str, list[Endpoint]]:
    by_org: dict[str, list[Endpoint]] = {org: [] for org in organization_ids}
    for ep in Endpoint.objects.filter(organization_id__in=organization_ids, is_active=True):
        by_org[ep.organization_id].append(ep)
    return by_org


def _destinations(event: Event, endpoints: dict[str, list[Endpoint]]) -> list[Endpoint]:
    explicit = [t["endpoint"] for t in event.targets if "endpoint" in t]
    if explicit:  # a test event names its one endpoint, active or not
        return list(Endpoint.objects.filter(pk__in=explicit, organization_id=event.organization_id))
    return [ep for ep in endpoints[event.organization_id] if ep.receives(event.type, event.agent_id)]
