"""Every string in a JSON body must be valid Unicode text, or the request is a 400 naming the field.

JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), and Python's json decodes it into a str that
cannot be encoded as UTF-8 (json.loads also lets raw CESU-8 surrogate bytes through). Such a string
used to travel until something encoded it: the tokenizer (TypeError), a path (UnicodeEncodeError),
or the JSON of the error answer that quoted it back: a 500 every time. One app-wide dependency checks
the parsed body once, before the route's own validation, so no route and no field is forgotten
(object keys included: an unknown key is quoted back in the 400 that refuses it).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from llmdoctor.server.errors import InvalidRequestError

_SURROGATE = re.compile("[\ud800-\udfff]")
THREAD_ABOVE_BYTES = 64 * 1024  # walking a big body (a long token-id list) is CPU work: off the event loop


def first_invalid_text(value: Any, path: str = "") -> tuple[str, int, str] | None:
    """(field path, character index, the bad character) of the first string holding a lone
    surrogate, depth first in document order (an object's keys before its values); None when every
    string is valid text."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item) if not item.isascii() else None
            if found:
                return where or "body", found.start(), found.group()
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if not key.isascii() and _SURROGATE.search(key):
                    return (f"{where} (an object key)" if where else "body (an object key)"), 0, key
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def check_text(value: Any) -> None:
    """Raise InvalidRequestError (HTTP 400, `param` = the field) for the first invalid string."""
    found = first_invalid_text(value)
    if found is None:
        return
    param, index, char = found
    raise InvalidRequestError(
        f"{param} is not valid Unicode text: it holds a lone surrogate (\\u{ord(char):04x}) at character {index}; "
        "send UTF-8 text (in JSON, a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one)",
        None if param.startswith("body") else param.removesuffix(" (an object key)"),
    )


async def reject_invalid_text(request: Request) -> None:
    """App-wide dependency: runs after FastAPI parsed the JSON body (cached on the request, not
    parsed again) and before the route's schema sees it."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return
    raw = await request.body()
    if not raw:
        return
    try:
        body = await request.json()
    except ValueError:  # not JSON (FastAPI passed it on as bytes): the route's schema refuses it
        return
    if len(raw) > THREAD_ABOVE_BYTES:
        await asyncio.to_thread(check_text, body)
    else:
        check_text(body)
