"""A local Tencent Cloud SSM endpoint for the tests (GetSecretValue, TC3-signed as the
SDK sends it).  A pytest plugin (tests/conftest.py): the fixture `fake_ssm`."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET_ID = "AKIDtestSecretId0001"
SECRET_KEY = "testSecretKeyValue0001"
TOKEN = "session-token-0001"
def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class FakeSsm(ThreadingHTTPServer):
    """POST / with X-TC-Action: GetSecretValue; verifies the TC3 signature and token."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secrets: dict[tuple[str, str], object] = {}  # (name, version) -> SecretString or reply
        self.requests: list[dict] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def check_auth(self, headers, body: bytes) -> str | None:
        """The error code a real SSM would answer for bad auth, or None."""
        auth = headers.get("Authorization", "")
        if not auth.startswith("TC3-HMAC-SHA256 "):
            return "AuthFailure.SignatureFailure"
        fields = dict(part.strip().split("=", 1) for part in auth[len("TC3-HMAC-SHA256 "):].split(","))
        secret_id, date, service, _ = fields["Credential"].split("/")
        if secret_id != SECRET_ID:
            return "AuthFailure.SecretIdNotFound"
        if headers.get("X-TC-Token") != TOKEN:
            return "AuthFailure.TokenFailure"
        signed = fields["SignedHeaders"].split(";")
        canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed)
        canonical = "\n".join(["POST", "/", "", canonical_headers, ";".join(signed),
                               hashlib.sha256(body).hexdigest()])
        timestamp = headers["X-TC-Timestamp"]
        if datetime.fromtimestamp(int(timestamp), timezone.utc).strftime("%Y-%m-%d") != date:
            return "AuthFailure.SignatureFailure"
        to_sign = "\n".join(["TC3-HMAC-SHA256", timestamp, f"{date}/{service}/tc3_request",
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = _sign(_sign(_sign(("TC3" + SECRET_KEY).encode(), date), service), "tc3_request")
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, fields["Signature"]) else "AuthFailure.SignatureFailure"


class _Handler(BaseHTTPRequestHandler):
    server: FakeSsm

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = json.loads(body)
        with self.server.lock:
            self.server.requests.append({"body": request, "region": self.headers.get("X-TC-Region")})
        time.sleep(self.server.delay)
        response: dict
        if self.path != "/" or self.headers.get("X-TC-Action") != "GetSecretValue" \
                or self.headers.get("X-TC-Version") != "2019-09-23":
            response = {"Error": {"Code": "InvalidAction", "Message": "unexpected request"}}
        elif (auth_error := self.server.check_auth(self.headers, body)) is not None:
            response = {"Error": {"Code": auth_error, "Message": "auth failed"}}
        else:
            key = (request.get("SecretName"), request.get("VersionId"))
            stored = self.server.secrets.get(key)
            if stored is None:
                response = {"Error": {"Code": "ResourceNotFound", "Message": f"secret {key[0]} not found"}}
            elif isinstance(stored, dict):
                response = dict(stored)  # a whole custom reply
            else:
                response = {"SecretName": key[0], "VersionId": key[1], "SecretString": stored}
        response["RequestId"] = "req-0001"
        payload = json.dumps({"Response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def fake_ssm():
    server = FakeSsm()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)
