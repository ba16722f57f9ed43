"""A loopback fake of the WeChat Pay API for the client's tests (http.server on port 0).

It verifies every request's Authorization with the merchant *public* key over the
method, the raw path and query it received, and the raw body, so signing is proven over
the wire; it answers what the test's `handler` returns (signed like WeChat Pay's answers
with `signed`, or not).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.wechatpay import signing
from tests.keys import CERT_SERIAL_NO, MCHID, merchant_keys, sign_response


@dataclass
class Received:
    method: str
    path: str              # raw request target: path and query, as sent
    headers: dict
    body: bytes
    auth_ok: bool


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def signed(status: int, payload=None, *, raw: bytes | None = None, **sign_kwargs) -> Reply:
    """A reply signed like WeChat Pay's (JSON payload, or `raw` bytes)."""
    body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
    headers = sign_response(body, **sign_kwargs)
    headers["Content-Type"] = "application/json"
    return Reply(status, body, headers)


def unsigned(status: int, body: bytes = b"", content_type: str = "application/json") -> Reply:
    return Reply(status, body, {"Content-Type": content_type})


def _auth_ok(method: str, target: str, body: bytes, header: str | None) -> bool:
    try:
        fields = signing.parse_authorization(header or "")
    except ValueError:
        return False
    if fields["mchid"] != MCHID or fields["serial_no"] != CERT_SERIAL_NO:
        return False
    if abs(time.time() - int(fields["timestamp"])) > 300:
        return False
    message = signing.request_message(method, target, fields["timestamp"], fields["nonce_str"], body)
    return signing.rsa_verify(merchant_keys().public_key, message, fields["signature"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's pool is exercised

    def log_message(self, *args):  # quiet
        pass

    def _serve(self):
        fake: FakeWeChatPay = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, dict(self.headers.items()), body,
                            _auth_ok(self.command, self.path, body, self.headers.get("Authorization")))
        with fake.lock:
            fake.received.append(received)
        if not received.auth_ok:
            reply = unsigned(401, json.dumps({"code": "SIGN_ERROR", "message": "bad signature"}).encode())
        else:
            reply = fake.handler(received)
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = _serve


class FakeWeChatPay:
    def __init__(self):
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.handler: Callable[[Received], Reply] = lambda req: unsigned(
            404, json.dumps({"code": "NOT_FOUND", "message": "no route"}).encode())
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
