"""PostgreSQL: `deliveries_publish_numbered`, which numbers an event in its stream and records it
in one statement (deliveries/streams.py says why). Nothing on SQLite, which keeps the two."""

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION deliveries_publish_numbered(
    stream text, event_row jsonb, head text, tail text,
    OUT n_sequence bigint, OUT n_previous text, OUT n_inserted boolean
) LANGUAGE plpgsql AS $$
DECLARE
    event deliveries_event;
BEGIN
    INSERT INTO deliveries_streamcounter AS c (key, last_sequence, last_event_id, previous_event_id)
    VALUES (stream, 1, event_row->>'id', NULL)
    ON CONFLICT (key) DO UPDATE SET last_sequence = c.last_sequence + 1, previous_event_id = c.last_event_id,
        last_event_id = excluded.last_event_id
    RETURNING c.last_sequence, c.previous_event_id INTO n_sequence, n_previous;
    event := jsonb_populate_record(NULL::deliveries_event, event_row);
    event.sequence := n_sequence;
    event.previous_event_id := n_previous;
    event.xid := pg_current_xact_id()::text::bigint;
    event.body := head || '"sequence":' || n_sequence || ',"previous_event_id":'
        || COALESCE(to_json(n_previous)::text, 'null') || tail;
    INSERT INTO deliveries_event SELECT (event).* ON CONFLICT DO NOTHING;
    n_inserted := FOUND;
    IF NOT n_inserted THEN  -- a duplicate (its dedupe key taken): give the number back, still locked
        UPDATE deliveries_streamcounter AS c SET last_sequence = n_sequence - 1, last_event_id = n_previous
        WHERE c.key = stream;
    END IF;
END
$$;
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS deliveries_publish_numbered(text, jsonb, text, text)")


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0009_event_sequence")]
    operations = [migrations.RunPython(create, drop)]
