"""Credential header values: how one is recognised by its shape, and how a masked one comes back.

Receivers authenticate us with a custom header (`Authorization: Bearer …`, `X-Api-Key`), and
not always under a name that says so (`X-Session`, `X-Sig`). `redact_headers`
(webhooks/models.py) hides a value when its name suggests a credential or, for any other custom
header, when the value looks like one (`looks_like_secret`): the API, the admin and the attempt
log all show what it returns.

Credential values are write-only: they are shown as `MASK`. A `MASK` that comes back (a GET
written back with PUT or PATCH, an admin form saved unchanged) stands for the stored value
(`unmask`), so reading an endpoint and writing it back never changes its credentials; a new
value replaces the stored one; a header left out is removed. A `MASK` under a name with nothing
stored is refused: we would send it as it is.
"""

import functools
import re

MASK = "[redacted]"

# Authorization schemes (RFC 9110 §11): the rest of the value is the credential.
_SCHEME = re.compile(r"(?:bearer|basic|token|digest|negotiate|apikey|api-key)\s+\S", re.IGNORECASE)
# Prefixes that key issuers put on their secrets: Stripe (sk_live_, rk_test_), OpenAI and
# Anthropic (sk-), Slack (xoxb-, xapp-), GitHub (ghp_, github_pat_), GitLab (glpat-), AWS access
# keys (AKIA…, ASIA…), Google (AIza), SendGrid (SG.), Shopify, npm, PyPI, Hugging Face, ours (whsec_).
_KEY_PREFIX = re.compile(
    r"(?:sk|rk)[_-]|whsec_|xox[a-z]-|xapp-|gh[pousr]_|github_pat_|glpat-|(?:AKIA|ASIA)[0-9A-Z]{16}$|AIza|SG\."
    r"|shp(?:at|ss|ca|pa)_|npm_|pypi-|hf_"
)
# JWTs (base64url of '{"…' is "eyJ…") and other three-part signed tokens.
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*|[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}", re.ASCII)
# 32 hex digits or more (API keys, HMACs, hashes), and UUIDs: many services issue them as keys
# and session ids; a UUID that is only a tenant id is hidden too (it is still sent, and kept).
_HEX = re.compile(r"[0-9a-fA-F]{32,}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
# One opaque word of 24 characters or more from the base64 / base64url / base32 alphabets.
_OPAQUE = re.compile(r"[A-Za-z0-9+/_.~-]{24,}={0,2}")
_DIGIT_RUNS = re.compile(r"[0-9]+")
# A credential inside a longer value: `session=…; Path=/`, `user:…`, `key1 key2`.
_PARTS = re.compile(r"[\s,;:=&]+")


@functools.lru_cache(maxsize=4096)
def looks_like_secret(value: str) -> bool:
    """Whether a header value looks like a credential, whatever the header's name: an
    authorization scheme (`Bearer …`, `Basic …`), a well-known key prefix (`sk_live_…`,
    `xoxb-…`, `ghp_…`, `AKIA…`), a JWT, 32+ hex digits or a UUID, or a random-looking word of
    24+ characters (base64 and the like: letters and digits run together, or letters of both
    cases with digits), alone or inside the value (`sid=…; Path=/`). Ordinary values
    (`application/json`, `team-a`, `customer-12345-eu-west-1`, dates, versions) are not.

    Cached by value: it runs for the custom headers of every attempt, whose values are the
    same few per endpoint (our own headers, which change every time, never come here)."""
    if not isinstance(value, str):
        return False
    value = value.strip()
    if len(value) < 16:
        return bool(_SCHEME.match(value))
    if _SCHEME.match(value) or _KEY_PREFIX.match(value):
        return True
    return any(len(part) >= 24 and _is_token(part) for part in _PARTS.split(value))


def _is_token(word: str) -> bool:
    """Whether one word (no separators) is a secret by its shape alone."""
    if _JWT.fullmatch(word) or _HEX.fullmatch(word):
        return True
    if not _OPAQUE.fullmatch(word):
        return False
    digits = sum(c.isdigit() for c in word)
    upper = sum(c.isupper() for c in word)
    lower = sum(c.islower() for c in word)
    if upper and lower and (digits or 10 * min(upper, lower) >= 3 * (upper + lower)):
        return True  # base64 / base62: both cases, with digits or with the case changing throughout
    if not digits:
        return False  # words and names: `my-team-production-receiver`, `MyCompanyReceiver`
    if word.isalnum():
        return True  # 24+ letters and digits run together: base32, base36
    # One case, digits and separators: random when digits are many and scattered, unlike
    # `customer-12345-eu-west-1` or `v2.3.1-release-candidate`.
    return digits * 5 >= len(word) and len(_DIGIT_RUNS.findall(word)) >= 3


def unmask(submitted: dict[str, str], stored: dict[str, str] | None) -> dict[str, str]:
    """The headers to store for `submitted`, where a value of `MASK` stands for the value stored
    under that name (compared case-insensitively, as HTTP does). Raise ValueError, naming them,
    for masked headers that have no stored value."""
    if MASK not in submitted.values():
        return submitted
    kept = {name.lower(): value for name, value in (stored or {}).items()}
    missing = [name for name, value in submitted.items() if value == MASK and name.lower() not in kept]
    if missing:
        raise ValueError(
            f"{', '.join(map(repr, missing))}: {MASK!r} stands for a value already stored, and this endpoint "
            "has none under that name; send the header's value itself"
        )
    return {name: kept[name.lower()] if value == MASK else value for name, value in submitted.items()}
