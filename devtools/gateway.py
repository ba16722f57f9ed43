"""A local HTTP front for SCF handlers: HTTP request in, SCF event out, SCF reply back to HTTP.

    gateway = Gateway({"/prepare": load_handler("functions/prepare/index.py"),
                       "/callback": load_handler("functions/callback/index.py")}).start()
    gateway.url   # http://127.0.0.1:PORT ; POST {url}/prepare/orders reaches prepare

Event shapes (Tencent Cloud SCF docs 583/12513 for API Gateway, 583/96099 for Function URLs):
- "url" (default), a Function URL: `httpMethod`, `path`, `headers` (lower-case names,
  client IP in `x-scf-remote-addr`), `queryString`, `body` (text).  Each Function URL
  is its own host, so the route prefix is stripped from `path` by default.
- "apigw", the legacy API Gateway: adds `requestContext` {serviceId, path, httpMethod,
  requestId, identity, sourceIp, stage}, `isBase64Encoded`, `queryStringParameters`,
  `pathParameters`, `headerParameters`, `stageVariables`; headers keep their case; the
  path keeps the prefix.  The body is base64-encoded when its content type is not
  text or JSON (`base64_bodies="auto"`), or always / never.
Repeated query keys give their first value; repeated headers are joined with ",".
A body that is not UTF-8 text is base64-encoded in either shape.

Replies: `{statusCode, headers, body, isBase64Encoded}` becomes the HTTP response (a
header value may be a list).  In "url" shape any other JSON value is sent as 200
application/json, as a Function URL does; in "apigw" shape it is an invalid integrated
response.  A handler exception answers 502 `{"errorCode": -1, "errorMessage": ...}`
with no traceback (the traceback goes to the log).  Request bodies are limited to
6 MB (413).  Handlers run on the server's threads, several at once.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.deadline import FUNCTION_TIMEOUT_S, SCF_DEFAULT_TIMEOUT_S

log = logging.getLogger("devtools.gateway")

MAX_BODY = 6 * 1024 * 1024   # SCF's synchronous request limit
SHAPES = ("url", "apigw")
BASE64_MODES = ("auto", "always", "never")
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_INVALID_FORMAT = "Invalid scf response format. please check your scf response format."
_module_numbers = itertools.count(1)

Handler = Callable[[dict, dict], Any]


def load_handler(path: str | Path, attribute: str = "main_handler") -> Handler:
    """Load a handler file as SCF does (by file, not by package), under a unique module name."""
    path = Path(path).resolve()
    name = f"scf_{path.parent.name}_{path.stem}_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a handler from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attribute)


# --- events and context -----------------------------------------------------------------

def _is_text(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return (kind.startswith("text/") or kind.endswith(("/json", "+json", "/xml", "+xml"))
            or kind in ("application/x-www-form-urlencoded", "application/javascript", ""))


def _body_fields(body: bytes, content_type: str, base64_mode: str) -> tuple[str, bool]:
    """(event body, isBase64Encoded)."""
    if not body:
        return "", False
    encode = base64_mode == "always" or (base64_mode == "auto" and not _is_text(content_type))
    if not encode:
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            encode = True
    return base64.b64encode(body).decode("ascii"), True


def function_url_event(method: str, path: str, headers: list[tuple[str, str]], query: dict[str, str],
                       body: bytes, client_ip: str) -> dict:
    """A Function URL event: lower-case headers, client IP in x-scf-remote-addr."""
    lowered: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    lowered["x-scf-remote-addr"] = client_ip   # set by SCF: a client cannot forge it
    text, encoded = _body_fields(body, lowered.get("content-type", ""), "never")
    event = {"httpMethod": method, "path": path, "headers": lowered, "queryString": dict(query), "body": text}
    if encoded:   # not documented for Function URLs; the gateway does what API Gateway does
        event["isBase64Encoded"] = True
    return event


def apigw_event(method: str, path: str, headers: list[tuple[str, str]], query: dict[str, str], body: bytes,
                client_ip: str, *, api_path: str, stage: str, request_id: str, base64_mode: str = "auto") -> dict:
    """An API Gateway event: headers in their original case, requestContext, optional base64 body."""
    original: dict[str, str] = {}
    for name, value in headers:
        existing = next((key for key in original if key.lower() == name.lower()), None)
        if existing is None:
            original[name] = value
        else:
            original[existing] = f"{original[existing]},{value}"
    content_type = next((v for k, v in original.items() if k.lower() == "content-type"), "")
    text, encoded = _body_fields(body, content_type, base64_mode)
    return {
        "httpMethod": method, "path": path, "headers": original, "queryString": dict(query),
        "queryStringParameters": dict(query), "pathParameters": {}, "headerParameters": {},
        "stageVariables": {"stage": stage}, "body": text, "isBase64Encoded": encoded,
        "requestContext": {"serviceId": "service-local0000", "path": api_path, "httpMethod": method,
                           "requestId": request_id, "identity": {}, "sourceIp": client_ip, "stage": stage},
    }


def scf_context(function_name: str, request_id: str, *, time_limit_ms: int = 3000,
                memory_limit_mb: int = 128) -> dict:
    """The context dict SCF passes (583/9210), with placeholder account values."""
    return {
        "request_id": request_id, "function_name": function_name, "function_version": "$LATEST",
        "namespace": "default", "memory_limit_in_mb": memory_limit_mb, "time_limit_in_ms": time_limit_ms,
        "tencentcloud_region": "ap-guangzhou", "tencentcloud_appid": "1250000000",
        "tencentcloud_uin": "100000000001",
        # SCF puts the function's variables here; the gateway does not copy secrets around.
        "environment": "{}", "environ": "",
    }


# --- replies ----------------------------------------------------------------------------

class InvalidReply(ValueError):
    """The handler returned something SCF cannot turn into an HTTP response."""


def _header_items(headers: object) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if not isinstance(headers, dict):
        raise InvalidReply("headers must be an object")
    items = []
    for name, value in headers.items():
        if str(name).lower() in _HOP_BY_HOP:
            continue
        for one in value if isinstance(value, list) else [value]:
            items.append((str(name), str(one)))
    return items


def http_reply(result: Any, shape: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for a handler's return value; InvalidReply if unusable."""
    if isinstance(result, dict) and "statusCode" in result:
        status = result["statusCode"]
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise InvalidReply("statusCode must be an integer HTTP status")
        body = result.get("body")
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise InvalidReply("body must be a string")
        if result.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(body, validate=True)
            except ValueError as exc:
                raise InvalidReply("isBase64Encoded is true but body is not base64") from exc
        else:
            raw = body.encode("utf-8")
        return status, _header_items(result.get("headers")), raw
    if shape == "apigw":
        raise InvalidReply("an integrated response needs statusCode")
    try:
        raw = json.dumps(result, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidReply("the return value is not JSON") from exc
    return 200, [("Content-Type", "application/json")], raw


# --- the server -------------------------------------------------------------------------

class Gateway:
    def __init__(self, routes: dict[str, Handler], shape: str = "url", *, strip_prefix: bool | None = None,
                 base64_bodies: str = "auto", stage: str = "release", time_limit_ms: int | None = None,
                 memory_limit_mb: int = 128, function_names: dict[str, str] | None = None,
                 max_body: int = MAX_BODY):
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}")
        if base64_bodies not in BASE64_MODES:
            raise ValueError(f"base64_bodies must be one of {BASE64_MODES}")
        self.shape = shape
        self.strip_prefix = (shape == "url") if strip_prefix is None else strip_prefix
        self.base64_bodies = base64_bodies
        self.stage = stage
        self.time_limit_ms = time_limit_ms
        self.memory_limit_mb = memory_limit_mb
        self.max_body = max_body
        self._routes: dict[str, Handler] = {}
        self._names: dict[str, str] = {}
        for prefix, handler in routes.items():
            self.add_route(prefix, handler, (function_names or {}).get(prefix))
        self._server: _GatewayServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def _time_limit_ms(self, name: str) -> int:
        """The given limit; else our function's timeout from serverless.yml, else SCF's 3 s default."""
        if self.time_limit_ms is not None:
            return self.time_limit_ms
        return FUNCTION_TIMEOUT_S.get(name, SCF_DEFAULT_TIMEOUT_S) * 1000

    def add_route(self, prefix: str, handler: Handler, name: str | None = None) -> None:
        """Serve `handler` under `prefix` (also once started: the URL can be known first)."""
        prefix = _normal_prefix(prefix)
        self._names[prefix] = name or prefix.strip("/").replace("/", "-") or "default"
        self._routes[prefix] = handler

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Gateway:
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        self._server = _GatewayServer((host, port), self)
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._url = f"http://{shown}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="scf-gateway", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the gateway is not started")
        return self._url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Gateway:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def route(self, path: str) -> str | None:
        """The longest route prefix that owns `path` (on a segment boundary)."""
        best = None
        for prefix in self._routes:
            owns = prefix == "/" or path == prefix or path.startswith(prefix + "/")
            if owns and (best is None or len(prefix) > len(best)):
                best = prefix
        return best

    def invoke(self, prefix: str, method: str, path: str, headers: list[tuple[str, str]], query: dict[str, str],
               body: bytes, client_ip: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Build the event, call the handler, shape its reply (what one HTTP request does)."""
        request_id = str(uuid.uuid4())
        name = self._names[prefix]
        event_path = path
        if self.strip_prefix and prefix != "/":
            event_path = path[len(prefix):] or "/"
        if self.shape == "url":
            event = function_url_event(method, event_path, headers, query, body, client_ip)
        else:
            event = apigw_event(method, event_path, headers, query, body, client_ip, api_path=prefix,
                                stage=self.stage, request_id=request_id, base64_mode=self.base64_bodies)
        context = scf_context(name, request_id, time_limit_ms=self._time_limit_ms(name),
                              memory_limit_mb=self.memory_limit_mb)
        try:
            result = self._routes[prefix](event, context)
        except Exception:
            log.exception("function %s raised (request %s)", name, request_id)
            return _error(502, {"errorCode": -1, "errorMessage": "user code exception caught",
                                "requestId": request_id})
        try:
            return http_reply(result, self.shape)
        except InvalidReply as exc:
            log.error("function %s returned an invalid reply: %s (request %s)", name, exc, request_id)
            if self.shape == "apigw":
                return _error(502, {"errno": 403, "error": _INVALID_FORMAT})
            return _error(502, {"errorCode": -1, "errorMessage": f"{_INVALID_FORMAT} ({exc})",
                                "requestId": request_id})


def _normal_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"route prefixes start with /: {prefix!r}")
    return prefix.rstrip("/") or "/"


def _error(status: int, payload: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(payload).encode("utf-8")


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    # A Function URL takes many connections at once; WeChat Pay may send dozens of copies of
    # a notification together.  The default listen backlog (5) lets a loaded machine drop
    # connects past the sender's timeout.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], gateway: Gateway):
        super().__init__(address, _GatewayHandler)
        self.gateway = gateway


class _GatewayHandler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body
    protocol_version = "HTTP/1.1"
    server_version = "scf-local-gateway/1.0"
    sys_version = ""
    timeout = 30
    server: _GatewayServer

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        gateway = self.server.gateway
        body = self._read_body(gateway.max_body)
        if body is None:
            return
        parts = urlsplit(self.path)
        prefix = gateway.route(parts.path)
        if prefix is None:
            self._send(*_error(404, {"errorMessage": f"no function is routed at {parts.path}"}))
            return
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(key, value)
        self._send(*gateway.invoke(prefix, self.command, parts.path, list(self.headers.items()), query, body,
                                   self.client_address[0]))

    def _read_body(self, limit: int) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(*_error(411, {"errorMessage": "send a Content-Length (chunked bodies are not accepted)"}))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(*_error(400, {"errorMessage": "bad Content-Length"}))
            return None
        if length > limit:
            self.close_connection = True   # the body is not read: drop the connection after answering
            self._send(*_error(413, {"errorMessage": f"request body larger than {limit} bytes"}))
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)
