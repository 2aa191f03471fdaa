"""DRF's JSON parser, refusing JSON nested too deeply for Python to parse.

``json.load`` raises ``RecursionError`` (not ``ValueError``) past about a
thousand levels of ``[`` or ``{``; DRF's parser catches only ``ValueError``,
so such a body was a 500.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply") from None
