from __future__ import annotations

from django.urls import path

from openai_api import views

urlpatterns = [
    path("models", views.model_list, name="openai-model-list"),
    path("chat/completions", views.chat_completions, name="openai-chat-completions"),
]
