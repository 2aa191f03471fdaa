from __future__ import annotations

from django.contrib import admin

from inference.models import InferenceJob


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "state", "attempts", "priority", "worker", "created_at", "finished_at"]
    list_filter = ["state", "model"]
    search_fields = ["=id", "=correlation_id", "celery_task_id", "last_error"]
    raw_id_fields = ["message"]
    readonly_fields = ["correlation_id", "celery_task_id", "attempts", "started_at", "finished_at"]
