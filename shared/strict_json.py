"""JSON in from strangers: one strict parser for request bodies and notifications.

`json.loads` alone accepts duplicate keys (the last one silently wins: two readers of
the same bytes may disagree) and raises `RecursionError`, not `ValueError`, on input
nested a few thousand levels deep.  `loads_object` refuses both with a `ValueError`
whose message says why, and never echoes the input.
"""

from __future__ import annotations

import json


class JsonRejected(ValueError):
    """The bytes are not one acceptable JSON object; `str()` says why (no input echoed)."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        duplicate = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise JsonRejected(f"the key {duplicate[:40]!r} appears twice in one object")
    return document


def loads_object(raw: bytes | str, what: str = "the body") -> dict:
    """Parse `raw` (UTF-8) as one JSON object, strictly."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise JsonRejected(f"{what} is not UTF-8 text") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except JsonRejected as rejected:
        raise JsonRejected(f"{what} is not acceptable JSON: {rejected}") from None
    except RecursionError:
        raise JsonRejected(f"{what} is nested too deeply") from None
    except ValueError:
        # Not chained: a JSONDecodeError keeps the whole document in `.doc`.
        raise JsonRejected(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JsonRejected(f"{what} must be a JSON object")
    return value
