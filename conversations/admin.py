"""The operators' admin: conversations with their answers' jobs, jobs and failures with
their attempts and event log, the event log, API keys.

Thin: reads through ``conversations.selectors``, actions through the services
(``job_retry``, ``job_cancel``, ``job_resolve``, ``api_key_create``,
``api_key_revoke``). Nothing that would start no work is offered: messages
and jobs are not added here (a job is made with its request, by the API).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import redis.exceptions
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from conversations import selectors
from conversations.authentication import api_key_create, api_key_revoke
from conversations.dispatch import job_cancel, job_resolve, job_retry
from conversations.models import ApiKey, Conversation, ConversationEvent, InferenceJob, JobFailure, Message
from inference.breaker import BreakerState, breaker_states
from llmproject.exceptions import Conflict, ServiceUnavailable


def _ms(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds() * 1000:.0f} ms"


def _link(obj: Any, text: object = None) -> SafeString:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


class NoAddMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Conversations and messages ---------------------------------------------------


class MessageInline(NoAddMixin, admin.TabularInline):
    """Each message, and for an answer its job's state, attempts and timings."""

    model = Message
    extra = 0
    can_delete = False
    fields = ["role", "status", "model", "short_content", "job_link", "timings", "completion_tokens"]
    readonly_fields = fields
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return super().get_queryset(request).select_related("job")

    @admin.display(description="content")
    def short_content(self, message: Message) -> str:
        return message.content if len(message.content) <= 120 else message.content[:120] + "…"

    @admin.display(description="job")
    def job_link(self, message: Message) -> SafeString | str:
        job = getattr(message, "job", None)
        if job is None:
            return "-"
        return _link(job, f"#{job.pk} {job.state} ({job.attempts} attempt{'s' if job.attempts != 1 else ''})")

    @admin.display(description="queued → started / first token / done")
    def timings(self, message: Message) -> str:
        if message.role != Message.Role.ASSISTANT:
            return ""
        return " / ".join(
            _ms(message.queued_at, end)
            for end in (message.started_at, message.first_token_at, message.finished_at)
        )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "owner", "model", "updated_at"]
    list_filter = ["model"]
    search_fields = ["title", "owner__username"]
    readonly_fields = ["event_log"]
    inlines = [MessageInline]

    @admin.display(description="event log")
    def event_log(self, conversation: Conversation) -> SafeString:
        return _event_table(selectors.conversation_events(conversation_id=conversation.pk))


@admin.register(Message)
class MessageAdmin(NoAddMixin, admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "status", "model", "completion_tokens", "created_at"]
    list_filter = ["status", "role", "model"]
    search_fields = ["content"]
    raw_id_fields = ["conversation"]


@admin.register(ConversationEvent)
class ConversationEventAdmin(NoAddMixin, admin.ModelAdmin):
    """Read-only: the event log is append-only. Search by correlation id finds a request's events."""

    list_display = ["id", "conversation", "kind", "message", "correlation_id", "created_at"]
    list_filter = ["kind"]
    search_fields = ["=correlation_id"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- Jobs and failures -------------------------------------------------------------


class FailedWithin(admin.SimpleListFilter):
    title = "failed"
    parameter_name = "failed_within"
    _WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1h", "in the last hour"), ("24h", "in the last 24 hours"), ("7d", "in the last 7 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        window = self._WINDOWS.get(self.value() or "")
        return queryset if window is None else queryset.filter(failed_at__gte=timezone.now() - window)


class Resolved(admin.SimpleListFilter):
    title = "resolved"
    parameter_name = "resolved"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "not yet"), ("yes", "resolved")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(resolved_at__isnull=self.value() == "no")
        return queryset


class JobAdminBase(NoAddMixin, admin.ModelAdmin):
    """A job with its attempts (error and traceback of each), its message and conversation,
    and that conversation's event log; retry, cancel and resolve as actions."""

    actions = ["retry_selected", "cancel_selected", "mark_resolved"]
    search_fields = ["=id", "=correlation_id", "celery_task_id", "last_error"]
    fieldsets = [
        (
            None,
            {"fields": ["model", "queue", "state", "error_kind", "last_error", "attempts", "max_attempts"]},
        ),
        ("Request", {"fields": ["conversation_link", "message_link", "owner", "correlation_id", "params"]}),
        ("Timings", {"fields": ["timings", "worker", "failed_at", "resolved_at"]}),
        ("Attempts", {"fields": ["attempt_table"]}),
        ("Conversation's event log", {"fields": ["event_log"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceJob]:
        return super().get_queryset(request).select_related("message__conversation__owner")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A job's page is a view (the actions change jobs, through the services).
        return super().has_change_permission(request, None) if obj is None else False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a job goes with its message (delete the conversation)

    @admin.display(description="conversation")
    def conversation_link(self, job: InferenceJob) -> SafeString:
        return _link(job.message.conversation)

    @admin.display(description="message")
    def message_link(self, job: InferenceJob) -> SafeString:
        return _link(job.message, f"#{job.message_id} ({job.message.status})")

    @admin.display(description="owner")
    def owner(self, job: InferenceJob) -> str:
        return str(job.message.conversation.owner)

    @admin.display(description="queued → started / first token / done")
    def timings(self, job: InferenceJob) -> str:
        m = job.message
        times = " / ".join(_ms(m.queued_at, end) for end in (m.started_at, m.first_token_at, m.finished_at))
        return f"queued {m.queued_at:%Y-%m-%d %H:%M:%S} UTC; {times}" if m.queued_at else times

    @admin.display(description="attempts")
    def attempt_table(self, job: InferenceJob) -> SafeString:
        attempts = selectors.job_attempts(job=job)
        if not attempts:
            return format_html("<p>{}</p>", "no attempt yet")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    a.number,
                    a.worker or "-",
                    f"{a.started_at:%H:%M:%S.%f}"[:-3] if a.started_at else "-",
                    _ms(a.started_at, a.ended_at),
                    a.outcome,
                    a.error_kind or "",
                    _error_cell(a.error, a.traceback),
                )
                for a in attempts
            ),
        )
        return format_html(
            '<table class="attempts"><thead><tr><th>#</th><th>worker</th><th>started</th><th>took</th>'
            "<th>outcome</th><th>error kind</th><th>error and traceback</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="events, in order")
    def event_log(self, job: InferenceJob) -> SafeString:
        return _event_table(
            selectors.conversation_events(conversation_id=job.message.conversation_id),
            highlight=job.correlation_id,
        )

    @admin.action(description="Retry selected failed jobs (a new attempt)")
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[InferenceJob]) -> None:
        retried = skipped = 0
        for job in queryset.select_related("message"):
            try:
                done = job_retry(job=job, by=request.user.get_username())
            except ServiceUnavailable as exc:
                self.message_user(request, f"job {job.pk}: {exc}", messages.ERROR)
                continue
            retried, skipped = retried + done, skipped + (not done)
        if retried:
            self.message_user(request, f"{retried} job(s) queued again for a new attempt.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"{skipped} job(s) skipped: not failed (already retried?).", messages.WARNING
            )

    @admin.action(description="Cancel selected queued or running jobs")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[InferenceJob]) -> None:
        cancelled = skipped = 0
        for job in queryset:
            try:
                job_cancel(job=job)
            except Conflict:
                skipped += 1
            else:
                cancelled += 1
        if cancelled:
            self.message_user(request, f"{cancelled} job(s) cancelled (a running one stops within a step).")
        if skipped:
            self.message_user(request, f"{skipped} job(s) skipped: already finished.", messages.WARNING)

    @admin.action(description="Mark selected failures resolved")
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[InferenceJob]) -> None:
        resolved = sum(
            job_resolve(job=job, by=request.user.get_username()) for job in queryset.select_related("message")
        )
        self.message_user(request, f"{resolved} failure(s) marked resolved.")


