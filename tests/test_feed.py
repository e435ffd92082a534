"""The pull feed (deliveries/feed.py) as its readers see it: events in commit order, a cursor
that pages and survives restarts, a long poll that answers as soon as something comes, never
an event skipped when transactions commit out of order, and a pull endpoint's view: only what
it subscribes to, signed so the receivers' kit verifies it. Pull endpoints are never POSTed to."""

import threading
import time

import pytest
from django.db import connection, transaction

from deliveries import fanout, feed
from deliveries.events import publish
from deliveries.models import Delivery
from tests.support import on_sqlite, wait_until
from webhooks import receiver as kit
from webhooks.models import Endpoint


def publish_now(org, event_type="agent.step.completed", agent=None, **data):
    with transaction.atomic():
        return publish(event_type, organization=org, agent=agent, data=data)


def ids(page: feed.Page) -> list[str]:
    return [item.event.pk for item in page.items]


def settled(org, count: int, **options) -> feed.Page:
    """Wait until the feed gives `count` events from the start. It gives an event once every
    transaction older than its own has ended, in any database of the PostgreSQL cluster (other
    test runs' included), so "at once" can mean a moment later."""
    return wait_until(
        lambda: (page := feed.read(org.pk, after=None, **options)) and len(page.items) >= count and page,
        timeout=30,
        message=f"{count} events in the feed",
    )


@pytest.mark.django_db(transaction=True)
def test_pages_in_order_with_a_cursor_that_survives_a_restart(org):
    published = [publish_now(org, n=n).pk for n in range(5)]
    settled(org, 5)
    first = feed.read(org.pk, after=None, limit=2)
    assert ids(first) == published[:2] and first.has_more
    second = feed.read(org.pk, after=first.next, limit=2)
    assert ids(second) == published[2:4]
    connection.close()  # a new process, or the reader restarted: the cursor is all it keeps
    third = feed.read(org.pk, after=second.next, limit=2)
    assert ids(third) == published[4:] and not third.has_more
    empty = feed.read(org.pk, after=third.next, limit=2)
    assert empty.items == [] and empty.next == third.next and not empty.has_more
    assert ids(feed.read(org.pk, after=third.items[-1].cursor)) == []  # each item's cursor too


@pytest.mark.django_db(transaction=True)
def test_an_event_committed_late_is_not_skipped(org):
    """A publishes first but commits last. Going by time (or a sequence), a reader would take B,
    move past it, and never see A; the feed holds B back until A is committed, then gives both."""
    a_published, a_may_commit = threading.Event(), threading.Event()
    a_id = []

    def slow_transaction():
        with transaction.atomic():
            a_id.append(publish("agent.step.completed", organization=org.pk, data={"who": "A"}).pk)
            a_published.set()
            a_may_commit.wait(20)
        connection.close()

    slow = threading.Thread(target=slow_transaction)
    slow.start()
    try:
        assert a_published.wait(20)
        b = publish_now(org, who="B")
        assert feed.read(org.pk, after=None).items == []  # B is committed, but A is still open
    finally:
        a_may_commit.set()
        slow.join(20)
    assert ids(settled(org, 2)) == [a_id[0], b.pk]


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_answers_when_an_event_comes(org):
    start = feed.read(org.pk, after="latest")
    publish_now(org, n=0)
    page = feed.read(org.pk, after=start.next, wait=10)
    assert len(page.items) == 1

    later = threading.Timer(0.5, lambda: (publish_now(org, n=1), connection.close()))
    later.start()
    began = time.monotonic()
    page = feed.read(org.pk, after=page.next, wait=20)
    waited = time.monotonic() - began
    later.join()
    assert len(page.items) == 1 and 0.3 < waited < 15  # answered when it came, not at the deadline

    began = time.monotonic()
    assert feed.read(org.pk, after=page.next, wait=0.5).items == []
    assert 0.4 < time.monotonic() - began < 3


@pytest.mark.django_db(transaction=True)
def test_latest_starts_after_what_is_already_there(org):
    publish_now(org, n=0)
    settled(org, 1)
    latest = feed.read(org.pk, after="latest")
    assert latest.items == []
    new = publish_now(org, n=1)
    assert ids(feed.read(org.pk, after=latest.next, wait=20)) == [new.pk]


@pytest.mark.django_db(transaction=True)
def test_a_pull_endpoint_sees_what_it_subscribes_to_signed_with_its_secret(org, agent):
    endpoint = Endpoint.objects.create(organization=org, kind="pull", event_types=["agent.step.*"], agent=agent)
    wanted = publish_now(org, agent=agent, n=1)
    publish_now(org, "agent.message.sent", agent=agent)  # not in its filter
    publish_now(org, agent=None)  # not its agent
    settled(org, 3)
    page = feed.read(org.pk, after=None, endpoint=endpoint)
    assert ids(page) == [wanted.pk]
    (item,) = page.items
    webhook = kit.Receiver(endpoint.secret).verify(item.event.body.encode(), item.headers)
    assert (webhook.id, webhook.event_type, webhook.payload["data"]) == (wanted.pk, "agent.step.completed", {"n": 1})
    # Its cursor is past the events it does not take, too: the next read starts after them.
    assert feed.read(org.pk, after=page.next, endpoint=endpoint).items == []


@pytest.mark.django_db(transaction=True)
def test_a_pull_endpoint_is_never_posted_to(org, make_endpoint):
    pull = Endpoint.objects.create(organization=org, kind="pull")
    push = make_endpoint()
    event = publish_now(org)
    deliveries = fanout.fan_out([event.pk])
    assert [d.endpoint_id for d in deliveries] == [push.pk]
    assert not Delivery.objects.filter(endpoint=pull).exists()


@pytest.mark.parametrize("cursor", ["not-a-cursor", "cjox", "eDp4Onk", "%%%"])
@pytest.mark.django_db
def test_a_cursor_the_feed_did_not_give_is_refused(org, cursor):
    with pytest.raises(feed.BadCursor, match="is not a cursor of this feed"):
        feed.read(org.pk, after=cursor)


def test_the_feed_on_sqlite_the_embedded_default(tmp_path):
    """`dev.py up` runs on SQLite: there the order is rowid's, and the same reads work."""
    script = """
from agents_hooks.models import Organization
from deliveries.events import publish
from deliveries import feed
org = Organization.objects.create(name="x")
published = [publish("agent.step.completed", organization=org, data={"n": n}).pk for n in range(3)]
first = feed.read(org.pk, after=None, limit=2)
rest = feed.read(org.pk, after=first.next, limit=2)
assert [i.event.pk for i in first.items + rest.items] == published, "order"
assert feed.read(org.pk, after="latest").next == rest.next, "latest"
print("ok")
"""
    assert on_sqlite(tmp_path, script).endswith("ok")


@pytest.mark.django_db(transaction=True)
def test_a_pull_endpoints_content_filter_applies_to_its_feed(org):
    endpoint = Endpoint.objects.create(
        organization=org, kind="pull", filter={"path": "data.usage.total_tokens", "gt": 1000}
    )
    big = publish_now(org, usage={"total_tokens": 5000})
    publish_now(org, usage={"total_tokens": 10})
    settled(org, 2)
    assert ids(feed.read(org.pk, after=None, endpoint=endpoint)) == [big.pk]
