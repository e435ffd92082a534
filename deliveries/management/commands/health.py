"""`python manage.py health`: the readiness checks of GET /health/ready, for exec probes.

One line per check (name, ok or FAIL, figure), exit status 0 when every check passes and 1
when one fails; `--json` prints the same JSON as GET /health/ready.
"""

import json

from django.core.management.base import BaseCommand

from webhooks_project import probes


class Command(BaseCommand):
    help = "Check the database, the broker, worker and beat heartbeats and the backlog; exit 1 if one fails."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the JSON of GET /health/ready")

    def handle(self, *args, as_json: bool = False, **options):
        readiness = probes.ready()
        if as_json:
            self.stdout.write(json.dumps(readiness.as_dict()))
        else:
            for check in readiness.checks:
                self.stdout.write(_line(check))
        if not readiness.ok:
            raise SystemExit(1)


def _line(check: probes.Check) -> str:
    figure = "-" if check.figure is None else f"{check.figure:g} {check.unit}"
    if check.threshold is not None:
        figure += f" (max {check.threshold:g})"
    detail = f"  {check.detail}" if check.detail else ""
    return f"{check.name:<9}{'ok' if check.ok else 'FAIL':<6}{figure}{detail}"
