"""The operator's command line, `python manage.py webhooks …`: endpoints, deliveries, events
and statistics across organizations, for people (tables) and scripts (`--json`).

A surface like the admin and the API, over the same services: `recovery` retries, recovers,
enables and disables, `events.send_test` sends a test event, `Endpoint.rotate_secret` rotates,
`filters` reads the same filters as the API's query parameters, `stats.window_stats` counts,
and `--json` prints what the API's serializers print. Nothing here changes a row itself.

One module per group of subcommands (`endpoints`, `deliveries`, `events`, `stats`), each with a
`register(subparsers)`; `common` holds the console, the errors and their exit codes, and the
readers of times and ids. The management command (deliveries/management/commands/webhooks.py)
only parses and dispatches.
"""
