"""`python manage.py webhooks GROUP ACTION …`: the operator's command line (deliveries/cli/).

    webhooks endpoints list | show | enable | disable | test | rotate-secret
    webhooks deliveries list | show | retry | recover
    webhooks events list | show | tail
    webhooks stats
    webhooks listen --forward-to URL    (a pull endpoint's feed, POSTed to a local URL)
    webhooks payloads erase | expire | removals

Across organizations unless `--organization` narrows it; tables for people, `--json` for
scripts. Exit status: 0 done, 1 refused or failed, 2 bad arguments; errors are one line on
stderr (`--traceback` for the whole story).
"""

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from deliveries.cli import deliveries, endpoints, events, listen, payloads, stats
from deliveries.cli.common import BAD_ARGUMENTS, FAILED, CLIError, Console

EPILOG = (
    "Every GROUP ACTION has its own --help. Times: ISO 8601 or an age (30m, 2h, 1d). "
    "Exit status: 0 done, 1 refused or failed, 2 bad arguments."
)


class Parser(CommandParser):
    """A bad argument is one line and exit status 2, not the usage and a second line."""

    def error(self, message):
        if self.called_from_command_line:
            self.exit(BAD_ARGUMENTS, f"{self.prog}: error: {message} (see --help)\n")
        raise CommandError(f"Error: {message}", returncode=BAD_ARGUMENTS)


class Command(BaseCommand):
    help = "Operate the webhook service: endpoints, deliveries, events and statistics (see README, 'Command line')."
    requires_system_checks = []  # read and act on the database; the servers run the checks

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("epilog", EPILOG)
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = Parser  # the top level's errors too ("webhooks endpoint")
        return parser

    def add_arguments(self, parser):
        groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP", parser_class=Parser)
        for group in (endpoints, deliveries, events, stats, listen, payloads):
            group.register(groups)

    def handle(self, *args, func, as_json: bool = False, **options):
        console = Console(self.stdout, self.stderr, as_json)
        try:
            func(console, **options)
        except CLIError as exc:
            self.stderr.write(f"error: {exc}")
            raise SystemExit(exc.code) from None
        except DatabaseError as exc:
            if options.get("traceback"):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.stderr.write(f"error: the database: {first}")
            raise SystemExit(FAILED) from None
