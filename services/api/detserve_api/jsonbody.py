"""What a JSON body may hold before any route reads it.

webargs turns malformed JSON into a 400, but two valid-looking bodies got past it as 500s: nesting
deeper than Python's stack (json raises RecursionError) and strings with a lone UTF-16 surrogate
("\\ud800" is valid JSON escape syntax, but no database or encoder accepts the string it makes).
This hook parses a JSON body once more, cheaply (JSON bodies are a few KB), and refuses both.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request

from detserve.errors import InvalidJson


def register(app: Flask) -> None:
    app.before_request(check_json_body)


def check_json_body() -> None:
    """Raise InvalidJson for a JSON body Python can parse but not use."""
    if not request.is_json or request.method in {"GET", "HEAD", "OPTIONS", "DELETE"}:
        return
    try:
        value = json.loads(request.get_data(cache=True))  # cached: the route's parser reads it
    except RecursionError:
        raise InvalidJson("the JSON body nests too deeply; send a flat JSON object") from None
    except ValueError:
        return  # malformed: the route's parser names the problem
    if _has_lone_surrogate(value):
        raise InvalidJson("a string in the JSON body holds a lone UTF-16 surrogate (\\ud800-"
                          "\\udfff) that is no character; send valid Unicode text")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
