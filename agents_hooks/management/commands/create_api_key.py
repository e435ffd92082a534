"""`python manage.py create_api_key <organization>`: issue an API key and print it once."""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from agents_hooks.models import ApiKey, Organization


class Command(BaseCommand):
    help = "Create an API key for an organization (by id or exact name) and print it; it is not shown again."

    def add_arguments(self, parser):
        parser.add_argument("organization", help="organization id (org-…) or exact name")
        parser.add_argument("--name", default="", help="a label for the key")
        parser.add_argument("--create-organization", action="store_true", help="create the organization if missing")

    def handle(self, *args, organization, name, create_organization, **options):
        matches = list(Organization.objects.filter(Q(pk=organization) | Q(name=organization))[:2])
        if len(matches) > 1:
            raise CommandError(f"several organizations are named {organization!r}; pass its id instead")
        if matches:
            org = matches[0]
        elif create_organization:
            org = Organization.objects.create(name=organization)
        else:
            raise CommandError(f"no organization {organization!r} (use --create-organization to create it)")
        _, key = ApiKey.issue(org, name=name)
        self.stdout.write(f"API key for {org.name} ({org.id}), shown once:\n{key}")
