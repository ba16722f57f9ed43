"""SCF HTTP events in, SCF integrated responses out: the one place errors become HTTP.

Both event shapes arrive here (Tencent Cloud SCF docs 583/12513 and 583/96099):
- API Gateway (legacy): `httpMethod`, `path`, `headers`, `queryString`, `body`,
  `isBase64Encoded`, `requestContext` ...
- Function URL: the same minus `isBase64Encoded`/`requestContext`; lower-case headers,
  client IP in `x-scf-remote-addr`.
Handlers get a `Request` with the raw body bytes (a notification's signature covers
them exactly) and return `(status, payload)`; `serve()` turns any `CloudPayError` into
its status and JSON body, and anything unexpected into a 500 without a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import deadline
from shared.errors import (
    BadRequest,
    CloudPayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.log import flush as flush_logs
from shared.log import log, where
from shared.strict_json import JsonRejected, loads_object

DEFAULT_MAX_BODY = 64 * 1024
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}


class Headers:
    """Case-insensitive, read-only view of the event's headers."""

    def __init__(self, raw: dict | None):
        self._items: dict[str, str] = {}
        for name, value in (raw or {}).items():
            if isinstance(value, list):  # API Gateway may give multi-value headers
                value = ",".join(str(v) for v in value)
            self._items[str(name).lower()] = "" if value is None else str(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def as_dict(self) -> dict[str, str]:
        return dict(self._items)


def _is_json_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@dataclass
class Request:
    method: str
    path: str
    headers: Headers
    query: dict[str, list[str]]  # every value of each name, in order; a bare `?a` is [""]
    body: bytes
    source_ip: str | None = None
    request_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # filled by the router

    def json(self) -> dict:
        """The body as a JSON object, or a 4xx with a clear message.

        The body must be declared `application/json`: a form or text body is not parsed
        as JSON by accident.  Duplicate keys and absurd nesting are refused (400).
        """
        if not _is_json_type(self.headers.get("content-type")):
            raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
        if not self.body.strip():
            raise BadRequest("the request body is empty; send a JSON object", code="INVALID_JSON")
        try:
            return loads_object(self.body, "the request body")
        except JsonRejected as rejected:
            raise BadRequest(str(rejected), code="INVALID_JSON") from None

    def query_value(self, name: str) -> str | None:
        """The one value of query parameter `name` (None when absent); 400 when repeated."""
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(f"query parameter {name[:40]!r} must appear once", code="INVALID_QUERY")
        return values[0]


def _query(raw: Any) -> dict[str, list[str]]:
    """SCF gives `queryString` as name -> value, or name -> [values] for repeated names."""
    if not isinstance(raw, dict):
        return {}
    query: dict[str, list[str]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        cleaned = []
        for item in values:
            if item is None or item is True:  # a bare key: present, with no value
                cleaned.append("")
            elif isinstance(item, str):
                cleaned.append(item)
            else:
                raise BadRequest(f"query parameter {str(name)[:40]!r} has an unusable value",
                                 code="INVALID_QUERY")
        query[str(name)] = cleaned
    return query


def parse_event(event: Any, context: Any = None, *, max_body: int = DEFAULT_MAX_BODY) -> Request:
    """Build a Request from either SCF event shape; BadRequest / PayloadTooLarge if unusable."""
    if not isinstance(event, dict) or "httpMethod" not in event:
        raise BadRequest("not an HTTP event", code="BAD_EVENT")
    headers = Headers(event.get("headers") if isinstance(event.get("headers"), dict) else {})
    raw_body = event.get("body")
    if raw_body is None:
        raw_body = ""
    if not isinstance(raw_body, str):
        raise BadRequest("the request body must be text", code="BAD_EVENT")
    # Cheap bound before decoding: base64 is 4/3 of the bytes it carries.
    if len(raw_body) > max_body * 4 // 3 + 4:
        raise PayloadTooLarge(f"the request body is larger than {max_body} bytes")
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw_body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("the request body is not valid base64", code="BAD_EVENT") from exc
    else:
        body = raw_body.encode("utf-8", "surrogatepass")
    if len(body) > max_body:
        raise PayloadTooLarge(f"the request body is larger than {max_body} bytes")
    query = _query(event.get("queryString") or event.get("queryStringParameters") or {})
    request_context = event.get("requestContext") or {}
    source_ip = headers.get("x-scf-remote-addr") or (
        request_context.get("sourceIp") if isinstance(request_context, dict) else None)
    request_id = (context or {}).get("request_id") if isinstance(context, dict) else None
    return Request(method=str(event.get("httpMethod") or "").upper(),
                   path=str(event.get("path") or "/"),
                   headers=headers,
                   query=query,
                   body=body, source_ip=source_ip, request_id=request_id)


def response(status: int, payload: Any = None, headers: dict | None = None) -> dict:
    """An SCF integrated response; `payload` None means an empty body (e.g. 204)."""
    body = "" if payload is None else _json_text(payload)
    return {"isBase64Encoded": False, "statusCode": status,
            "headers": {**JSON_HEADERS, **(headers or {})}, "body": body}


def _json_text(payload: Any) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the client's own JSON: escape it
        text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return text


def error_payload(error: CloudPayError) -> dict:
    """The prepare contract: {"error": {"code", "message"}} (plus the error's public fields)."""
    return {"error": {**error.public, "code": error.code, "message": error.message}}


Handler = Callable[[Request], "tuple[int, Any]"]


class Router:
    """Routes match on the END of the path, so any gateway prefix or stage works.

    `add("GET", r"/orders/(?P<outTradeNo>[^/]+)", handler)`: the named groups become
    `request.params`.
    """

    def __init__(self):
        self._routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, path_suffix: str, handler: Handler) -> None:
        self._routes.append((method.upper(), re.compile(f"(?:^|/){path_suffix.lstrip('/')}/?$"), handler))

    def dispatch(self, request: Request) -> tuple[int, Any]:
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.search(request.path)
            if not match:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            request.params = match.groupdict()
            return handler(request)
        if allowed:
            raise MethodNotAllowed(f"use {' or '.join(sorted(set(allowed)))} on this path")
        raise NotFound("no such route", code="ROUTE_NOT_FOUND")


def serve(event: Any, context: Any, endpoint: Callable[[Request], tuple[int, Any]], *,
          name: str, max_body: int = DEFAULT_MAX_BODY,
          error_body: Callable[[CloudPayError], Any] = error_payload) -> dict:
    """Run one HTTP invocation: parse, call `endpoint`, map errors, log one line."""
    started = time.monotonic()
    request: Request | None = None
    try:
        request = parse_event(event, context, max_body=max_body)
        with deadline.for_http_invocation(context, name, started):
            status, payload = endpoint(request)
        reply = response(status, payload)
        outcome = "ok"
    except CloudPayError as error:
        status, outcome = error.status, error.code
        # 500s are ours (e.g. configuration): details go to the log, not to the caller.
        shown = error if status != 500 else CloudPayError("internal error; it has been logged",
                                                          code=error.code)
        reply = response(status, error_body(shown))
        if status >= 500:
            log(f"{name}.error", level="error", code=error.code, error=error.message,
                details=error.details, cause=_cause(error))
    except Exception as exc:  # the last line of defence: never a stack trace in a reply
        status, outcome = 500, "INTERNAL_ERROR"
        reply = response(500, error_body(CloudPayError("internal error; it has been logged")))
        log(f"{name}.crash", level="error", error=type(exc).__name__, where=where(exc))
    # `log` never raises (it escapes what stdout cannot encode), so the reply always goes out.
    log(f"{name}.request", method=request.method if request else None,
        path=request.path if request else None, status=status, outcome=outcome,
        ms=int((time.monotonic() - started) * 1000),
        requestId=request.request_id if request else None)
    flush_logs()
    return reply


def _cause(error: BaseException) -> str | None:
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else None

