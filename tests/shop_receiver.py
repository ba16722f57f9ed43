"""A shop's webhook receiver for the tests: a real HTTP server on a loopback port.

It verifies every delivery with `shared.webhook.verify_webhook`, records it, and
answers what the test scripts: a status, a delay, or a redirect.  `stop()` takes it
down; `start()` brings it back on the same port (a receiver that is down, then back).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.errors import WebhookRejected
from shared.webhook import verify_webhook

SECRET = "shop-webhook-secret-0123456789abcdef"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    fact: dict | None          # verified and parsed, or None when the signature failed
    rejected: str | None       # the WebhookRejected code
    status: int                # what the receiver answered
    at: float


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    location: str | None = None   # with a 3xx


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class ShopReceiver:
    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.port = 0
        self._cond = threading.Condition()
        self._script: list[Answer] = []
        self.then = Answer()
        self.deliveries: list[Delivery] = []
        self.redirect_hits = 0
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/cloudpay"

    def answer(self, *answers: Answer | int, then: Answer | int | None = None) -> None:
        with self._cond:
            self._script = [a if isinstance(a, Answer) else Answer(a) for a in answers]
            if then is not None:
                self.then = then if isinstance(then, Answer) else Answer(then)

    def facts(self) -> list[dict]:
        with self._cond:
            return [d.fact for d in self.deliveries if d.fact is not None]

    def ids(self) -> list[str]:
        return [fact["id"] for fact in self.facts()]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _next(self) -> Answer:
        with self._cond:
            return self._script.pop(0) if self._script else self.then

    def _record(self, delivery: Delivery) -> None:
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                try:
                    fact, rejected = verify_webhook(headers, body, receiver.secret), None
                except WebhookRejected as error:
                    fact, rejected = None, error.code
                answer = receiver._next() if rejected is None else Answer(400)
                if answer.delay:
                    time.sleep(answer.delay)
                receiver._record(Delivery(headers, body, fact, rejected, answer.status, time.monotonic()))
                try:
                    self.send_response(answer.status)
                    if answer.location:
                        self.send_header("Location", answer.location)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):  # only a followed redirect would come here
                receiver.redirect_hits += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass

        return Handler

    def start(self) -> ShopReceiver:
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def shop():
    receiver = ShopReceiver().start()
    yield receiver
    receiver.stop()
