"""HTTP plumbing shared by the WeChat Pay API and the control API: requests, replies, routes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import unquote

from devtools.simulator.errors import SimError

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class HttpRequest:
    method: str
    target: str            # the raw request target (path?query), exactly as signed by the merchant
    path: str              # the raw path, still percent-encoded
    query: dict[str, str]
    headers: Message
    body: bytes
    client_ip: str
    params: dict[str, str] = field(default_factory=dict)   # from the route, percent-decoded

    def json(self, *, empty_ok: bool = False) -> object:
        """The body as JSON; raises SimError(400) when it is not."""
        if not self.body.strip():
            if empty_ok:
                return {}
            raise SimError(400, "PARAM_ERROR", "请求体为空")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SimError(400, "PARAM_ERROR", "请求体不是合法的JSON") from None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    signed: bool = False    # WeChat Pay signs it with the platform key
    headers: dict[str, str] = field(default_factory=dict)
    sign_with: Any = None   # a signer.SigningKey that must sign it; None: the key mode chooses


def json_reply(status: int, payload: object, *, signed: bool = False) -> Reply:
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status, body, JSON_TYPE if payload is not None else None, signed)


def error_reply(error: SimError, *, signed: bool = False) -> Reply:
    return json_reply(error.status, error.body(), signed=signed)


Route = tuple[str, re.Pattern, Callable]


class Router:
    """`add("GET", "/v3/x/{name}", fn)`; `{name}` matches one path segment."""

    def __init__(self):
        self._routes: list[Route] = []

    def add(self, method: str, template: str, handler: Callable) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def find(self, request: HttpRequest) -> Callable | None:
        """The handler for the request (its params filled in), or None."""
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                request.params = {name: unquote(value) for name, value in match.groupdict().items()}
                return handler
        return None
