from __future__ import annotations

from django.contrib import admin

from conversations.models import ApiKey, Conversation, ConversationEvent, InferenceJob, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "model", "content", "completion_tokens", "created_at"]
    readonly_fields = fields
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "owner", "model", "updated_at"]
    list_filter = ["model"]
    search_fields = ["title", "owner__username"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "model", "completion_tokens", "created_at"]
    list_filter = ["status", "role", "model"]
    search_fields = ["content"]
    raw_id_fields = ["conversation"]


@admin.register(ConversationEvent)
class ConversationEventAdmin(admin.ModelAdmin):
    """Read-only: the event log is append-only."""

    list_display = ["id", "conversation", "kind", "message", "correlation_id", "created_at"]
    list_filter = ["kind"]
    search_fields = ["=correlation_id"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "state", "attempts", "priority", "worker", "created_at", "finished_at"]
    list_filter = ["state", "model"]
    search_fields = ["=id", "=correlation_id", "celery_task_id", "last_error"]
    raw_id_fields = ["message"]
    readonly_fields = ["correlation_id", "celery_task_id", "attempts", "started_at", "finished_at"]
