"""Streams: every event of a run numbered 1, 2, 3... so a receiver can tell a late event from a
lost one.

A stream is a run's events, or an agent's events outside any run (`stream_key`). Publishing an
event of a stream takes the stream's next number with one upsert of its StreamCounter row, in
the publishing transaction, before the event is inserted (`take`):

    INSERT INTO counter VALUES (key, 1, event) ON CONFLICT (key) DO UPDATE
        SET last_sequence = last_sequence + 1, previous_event_id = last_event_id, last_event_id = event
        RETURNING last_sequence, previous_event_id

Why a counter row and not `max(sequence) + 1` over the events: the upsert locks the row until
the transaction ends, so concurrent publishers of one stream take turns (publishers of other
runs never wait), and a rolled-back transaction takes its number back with it: the committed
events of a stream are numbered 1..N exactly, whatever committed or rolled back in between.
The price is that a second publisher into the same run waits for the first one's transaction
to end (a save's transaction: usually a millisecond).

An event that takes a number and is then not recorded (its dedupe key was taken, it could not
be encoded) gives the number back in the same transaction, under the same lock (`give_back`).

Works on PostgreSQL and on SQLite 3.35+ (RETURNING), where one transaction writes at a time.
"""

from django.db import connection

from .models import StreamCounter

RUN = "run:"
AGENT = "agent:"

_TABLE = connection.ops.quote_name(StreamCounter._meta.db_table)
_KEY = connection.ops.quote_name("key")  # a keyword in SQLite
_TAKE = (
    f"INSERT INTO {_TABLE} ({_KEY}, last_sequence, last_event_id, previous_event_id) VALUES (%s, 1, %s, NULL) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET last_sequence = {_TABLE}.last_sequence + 1, "
    f"previous_event_id = {_TABLE}.last_event_id, last_event_id = excluded.last_event_id "
    "RETURNING last_sequence, previous_event_id"
)
# PostgreSQL numbers and records an event in one statement (migration 0010's function): in
# autocommit, as most saves publish, the upsert then the INSERT would need a transaction of
# their own, BEGIN and COMMIT: four round trips instead of one. SQLite takes two statements.
IN_ONE_STATEMENT = connection.vendor == "postgresql"
PUBLISH_NUMBERED = "SELECT n_sequence, n_previous, n_inserted FROM deliveries_publish_numbered(%s, %s::jsonb, %s, %s)"
_GIVE_BACK = f"UPDATE {_TABLE} SET last_sequence = %s, last_event_id = %s WHERE {_KEY} = %s AND last_sequence = %s"


def stream_key(run_id: str | None, agent_id: str | None) -> str | None:
    """The stream an event is numbered in: its run's, else its agent's; None for an event of
    neither (an organization's own, an operational one, a test), which has no sequence."""
    if run_id is not None:
        return RUN + run_id
    if agent_id is not None:
        return AGENT + agent_id
    return None


def take(key: str, event_id: str) -> tuple[int, str | None]:
    """Number `event_id` next in stream `key`: return its sequence and the id of the event
    numbered before it (None for the first). In the caller's transaction, whose end releases
    the stream to its next publisher; a rollback undoes it."""
    with connection.cursor() as cursor:
        cursor.execute(_TAKE, [key, event_id])
        sequence, previous_event_id = cursor.fetchone()
    return sequence, previous_event_id


def give_back(key: str, sequence: int, previous_event_id: str | None) -> None:
    """Undo the `take` that returned (`sequence`, `previous_event_id`), in the same transaction
    (the row is still locked: no one has taken a number after it)."""
    with connection.cursor() as cursor:
        cursor.execute(_GIVE_BACK, [sequence - 1, previous_event_id, key, sequence])
