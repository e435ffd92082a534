"""REST framework plumbing shared by every app's API: body limits and pagination."""

import io

from django.conf import settings
from rest_framework import exceptions, pagination, parsers, status


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class JSONParser(parsers.JSONParser):
    """JSON only (anything else is a 415), and at most API_MAX_BODY_BYTES of it (413)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")
        if not body.strip():
            return {}
        return super().parse(io.BytesIO(body), media_type, parser_context)


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
