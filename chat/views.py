"""The browser chat's pages. Thin: the chat page is a shell that ``static/chat/app.js`` fills
from the REST API and the conversation's WebSocket; the API keys page is a plain form."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from chat.security import content_security_policy
from conversations import selectors
from conversations.authentication import KEY_PREFIX, api_key_create, api_key_revoke
from inference import registry
from llmproject.exceptions import NotFound


@content_security_policy
@login_required
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    """``/`` (a new chat) or ``/c/<id>/`` (one of the user's conversations; someone else's,
    or a missing one, is a 404 that shows nothing of it)."""
    missing = False
    if conversation_id is not None:
        try:
            selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        except NotFound:
            missing, conversation_id = True, None
    context = {
        "conversation_id": conversation_id,
        "missing": missing,
        "max_chars": settings.LLM_MAX_MESSAGE_CHARS,
        "default_model": registry.default_model().name,
    }
    return render(request, "chat/chat.html", context, status=404 if missing else 200)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, label="Name (what it is for)")


@never_cache  # the page that shows a new key must not be kept by a cache
@content_security_policy
@login_required
@require_http_methods(["GET", "POST"])
def keys_page(request: HttpRequest) -> HttpResponse:
    """List the user's API keys; a POST creates one and shows its secret, this once."""
    created = None
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        key, raw = api_key_create(user=request.user, name=form.cleaned_data["name"])
        created = {"key": key, "raw": raw}
        form = ApiKeyForm()
    context = {
        "form": form,
        "created": created,
        "keys": selectors.api_key_list(user=request.user),
        "key_prefix": KEY_PREFIX,
        "api_base": request.build_absolute_uri("/v1"),
        "revoke_delay": round(settings.API_KEY_CACHE_SECONDS),
    }
    return render(request, "chat/keys.html", context)


@content_security_policy
@login_required
@require_POST
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        key = selectors.api_key_get(user=request.user, key_id=key_id)
    except NotFound:
        return HttpResponse("No such API key.", status=404, content_type="text/plain")
    api_key_revoke(key=key)
    return HttpResponseRedirect(reverse("chat-keys"))
