"""`webhooks listen`: follow a pull endpoint's feed and POST each event to a local URL, signed
as usual. The loop, its options and its printed lines are `webhooks/listen.py`'s, the stand-alone
script a receiver runs with only an API URL and a key; here the feed is read from the database
(`feed.read`, as the API does), so no web server or key is needed."""

from django.db import DatabaseError, close_old_connections

from agents_hooks.models import Organization
from webhooks import listen as loop
from webhooks.models import Endpoint, EndpointKind

from .. import feed
from . import common
from .common import Console


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "listen",
        help="follow a pull endpoint's feed and POST each event, signed, to a local URL (Ctrl-C stops)",
        description=loop.__doc__.split("\n\n")[0],
    )
    loop.arguments(p, standalone=False)
    p.add_argument("--organization", metavar="ORG", help="organization id or exact name (needed if several)")
    p.set_defaults(func=listen)


def listen(console: Console, *, organization=None, **options) -> None:
    org = common.organization(organization) or _the_only_organization()
    args = _Arguments(options)
    if args.after:
        try:
            feed.check_cursor(args.after)
        except feed.BadCursor as exc:
            raise common.bad_argument(f"--after: {exc}") from None
    if args.endpoint:
        try:
            feed.check_endpoint(common.endpoint(args.endpoint, org, "--endpoint"))
        except feed.BadEndpoint as exc:
            raise common.bad_argument(f"--endpoint: {exc}") from None

    def page(after, endpoint_id, wait):
        try:
            close_old_connections()  # a long-running command: reconnect if the database went away
            # Read each time: a rotated secret, a new filter, a disabled endpoint apply at once.
            endpoint = Endpoint.objects.filter(pk=endpoint_id, organization=org).first()
            if endpoint is None:
                raise loop.Refused(f"endpoint {endpoint_id} was deleted")
            return feed.as_json(feed.read(org.pk, after=after, wait=wait, endpoint=endpoint))
        except feed.BadCursor as exc:
            raise loop.Refused(f"--after: {exc}", common.BAD_ARGUMENTS) from None
        except feed.BadEndpoint as exc:
            raise loop.Refused(str(exc)) from None
        except DatabaseError as exc:
            raise ConnectionError(f"the database: {str(exc).strip().splitlines()[0]}") from None

    def create(description):
        endpoint = Endpoint.objects.create(organization=org, kind=EndpointKind.PULL, description=description)
        return {"id": endpoint.pk, "secret": endpoint.secret}

    try:
        loop.listen(page, create, args, out=console.stdout)
    except loop.Refused as refused:
        raise common.CLIError(str(refused), refused.exit_code) from None


def _the_only_organization() -> Organization:
    orgs = list(Organization.objects.all()[:2])
    if len(orgs) != 1:
        raise common.bad_argument("--organization: give one (its id or name)" if orgs else "no organization yet")
    return orgs[0]


class _Arguments:
    """The parsed options as `loop.listen` reads them (an argparse namespace's attributes)."""

    def __init__(self, options: dict):
        self.forward_to = options["forward_to"]
        self.endpoint = options.get("endpoint")
        self.cursor_file = options.get("cursor_file")
        self.after = options.get("after")
        self.from_start = options.get("from_start", False)
        self.max_events = options.get("max_events")
