"""Schema changes that a large, busy installation can run while it works.

A plain `AddIndex` on PostgreSQL takes a lock that blocks every write to the table until the
index is built: on a delivery table of tens of millions of rows, minutes in which no worker
can record an outcome and no event can be published. `AddIndexOnline` builds it CONCURRENTLY
there (writes go on; the build takes longer), and as usual elsewhere (SQLite locks the whole
database for any schema change anyway). A migration using it sets `atomic = False`, as
CONCURRENTLY cannot run in a transaction.

If a concurrent build fails midway (a deadlock, a cancelled migration), PostgreSQL leaves an
INVALID index of that name behind: `DROP INDEX CONCURRENTLY <name>` and migrate again.
"""

from django.db import migrations


class AddIndexOnline(migrations.AddIndex):
    def describe(self) -> str:
        return f"{super().describe()} (concurrently on PostgreSQL)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, **_concurrently(schema_editor))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, **_concurrently(schema_editor))


def _concurrently(schema_editor) -> dict:
    return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
