from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from llmproject import exposition, health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("conversations.urls")),
    path("v1/", include("openai_api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Operations (served without middleware: llmproject.handlers).
    path("metrics", exposition.metrics_view, name="metrics"),
    path("metrics/targets", exposition.metrics_targets_view, name="metrics-targets"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
]

# Errors Django answers itself, in the JSON shape of /api/ and /v1/ under those prefixes.
handler400 = "llmproject.error_views.bad_request"
handler403 = "llmproject.error_views.permission_denied"
handler404 = "llmproject.error_views.page_not_found"
handler500 = "llmproject.error_views.server_error"
