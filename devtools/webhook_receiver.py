"""A shop's webhook receiver for `make run`: it verifies and prints each delivery.

    python -m devtools.webhook_receiver --port 8091 --secret "$FULFILMENT_WEBHOOK_SECRET"

Every POST is checked with `shared.webhook.verify_webhook` (the same function a shop
uses); a good one is printed as one line and answered 200, a bad one 400.  The same id
may arrive more than once (at least once delivery): the receiver says when it has seen
an id before, as a shop that acts once per fact would.  It is the README's example
receiver, made runnable.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.errors import WebhookRejected
from shared.webhook import verify_webhook

MAX_BODY = 64 * 1024


def describe(fact: dict) -> str:
    """One readable line for a fact."""
    data = fact.get("data") or {}
    parts = [fact["type"], data.get("outTradeNo") or ""]
    if "totalFee" in data:
        parts.append(f"{data['totalFee']} fen")
    if "amount" in data:
        parts.append(f"refund {data.get('outRefundNo')} {data['amount']} fen")
    if "logisticsType" in data:
        parts.append(f"logistics_type {data['logisticsType']}")
    return "  ".join(str(part) for part in parts if part != "")


class WebhookReceiver:
    def __init__(self, secret: str, *, host: str = "127.0.0.1", port: int = 0,
                 out: Callable[[str], None] | None = None, delay: float = 0.0):
        self.secret = secret
        self.delay = delay  # the shop's own work per delivery (make bench)
        self._out = out or (lambda line: print(line, flush=True))
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.facts: list[dict] = []
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/cloudpay"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def receive(self, headers: dict, body: bytes) -> int:
        if self.delay:
            time.sleep(self.delay)
        try:
            fact = verify_webhook(headers, body, self.secret)
        except WebhookRejected as error:
            self._out(f"[shop] refused a delivery: {error.code} ({error.message})")
            return 400
        with self._lock:
            again = fact["id"] in self._seen
            self._seen.add(fact["id"])
            self.facts.append(fact)
        note = "  (seen before: acted on once)" if again else ""
        self._out(f"[shop] {describe(fact)}  id={fact['id']}{note}")
        return 200

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    status, body = 413, b""
                else:
                    status = receiver.receive(dict(self.headers.items()), self.rfile.read(length))
                    body = json.dumps({"ok": status == 200}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--secret", required=True, help="FULFILMENT_WEBHOOK_SECRET")
    parser.add_argument("--delay-ms", type=int, default=0, help="take this long per delivery (make bench)")
    parser.add_argument("--quiet", action="store_true", help="print nothing per delivery")
    args = parser.parse_args(argv)
    out = (lambda line: None) if args.quiet else None
    receiver = WebhookReceiver(args.secret, port=args.port, out=out, delay=args.delay_ms / 1000).start()
    print(f"receiving at {receiver.url}; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
