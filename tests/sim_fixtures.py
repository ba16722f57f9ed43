"""Fixtures: the WeChat Pay simulator, its keys, and a receiver for its notifications.

Load them as a plugin where needed:

    pytest_plugins = ["tests.sim_fixtures"]     # in the test module (or the root conftest)

- `sim_keys` (session): ephemeral key material (`devtools.sim_keys.SimKeys`).
- `sim_session` (session): the started simulator (retry schedule x 0.001: 15 s -> 15 ms).
- `simulator`: that simulator, reset before and after every test (use this one).
- `notify_receiver`: a threaded HTTP server recording every request; it answers the
  statuses given to `respond_with(...)` in arrival order, then `then` (default 204).
  `make_receiver()` makes more of them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools.sim_keys import ephemeral
from devtools.wechatpay_simulator import Simulator

SIM_RETRY_FACTOR = 0.001


@pytest.fixture(scope="session")
def sim_keys():
    return ephemeral()


@pytest.fixture(scope="session")
def sim_session(sim_keys):
    sim = Simulator(sim_keys, retry_factor=SIM_RETRY_FACTOR).start()
    yield sim
    sim.stop()


@pytest.fixture
def simulator(sim_session):
    sim_session.reset()
    yield sim_session
    sim_session.reset()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]   # names as sent (WeChat Pay sends Wechatpay-Timestamp ...)
    body: bytes
    at: float                 # time.monotonic() on arrival
    status: int               # what the receiver answered


class NotifyReceiver:
    """Records requests; answers scripted statuses (a merchant's notify_url)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._script: list[int] = []
        self._then = 204
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/notify"

    def respond_with(self, *statuses: int, then: int = 204) -> None:
        with self._cond:
            self._script = list(statuses)
            self._then = then

    def _next_status(self) -> int:
        with self._cond:
            return self._script.pop(0) if self._script else self._then

    def _record(self, received: Received) -> None:
        with self._cond:
            self.requests.append(received)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """True once `count` requests have arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _handler_class(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver._next_status()
                receiver._record(Received(self.command, self.path, dict(self.headers.items()), body, arrived,
                                          status))
                payload = b"" if status == 204 else b'{"code":"FAIL","message":"scripted"}'
                self.send_response(status)
                if status != 204:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass

        return Handler

    def start(self) -> NotifyReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def make_receiver():
    """A factory of extra receivers (stopped after the test)."""
    receivers: list[NotifyReceiver] = []

    def make() -> NotifyReceiver:
        receivers.append(NotifyReceiver().start())
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.stop()


@pytest.fixture
def notify_receiver(make_receiver):
    return make_receiver()
