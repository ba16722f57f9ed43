"""The simulator's HTTP server: read a request, apply injected faults, answer, sign.

Threaded (stdlib ThreadingHTTPServer), HTTP/1.1 keep-alive like the real API.  Every
signed answer is signed with the key the simulator's signer (signer.py) picks for the
current key mode: the public key (PUB_KEY_ID_...) or a platform certificate.
"""

from __future__ import annotations

import logging
import secrets
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from devtools.simulator import control_api, shipping, wechat_api
from devtools.simulator.errors import SimError
from devtools.simulator.faults import Fault
from devtools.simulator.protocol import HttpRequest, Reply, error_reply, json_reply
from devtools.simulator.signer import SigningKey
from shared.wechatpay import signing

if TYPE_CHECKING:
    from devtools.simulator.app import Simulator

log = logging.getLogger("devtools.simulator")

MAX_REQUEST_BODY = 1024 * 1024


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: Simulator):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, SimRequestHandler)
        self.sim = sim

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout tests) is normal; anything else is logged in full.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("client %s went away", client_address)
        else:
            log.exception("error while serving %s", client_address)


class SimRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WeChatPaySimulator/1.0"
    sys_version = ""
    timeout = 30   # an idle keep-alive connection ends after this
    # Headers and body go out in two writes: without TCP_NODELAY the second waits for the
    # client's delayed ACK (about 40 ms on Linux), which WeChat Pay's servers never add.
    disable_nagle_algorithm = True
    server: SimHTTPServer

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        sim = self.server.sim
        request = self._read_request()
        if request is None:
            return
        try:
            if request.path == "/_sim" or request.path.startswith("/_sim/"):
                self._send(control_api.handle(sim, request))
                return
            sim.count_request(request.method, request.path)
            fault = sim.fault_book.take(request.method, request.path)
            reply = self._apply_fault(sim, fault, request) if fault else wechat_api.handle(sim, request)
        except Exception:   # a simulator bug: say so, keep serving
            log.exception("simulator failed on %s %s", request.method, request.path)
            reply = error_reply(SimError(500, "SIMULATOR_BUG", "the simulator failed; see its log"))
            fault = None
        if reply is not None:
            self._send(reply, fault)

    def _apply_fault(self, sim: Simulator, fault: Fault, request: HttpRequest) -> Reply | None:
        """The reply for a faulted request; None when the connection is just dropped."""
        sim.count("faults_triggered")
        if fault.delay_ms:
            sim.pause(fault.delay_ms / 1000)
        if fault.disconnect:
            self.close_connection = True
            return None
        signed = request.path.startswith("/v3/")   # only WeChat Pay's answers carry a signature
        if fault.status:
            body = fault.error_body(request.path).encode("utf-8")
            content_type = "application/json; charset=utf-8" if body[:1] in (b"{", b"[") else "text/plain"
            return Reply(fault.status, body, content_type, signed=signed)
        if fault.errcode is not None:
            reply = json_reply(200, shipping.error_answer(fault.errcode))
            reply.content_type = wechat_api.WEIXIN_JSON_TYPE
            return reply
        return wechat_api.handle(sim, request)

    def _read_request(self) -> HttpRequest | None:
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send a Content-Length (chunked bodies are not accepted)")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, "bad Content-Length")
            return None
        if length > MAX_REQUEST_BODY:
            self._refuse(413, f"request body larger than {MAX_REQUEST_BODY} bytes")
            return None
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        return HttpRequest(method=self.command, target=self.path, path=parts.path,
                           query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                           headers=self.headers, body=body, client_ip=self.client_address[0])

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(error_reply(SimError(status, "BAD_REQUEST", message)))

    def _send(self, reply: Reply, fault: Fault | None = None) -> None:
        sim = self.server.sim
        headers = dict(reply.headers)
        if reply.signed:
            headers["Request-ID"] = secrets.token_hex(16)
            if not (fault and fault.unsigned):
                headers.update(_signature_headers(sim, reply.body, broken=bool(fault and fault.bad_signature),
                                                  key=reply.sign_with))
        self.send_response(reply.status)
        if reply.content_type and reply.status != 204:
            self.send_header("Content-Type", reply.content_type)
        if reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.body and reply.status not in (204, 304):
            self.wfile.write(reply.body)


def _signature_headers(sim: Simulator, body: bytes, *, broken: bool, key: SigningKey | None = None) -> dict[str, str]:
    """WeChat Pay's response signature over `timestamp\\nnonce\\nbody\\n`, by `key` or
    else the key the key mode chooses; Wechatpay-Serial names that key."""
    key = key or sim.signer.choose()
    timestamp, nonce_str = str(int(sim.clock())), signing.nonce(32)
    signed_body = body + b"tampered" if broken else body
    signature = sim.signer.sign(key, signing.response_message(timestamp, nonce_str, signed_body))
    return {
        "Wechatpay-Nonce": nonce_str,
        "Wechatpay-Signature": signature,
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Serial": key.serial,
        "Wechatpay-Signature-Type": signing.SCHEMA,
    }
