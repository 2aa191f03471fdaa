from __future__ import annotations

from django.urls import path

from conversations import apis

urlpatterns = [
    path("conversations/", apis.ConversationListCreateApi.as_view(), name="conversation-list"),
    path(
        "conversations/<int:conversation_id>/",
        apis.ConversationDetailApi.as_view(),
        name="conversation-detail",
    ),
    path(
        "conversations/<int:conversation_id>/messages/",
        apis.MessageListCreateApi.as_view(),
        name="message-list",
    ),
    path(
        "conversations/<int:conversation_id>/messages/<int:message_id>/regenerate/",
        apis.MessageRegenerateApi.as_view(),
        name="message-regenerate",
    ),
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/retry/", apis.JobRetryApi.as_view(), name="job-retry"),
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
]
