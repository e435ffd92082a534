"""`python manage.py reencrypt_secrets`: re-encrypt every endpoint secret with the newest key
of WEBHOOK_ENCRYPTION_KEYS (step 2 of a key rotation; see webhooks/crypto.py)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from webhooks import crypto
from webhooks.models import Endpoint


class Command(BaseCommand):
    help = "Re-encrypt all endpoint secrets with the first key of WEBHOOK_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        done = 0
        with transaction.atomic():
            for endpoint in Endpoint.objects.select_for_update().only(
                "pk", "secret_encrypted", "previous_secret_encrypted"
            ):
                try:
                    endpoint.secret_encrypted = crypto.reencrypt(endpoint.secret_encrypted)
                    if endpoint.previous_secret_encrypted:
                        endpoint.previous_secret_encrypted = crypto.reencrypt(endpoint.previous_secret_encrypted)
                except crypto.InvalidToken:
                    raise CommandError(
                        f"endpoint {endpoint.pk}: its secret was encrypted with a key that is not in "
                        "WEBHOOK_ENCRYPTION_KEYS; add the old key after the new one and run again"
                    ) from None
                endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted"])
                done += 1
        self.stdout.write(f"re-encrypted the secrets of {done} endpoints with the newest key")
