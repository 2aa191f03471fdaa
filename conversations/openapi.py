"""API keys in the OpenAPI schema: drf-spectacular cannot guess what a custom
authentication class expects, so this extension tells it (an HTTP bearer scheme).

An extension counts once its module is imported. The modules whose schema needs
this one import it (``conversations.apis``, ``openai_api.openapi``), not
``ConversationsConfig.ready`` as drf-spectacular suggests: ``ready`` runs in
every process, and this import brings DRF's fields and drf-spectacular along,
which a model worker never uses: ``django.setup()`` and the worker's modules
took 0.5-1 s longer and 22 MB more (60 -> 82 MB peak RSS) with it.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object

from conversations.authentication import KEY_PREFIX


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "conversations.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            **build_bearer_security_scheme_object(
                header_name="Authorization", token_prefix="Bearer", bearer_format="API key"
            ),
            "description": (
                f"An API key, `Authorization: Bearer {KEY_PREFIX}...`: `python manage.py "
                "create_api_key <username>` prints a new one (it is shown once). A revoked key "
                "is refused within `API_KEY_CACHE_SECONDS`."
            ),
        }
