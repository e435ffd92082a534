"""Who is calling the API, and which organization's data they may see.

API keys (`Authorization: Bearer ahk_…`) belong to one organization. Logged-in staff users
(the browsable API) act for the organization named by `?organization=<id>` or the
`X-Organization` header, or the only one there is. Every queryset of every API view goes
through `OrganizationScoped`, so another organization's object is a 404, never a 403.
"""

from django.http import Http404
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .models import ApiKey, Organization


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <api key>`, and nothing else. The other ways clients commonly send a
    key (`Token <key>`, a bare key, `X-API-Key`) are a 401 saying what to send instead: ignoring
    them would answer "credentials were not provided" to someone who did provide them."""

    keyword = "Bearer"
    expected = "use 'Authorization: Bearer <api key>'"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace").split()
        if header and header[0].lower() == self.keyword.lower():  # schemes are case-insensitive (RFC 9110)
            return self._key(header)
        if _logged_in(request):
            return None  # the browsable API behind a proxy's Basic auth: the session decides
        # Said by HasOrganization when the view needs a key: an open page (the schema, the docs)
        # stays open to a request with a proxy's Basic auth.
        if not header:
            if request.headers.get("X-API-Key"):
                request._key_hint = f"X-API-Key is not read: {self.expected}"
            return None
        scheme = header[0]
        if scheme.startswith(ApiKey.PREFIX):
            got = "a bare key"
        elif len(header) == 1:
            got = "a value with no scheme"  # not repeated: it may be a credential
        else:
            got = f"scheme '{scheme if len(scheme) <= 20 else scheme[:10] + '…'}'"
        request._key_hint = f"{self.expected} (got {got})"
        return None

    def _key(self, header: list[str]):
        if len(header) != 2:
            got = "no key" if len(header) == 1 else "spaces in the key"
            raise exceptions.AuthenticationFailed(f"{self.expected} (got {got})")
        key = (
            ApiKey.objects.select_related("organization")
            .filter(key_hash=ApiKey.hash(header[1]), revoked_at__isnull=True)
            .first()
        )
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key")
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
        return (None, key)

    def authenticate_header(self, request):
        return self.keyword


def _logged_in(request) -> bool:
    """Whether the request carries a logged-in session (Django's AuthenticationMiddleware)."""
    user = getattr(request._request, "user", None)
    return bool(user and user.is_authenticated)


def requester(request) -> str:
    """Who asked, as a record of it says (a replay, a payload erasure): an API key by its
    prefix and name, or the logged-in user."""
    key = getattr(request, "auth", None)
    if hasattr(key, "key_prefix"):
        name = f" ({key.name})" if key.name else ""
        return f"API key {key.key_prefix}…{name}"
    user = getattr(request, "user", None)
    return f"user {user.get_username()}" if user is not None and user.is_authenticated else "unknown"


class HasOrganization(permissions.BasePermission):
    """An API key, or a logged-in staff user."""

    def has_permission(self, request, view):
        if isinstance(request.auth, ApiKey):
            return True
        if request.user and request.user.is_authenticated and request.user.is_staff:
            return True
        if hint := getattr(request, "_key_hint", None):  # a key sent the wrong way: say the right one
            raise exceptions.AuthenticationFailed(hint)
        return False


def organization_of(request) -> Organization:
    if isinstance(request.auth, ApiKey):
        return request.auth.organization
    chosen = request.query_params.get("organization") or request.headers.get("X-Organization")
    if chosen:
        # PostgreSQL text cannot hold NUL: no organization has such an id (and querying it is a 500).
        org = None if "\x00" in chosen else Organization.objects.filter(pk=chosen).first()
        if org is None:
            raise exceptions.ValidationError({"organization": f"no organization {chosen!r}"})
        return org
    orgs = list(Organization.objects.all()[:2])
    if len(orgs) == 1:
        return orgs[0]
    raise exceptions.ValidationError({"organization": "pass ?organization=<id> or an X-Organization header"})


class OrganizationScoped:
    """ViewSet mixin: `self.organization`, querysets filtered by `organization_field`."""

    organization_field = "organization"

    @property
    def organization(self) -> Organization:
        if not hasattr(self, "_organization"):
            self._organization = organization_of(self.request)
        return self._organization

    def get_queryset(self):
        return super().get_queryset().filter(**{self.organization_field: self.organization})

    def get_object(self):
        lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
        if isinstance(lookup, str) and "\x00" in lookup:
            raise Http404  # PostgreSQL text cannot hold NUL, so no object has this id
        return super().get_object()

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request org
            return context
        context["organization"] = self.organization
        return context
