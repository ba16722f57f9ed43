"""Fixtures: the WeChat Pay simulator, its keys, and a receiver for its notifications.

Load them as a plugin where needed:

    pytest_plugins = ["tests.sim_fixtures"]     # in the test module (or the root conftest)

- `sim_keys` (session): ephemeral key material (`devtools.sim_keys.SimKeys`).
- `sim_session` (session): the started simulator (retry schedule x 0.001: 15 s -> 15 ms).
- `simulator`: that simulator, reset before and after every test (use this one).
- `notify_receiver`: a threaded HTTP server recording every request; it answers the
  statuses given to `respond_with(...)` in arrival order, then `then` (default 204).
  `make_receiver()` makes more of them.
- `sim_merchant`: the merchant's side over HTTP (`SimMerchant`): merchant-signed /v3/
  calls (`call`, `prepay`, `query`) and the control API (`control`), on `simulator`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from devtools.sim_keys import ephemeral
from devtools.wechatpay_simulator import Simulator
from shared.wechatpay import signing

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


class SimMerchant:
    """The merchant talking to the simulator over HTTP: signed /v3/ calls and the control API."""

    OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

    def __init__(self, keys, sim):
        self.keys = keys
        self.sim = sim
        self.http = requests.Session()

    def call(self, method: str, target: str, body: object = None, *, signed: bool = True) -> requests.Response:
        """A /v3/ request signed with the merchant key (body: a dict sent as JSON, or bytes)."""
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if signed:
            headers["Authorization"] = signing.authorization_header(
                self.keys.mchid, self.keys.merchant_serial, self.keys.merchant_private_key, method, target, data,
                str(int(time.time())), signing.nonce())
        return self.http.request(method, self.sim.url + target, data=data, headers=headers, timeout=10)

    def prepay(self, out_trade_no: str, total: int = 1990, notify_url: str = "http://127.0.0.1:9/notify",
               **extra) -> requests.Response:
        body = {"appid": self.keys.appid, "mchid": self.keys.mchid, "description": "Oolong tea 250g",
                "out_trade_no": out_trade_no, "notify_url": notify_url, "amount": {"total": total, "currency": "CNY"},
                "payer": {"openid": self.OPENID}, **extra}
        response = self.call("POST", "/v3/pay/transactions/jsapi", body)
        assert response.status_code == 200, response.text
        return response

    def query(self, out_trade_no: str) -> requests.Response:
        return self.call("GET", f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.keys.mchid}")

    def control(self, method: str, path: str, body: object = None) -> requests.Response:
        return self.http.request(method, self.sim.url + path, json=body, timeout=30)


@pytest.fixture
def sim_merchant(sim_keys, simulator):
    merchant = SimMerchant(sim_keys, simulator)
    yield merchant
    merchant.http.close()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]   # names as sent (WeChat Pay sends Wechatpay-Timestamp ...)
    body: bytes
    at: float                 # time.monotonic() on arrival
    status: int               # what the receiver answered


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    # The simulator sends up to 100 copies at once: the default listen backlog (5) would
    # reset some of those connections before they are accepted.
    request_queue_size = 128


class NotifyReceiver:
    """Records requests; answers scripted statuses (a merchant's notify_url)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._script: list[int] = []
        self._then = 204
        self.requests: list[Received] = []
        self._server = _ReceiverServer(("127.0.0.1", 0), self._handler_class())
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
