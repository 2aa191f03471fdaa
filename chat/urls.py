from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views
from chat.security import content_security_policy

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<int:conversation_id>/", views.chat_page, name="chat-conversation"),
    path("keys/", views.keys_page, name="chat-keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="chat-key-revoke"),
    path(
        "accounts/login/",
        content_security_policy(
            auth_views.LoginView.as_view(template_name="chat/login.html", redirect_authenticated_user=True)
        ),
        name="login",
    ),
    path("accounts/logout/", content_security_policy(auth_views.LogoutView.as_view()), name="logout"),
]