@admin.register(InferenceJob)
class InferenceJobAdmin(JobAdminBase):
    list_display = ["id", "model", "state", "attempts", "priority", "worker", "created_at", "finished_at"]
    list_filter = ["state", "model", "error_kind", "created_at"]


@admin.register(JobFailure)
class JobFailureAdmin(JobAdminBase):
    """Jobs that failed for good (and may have been retried since): the failures list,
    with the failures per model of the last hour above it."""

    list_display = [
        "id",
        "model",
        "state",
        "error_kind",
        "short_error",
        "attempts",
        "worker",
        "failed_at",
        "resolved",
    ]
    list_filter = [FailedWithin, "model", "state", "error_kind", Resolved, "failed_at"]
    change_list_template = "admin/conversations/jobfailure/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceJob]:
        return super().get_queryset(request).filter(failed_at__isnull=False)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        last_hour = selectors.failures_per_model(since=timezone.now() - timedelta(hours=1))
        extra = {"failures_last_hour": last_hour, "breakers": _breakers()}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    @admin.display(description="error")
    def short_error(self, job: InferenceJob) -> str:
        return job.last_error if len(job.last_error) <= 80 else job.last_error[:80] + "…"

    @admin.display(description="resolved", boolean=True)
    def resolved(self, job: InferenceJob) -> bool:
        return job.resolved_at is not None


def _breakers() -> list[BreakerState] | None:
    """Every model's circuit breaker (None if Redis cannot say)."""
    try:
        return list(breaker_states().values())
    except (redis.exceptions.RedisError, OSError):
        return None


def _error_cell(error: str, traceback: str) -> SafeString:
    if not traceback:
        return format_html("{}", error)
    return format_html(
        '{}<details><summary>traceback</summary><pre style="white-space: pre-wrap">{}</pre></details>',
        error,
        traceback,
    )


def _event_table(events: QuerySet[ConversationEvent], highlight: Any = None) -> SafeString:
    def payload(event: ConversationEvent) -> str:
        shown = {k: v for k, v in (event.payload or {}).items() if k != "traceback"}
        return json.dumps(shown, default=str)

    rows = format_html_join(
        "",
        "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
        (
            (
                SafeString(' style="font-weight: bold"')
                if highlight and e.correlation_id == highlight
                else "",
                e.pk,
                f"{e.created_at:%Y-%m-%d %H:%M:%S.%f}"[:-3],
                e.kind,
                e.message_id or "",
                e.correlation_id,
                payload(e),
            )
            for e in events
        ),
    )
    return format_html(
        "<table><thead><tr><th>#</th><th>time (UTC)</th><th>event</th><th>message</th>"
        "<th>correlation id</th><th>payload</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


# --- API keys ----------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Adding a key generates it and shows the raw key once (only its hash is stored);
    revoking is an action."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "user__username", "name"]
    actions = ["revoke_selected"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["user", "name"]
        return ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [] if obj is None else ["user", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(user=obj.user, name=obj.name)
        obj.__dict__.update({f.attname: getattr(key, f.attname) for f in key._meta.concrete_fields})
        obj._state.adding = False
        obj.raw_key = raw  # type: ignore[attr-defined]  # for response_add only: never stored

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The raw key, this once (no redirect: it is in no cookie, session or log)."""
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": obj,
            "raw_key": obj.raw_key,  # type: ignore[attr-defined]
            "opts": self.opts,
            "changelist_url": reverse("admin:conversations_apikey_changelist"),
        }
        response = TemplateResponse(request, "admin/conversations/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = sum(api_key_revoke(key=key) for key in queryset)
        self.message_user(request, f"{revoked} key(s) revoked (every server refuses them within seconds).")
