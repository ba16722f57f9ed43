"""shared.http against real loopback servers: keep-alive, stale connections, bounds, TLS."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.http import HttpClient, HttpError


class Server:
    """A keep-alive HTTP/1.1 server whose answers the test scripts."""

    def __init__(self):
        self.connections = 0
        self.requests: list[tuple[str, str, bytes]] = []
        self.handler = lambda request: (200, {"X-Answer": "yes"}, b"hello")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle(self):
                server.connections += 1
                super().handle()

            def do_GET(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.command, self.path, body))
                result = server.handler(self)
                if result is None:
                    return
                status, headers, payload = result
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.stop()


def test_answers_headers_and_body_and_keeps_the_connection(server):
    client = HttpClient()
    for _ in range(5):
        response = client.request("GET", f"{server.url}/a?b=1")
        assert (response.status, response.body) == (200, b"hello") and response.ok()
        assert response.headers["x-answer"] == "yes" and response.headers.get("X-ANSWER") == "yes"
    assert server.connections == 1
    assert server.requests[0][:2] == ("GET", "/a?b=1")


def test_post_sends_the_exact_body(server):
    client = HttpClient()
    client.request("POST", f"{server.url}/p", body=b'{"a":1}', headers={"Content-Type": "application/json"})
    assert server.requests == [("POST", "/p", b'{"a":1}')]


def test_stale_keep_alive_connection_is_replaced_without_an_error():
    """The server closes each connection after the answer without saying so (no
    Connection: close), as a frozen-then-thawed SCF instance finds its sockets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted = []

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    client = HttpClient()
    try:
        for _ in range(3):
            assert client.request("GET", f"http://127.0.0.1:{port}/").body == b"ok"
            time.sleep(0.05)  # the close reaches us before the next request
        assert len(accepted) == 3
    finally:
        listener.close()


def test_redirects_are_never_followed(server):
    server.handler = lambda request: (302, {"Location": "http://127.0.0.1:9/elsewhere"}, b"")
    response = HttpClient().request("GET", server.url)
    assert response.status == 302 and len(server.requests) == 1


def test_read_timeout_and_connect_failure_are_http_errors_without_the_query():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts, never answers
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            HttpClient().request("GET", f"http://127.0.0.1:{port}/x?secret=S3CRET", read_timeout=0.2)
        assert caught.value.kind == "timeout" and time.monotonic() - started < 2
        assert "S3CRET" not in str(caught.value) and "/x" not in str(caught.value)
    finally:
        listener.close()
    with pytest.raises(HttpError) as caught:
        HttpClient().request("GET", f"http://127.0.0.1:{port}/x?secret=S3CRET")
    assert caught.value.kind == "connect" and "S3CRET" not in str(caught.value)


def test_the_deadline_caps_a_server_that_drips(server):
    def drip(request):
        request.send_response(200)
        request.send_header("Content-Length", "1000")
        request.end_headers()
        for _ in range(100):
            try:
                request.wfile.write(b"x")
                request.wfile.flush()
            except OSError:
                return None
            time.sleep(0.05)
        return None

    server.handler = drip
    started = time.monotonic()
    with pytest.raises(HttpError) as caught:
        HttpClient().request("GET", server.url, read_timeout=1.0, deadline=time.monotonic() + 0.4)
    assert caught.value.kind == "timeout" and time.monotonic() - started < 1.5


def test_a_spent_deadline_fails_before_connecting(server):
    with pytest.raises(HttpError) as caught:
        HttpClient().request("GET", server.url, deadline=time.monotonic() - 1)
    assert caught.value.kind == "timeout" and server.connections == 0


def test_bodies_over_the_limit_are_refused(server):
    server.handler = lambda request: (200, {}, b"x" * 100_000)
    with pytest.raises(HttpError) as caught:
        HttpClient().request("GET", server.url, max_body=50_000)
    assert caught.value.kind == "too_large"
    assert HttpClient().request("GET", server.url, max_body=100_000).body == b"x" * 100_000


def test_tls_is_verified():
    """A TLS server with a certificate no CA signed: the handshake is refused."""
    import datetime
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as pem:
        pem.write(cert.public_bytes(serialization.Encoding.PEM))
        pem.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem.name)
    listener = context.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
    port = listener.getsockname()[1]

    def accept():
        try:
            connection, _ = listener.accept()
            connection.close()
        except (OSError, ssl.SSLError):
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        with pytest.raises(HttpError) as caught:
            HttpClient().request("GET", f"https://127.0.0.1:{port}/", connect_timeout=2)
        assert caught.value.kind == "tls"
    finally:
        listener.close()


def test_many_threads_share_one_client(server):
    client = HttpClient(max_idle_per_host=4)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: client.request("GET", f"{server.url}/{i}").body, range(64)))
    assert results == [b"hello"] * 64
    assert server.connections <= 8 + 4  # reused, not one per request
    client.close()
