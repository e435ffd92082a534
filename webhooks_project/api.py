"""REST framework plumbing shared by every app's API: body limits and pagination.

Imported by DRF while it loads its settings: it must not import drf_spectacular (see schema.py)."""

import io

from django.conf import settings
from django.http import JsonResponse
from rest_framework import exceptions, pagination, parsers, status


def body_limit_middleware(get_response):
    """Answer an API request whose body is over API_MAX_BODY_BYTES with a 413 (JSON, as every
    API error) before anything reads it: by its Content-Length, first of all middleware.

    Later is too late: DRF reads a JSON body whole into memory before any parser sees it,
    and Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE on that read with a 400 HTML
    page of its own. A body without a Content-Length (`Transfer-Encoding: chunked`) is a 411:
    Django would read it as empty, and the request would run without it. Other paths (the
    admin) keep Django's own limit."""

    def middleware(request):
        if request.path_info.startswith("/api/"):
            refusal = _refused(request.META)
            if refusal is not None:
                return refusal
        return get_response(request)

    return middleware


def _refused(meta: dict) -> JsonResponse | None:
    declared = meta.get("CONTENT_LENGTH") or ""
    if declared.isascii() and declared.isdigit() and int(declared) > settings.API_MAX_BODY_BYTES:
        return JsonResponse({"detail": too_large(int(declared))}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if not declared and meta.get("HTTP_TRANSFER_ENCODING"):
        detail = f"Send a Content-Length (the limit is {settings.API_MAX_BODY_BYTES} bytes, API_MAX_BODY_BYTES)."
        return JsonResponse({"detail": detail}, status=status.HTTP_411_LENGTH_REQUIRED)
    return None


def too_large(size: int | None = None) -> str:
    """The 413's message, naming the limit and its setting."""
    limit = settings.API_MAX_BODY_BYTES
    body = f"Request body is {size} bytes" if size is not None else "Request body is over the limit"
    return f"{body}; the limit is {limit} bytes (API_MAX_BODY_BYTES)."


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class JSONParser(parsers.JSONParser):
    """JSON only (anything else is a 415), and at most API_MAX_BODY_BYTES of it (413; bodies
    declared larger never get here: `body_limit_middleware`)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(too_large())
        if not body.strip():
            return {}
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:  # [[[[… nested deeper than the interpreter recurses
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        """`page_size` from 1 up (more than max_page_size gives max_page_size); anything else is a
        400 naming it, rather than silently the default."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit() and int(raw) > 0):
            raise exceptions.ValidationError({self.page_size_query_param: "must be a whole number from 1 up"})
        return min(int(raw), self.max_page_size)
