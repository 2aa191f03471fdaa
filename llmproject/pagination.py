from __future__ import annotations

from typing import Any

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """DRF's, in the OpenAPI version of our schema (3.1): ``next`` and ``previous`` are
        null on the last and first page, which 3.1 says with a null type, not ``nullable``
        (drf-spectacular passes this schema on as it is: tfranzel/drf-spectacular#1360)."""
        paginated = super().get_paginated_response_schema(schema)
        for link in ("next", "previous"):
            field = paginated["properties"][link]
            if field.pop("nullable", False):
                field["type"] = [field["type"], "null"]
        return paginated
