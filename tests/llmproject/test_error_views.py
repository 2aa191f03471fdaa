"""An uncaught exception under /api/ or /v1/ is a 500 in that API's shape (503 when the
database is unreachable); elsewhere (the admin) Django's page."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError
from django.test import RequestFactory

from llmproject.error_views import server_error


def answer_while_handling(exc: Exception, path: str):
    request = RequestFactory().get(path)
    try:
        raise exc
    except Exception:  # Django calls handler500 inside its except block
        return server_error(request)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [(RuntimeError("bug"), 500, "internal_error"), (OperationalError("gone"), 503, "database_unavailable")],
)
def test_an_uncaught_error_is_answered_in_the_apis_shape(exc, status, code):
    v1 = answer_while_handling(exc, "/v1/chat/completions")
    assert v1.status_code == status
    assert json.loads(v1.content)["error"]["code"] == code
    rest = answer_while_handling(exc, "/api/conversations/")
    assert rest.status_code == status
    assert json.loads(rest.content)["code"] == code
    if status == 503:
        assert int(v1["Retry-After"]) > 0 and int(rest["Retry-After"]) > 0


def test_elsewhere_it_is_djangos_page():
    response = answer_while_handling(RuntimeError("bug"), "/admin/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
