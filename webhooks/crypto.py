"""Endpoint secrets are encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256).

Keys come from WEBHOOK_ENCRYPTION_KEYS (comma-separated Fernet keys, newest first). To rotate:
put a new key first, keep the old ones after it, run `python manage.py reencrypt_secrets`, then
drop the old keys. Without the variable (development only) a key is derived from
DJANGO_SECRET_KEY.
"""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ["InvalidToken", "decrypt", "encrypt", "reencrypt"]


def derived_key(secret_key: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(b"webhook-secrets:" + secret_key.encode()).digest()).decode()


@functools.lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.WEBHOOK_ENCRYPTION_KEYS or [derived_key(settings.SECRET_KEY)]))


def encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


@functools.lru_cache(maxsize=8192)
def _decrypt(token: str, fernet: MultiFernet) -> str:
    return fernet.decrypt(token.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt (cached per process: the delivery hot path signs with it on every POST)."""
    return _decrypt(token, _current())


def reencrypt(token: str) -> str:
    """The same secret under the newest key."""
    return _current().rotate(token.encode()).decode()
