"""A small HTTP(S) client on the standard library's `http.client`, for every outbound call.

Why not `requests`: on SCF every cold start pays for imports, and `requests` (with
urllib3, idna, charset_normalizer) costs more than all of this module's work; the
calls here need none of what it adds.  What this client does:
- keep-alive: idle connections are kept per host (a few, thread-safe) and reused; one
  that the server has closed meanwhile (SCF freezes instances for minutes) is noticed
  before reuse and dropped, and none is kept idle longer than `IDLE_SECONDS`;
- bounded time: a connect timeout, a read timeout per socket operation, and an overall
  `deadline` (epoch-free `time.monotonic()` value) that also caps a server dripping
  bytes slowly; `max_body` caps what is read;
- no redirect is ever followed (a 3xx is just a status for the caller);
- TLS verified against certifi's CA bundle when it is installed, else the system's;
- failures are `HttpError`, whose message names the host and the kind of failure but
  never the URL's path or query (a query may hold a secret, e.g. code2session's).
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.deadline import earliest

IDLE_SECONDS = 30.0
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 8.0
USER_AGENT = "cloudpay-scf"
_CHUNK = 64 * 1024


class HttpError(Exception):
    """The call did not produce a complete response (refused, timed out, TLS, protocol).
    `kind` is "connect", "timeout", "tls", "protocol" or "too_large"."""

    def __init__(self, kind: str, host: str, cause: BaseException | None = None):
        self.kind = kind
        self.host = host
        self.cause = type(cause).__name__ if cause is not None else None
        super().__init__(f"{kind} failure talking to {host}" + (f" ({self.cause})" if self.cause else ""))


class ResponseHeaders(Mapping):
    """Case-insensitive, read-only response headers (repeated ones joined with ", ")."""

    def __init__(self, items: list[tuple[str, str]]):
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items:
            key = name.lower()
            if key in self._items:
                value = f"{self._items[key][1]}, {value}"
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self):
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, default=None):
        entry = self._items.get(name.lower())
        return default if entry is None else entry[1]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: ResponseHeaders
    body: bytes

    def ok(self) -> bool:
        return 200 <= self.status < 300


_ssl_context = None
_ssl_lock = threading.Lock()


def _tls():
    """One verifying TLS context per process (loading the CA bundle is not free)."""
    global _ssl_context
    if _ssl_context is None:
        with _ssl_lock:
            if _ssl_context is None:
                import ssl

                try:
                    import certifi

                    context = ssl.create_default_context(cafile=certifi.where())
                except ImportError:
                    context = ssl.create_default_context()
                _ssl_context = context
    return _ssl_context


def _os_kind(exc: OSError) -> str:
    return "tls" if type(exc).__module__ == "ssl" else "connect"


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """True when the server closed an idle connection (it is readable: EOF or junk)."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class HttpClient:
    """Thread-safe; build one per warm instance and reuse it."""

    def __init__(self, *, max_idle_per_host: int = 4, user_agent: str = USER_AGENT,
                 clock=time.monotonic):
        self._max_idle = max_idle_per_host
        self._user_agent = user_agent
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[tuple[float, http.client.HTTPConnection]]] = {}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, connection in connections:
                connection.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                read_timeout: float = DEFAULT_READ_TIMEOUT, deadline: float | None = None,
                max_body: int | None = None) -> HttpResponse:
        """Send one request and read the whole answer.  `deadline` (a `time.monotonic()`
        value) bounds everything, as does the invocation's (`shared.deadline`); past it
        the call fails with kind "timeout"."""
        deadline = earliest(deadline)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http(s) URL")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent_headers = {"User-Agent": self._user_agent, "Accept-Encoding": "identity", **(headers or {})}
        if body is not None:
            sent_headers["Content-Length"] = str(len(body))

        for attempt in (1, 2):
            # A second attempt only after an idle connection turned out to be closed by the
            # server: the request got no answer on it, so sending it again is safe.
            connection = self._take(key) if attempt == 1 else None
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._connect(key, self._bounded(connect_timeout, deadline))
                connection.sock.settimeout(self._bounded(read_timeout, deadline))
                connection.request(method, target, body=body, headers=sent_headers)
                response = connection.getresponse()
                data = self._read(connection, response, read_timeout, deadline, max_body, host)
            except HttpError:
                if connection is not None:
                    connection.close()
                raise
            except TimeoutError as exc:
                connection.close()
                raise HttpError("timeout", host, exc) from None
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                stale = isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if reused and stale:
                    continue
                kind = "protocol" if isinstance(exc, http.client.HTTPException) else _os_kind(exc)
                raise HttpError(kind, host, exc) from None
            result = HttpResponse(response.status, ResponseHeaders(response.getheaders()), data)
            if response.will_close:
                connection.close()
            else:
                self._give_back(key, connection)
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _bounded(self, timeout: float, deadline: float | None) -> float:
        if deadline is None:
            return timeout
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise HttpError("timeout", "(deadline passed)")
        return min(timeout, remaining)

    def _connect(self, key: tuple[str, str, int], timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.connect()
            # As urllib3 does: a request is never held back waiting for an ACK (Nagle).
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as exc:
            connection.close()
            raise HttpError("timeout", host, exc) from None
        except OSError as exc:
            connection.close()
            raise HttpError(_os_kind(exc), host, exc) from None
        return connection

    def _read(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
              read_timeout: float, deadline: float | None, max_body: int | None, host: str) -> bytes:
        chunks, size = [], 0
        while True:
            # read1: one socket read at a time, so a server dripping bytes meets the deadline.
            connection.sock.settimeout(self._bounded(read_timeout, deadline))
            chunk = response.read1(_CHUNK)
            if not chunk:
                response.read()  # marks the response complete, so the connection can be reused
                return b"".join(chunks)
            size += len(chunk)
            if max_body is not None and size > max_body:
                raise HttpError("too_large", host)
            chunks.append(chunk)

    def _take(self, key) -> http.client.HTTPConnection | None:
        now = self._clock()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                since, connection = idle.pop()
            if now - since > IDLE_SECONDS or _dropped(connection):
                connection.close()
                continue
            return connection

    def _give_back(self, key, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append((self._clock(), connection))
                return
        connection.close()
