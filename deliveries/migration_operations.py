"""Schema changes that a large, busy installation can run while it works.

A plain `AddIndex` on PostgreSQL takes a lock that blocks every write to the table until the
index is built: on a delivery table of tens of millions of rows, minutes in which no worker
can record an outcome and no event can be published. `AddIndexOnline` builds it CONCURRENTLY
there (writes go on; the build takes longer), and as usual elsewhere (SQLite locks the whole
database for any schema change anyway). Its migration holds nothing else and sets
`atomic = False`, as CONCURRENTLY cannot run in a transaction, and a migration that stopped
halfway must be able to run again.

So it can be run again: an index already built is left alone, and one that a build
interrupted midway left INVALID on PostgreSQL (a cancelled `migrate`, a lost connection) is
dropped and built again.
"""

from django.db import migrations


class AddIndexOnline(migrations.AddIndex):
    def describe(self) -> str:
        return f"{super().describe()} (concurrently on PostgreSQL)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        postgresql = schema_editor.connection.vendor == "postgresql"
        state = None if schema_editor.collect_sql else _state(schema_editor.connection, model, self.index.name)
        if state == "valid":
            return
        if state == "invalid":
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(self.index.name)}")
        schema_editor.add_index(model, self.index, **({"concurrently": True} if postgresql else {}))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            postgresql = schema_editor.connection.vendor == "postgresql"
            schema_editor.remove_index(model, self.index, **({"concurrently": True} if postgresql else {}))


def _state(connection, model, name: str) -> str | None:
    """Whether the index `name` exists on the model's table: "valid", "invalid" (a
    PostgreSQL build that did not finish), or None."""
    with connection.cursor() as cursor:
        if name not in connection.introspection.get_constraints(cursor, model._meta.db_table):
            return None
        if connection.vendor != "postgresql":
            return "valid"
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND c.relnamespace = to_regnamespace(current_schema())",
            [name],
        )
        row = cursor.fetchone()
        return "valid" if row and row[0] else "invalid"
