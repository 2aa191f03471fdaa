from __future__ import annotations

from django.urls import path

from inference import apis

urlpatterns = [
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
]
