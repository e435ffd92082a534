"""`python manage.py reencrypt_secrets`: re-encrypt every endpoint secret (and mutual-TLS client
certificate and key) with the newest key of WEBHOOK_ENCRYPTION_KEYS (step 2 of a key rotation;
see webhooks/crypto.py)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from webhooks import crypto
from webhooks.models import Endpoint

ENCRYPTED = ["secret_encrypted", "previous_secret_encrypted", "client_cert_encrypted", "client_key_encrypted"]


class Command(BaseCommand):
    help = "Re-encrypt all endpoint secrets with the first key of WEBHOOK_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        done = 0
        with transaction.atomic():
            for endpoint in Endpoint.objects.select_for_update().only("pk", *ENCRYPTED):
                try:
                    for field in ENCRYPTED:
                        if getattr(endpoint, field):
                            setattr(endpoint, field, crypto.reencrypt(getattr(endpoint, field)))
                except crypto.InvalidToken:
                    raise CommandError(
                        f"endpoint {endpoint.pk}: its secret was encrypted with a key that is not in "
                        "WEBHOOK_ENCRYPTION_KEYS; add the old key after the new one and run again"
                    ) from None
                endpoint.save(update_fields=ENCRYPTED)
                done += 1
        self.stdout.write(f"re-encrypted the secrets of {done} endpoints with the newest key")
