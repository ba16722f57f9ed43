"""WeChat Pay APIv3 client: prepay, query, close, refund, trade bill, requestPayment params.

One `WeChatPayClient` per warm instance (built by `shared.runtime`), holding one
keep-alive `shared.http.HttpClient`.  Every request is signed (`Authorization: WECHATPAY2-SHA256-RSA2048
...`, merchant key) and every 2xx response must carry a valid WeChat Pay signature over
its raw body (public-key mode: `Wechatpay-Serial` must be our `PUB_KEY_ID_...`), else
`WeChatPayBadResponse`.  Failures are told apart for the callers:

- `WeChatPayRejected`    WeChat Pay answered non-2xx ("it said no"); `.wechat_code` is its
                         code (`ORDER_NOT_EXIST`, `PARAM_ERROR`, ...) or `HTTP_<status>`
                         when the body was not WeChat's error JSON (a proxy's 502 page).
- `WeChatPayUnreachable` transport failure or timeout: the outcome is unknown (a POST may
                         have landed), so callers must reconcile, not assume failure.
- `WeChatPayBadResponse` an answer we must not trust (unsigned, badly signed, not JSON,
                         bill hash mismatch, download URL on a foreign host).

Amounts are integers in fen; `bool` and `float` are refused.  Thread-safe: the client
keeps no per-call state, the HTTP client's connection pool is thread-safe, and the
clock and nonce functions are injected (tests make them deterministic).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from shared import deadline
from shared.errors import (
    NotificationRejected,
    WeChatPayBadResponse,
    WeChatPayRejected,
    WeChatPayUnreachable,
)
from shared.http import HttpClient, HttpError
from shared.log import log
from shared.wechatpay import signing
from shared.wechatpay.notification import verify_signature

USER_AGENT = "cloudpay-scf"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 8.0
# Bills can be large; the download gets a longer read timeout than API calls.
DEFAULT_BILL_READ_TIMEOUT = 30.0
DEFAULT_MAX_BILL_BYTES = 50 * 1024 * 1024
# Signed responses older or newer than this are refused, as the official SDKs do.
RESPONSE_TOLERANCE = 300
# 429 FREQUENCY_LIMITED: up to 3 more tries after 0.25 s, 0.5 s, 1 s (each x 0.5..1.5).
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_BASE_S = 0.25


def _jitter() -> float:
    return 0.5 + random.random()  # noqa: S311 - spreading retries, not a secret

_OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_OUT_REFUND_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_OPENID_RE = re.compile(r"[0-9A-Za-z_\-]{1,128}")
_PREPAY_ID_RE = re.compile(r"[0-9A-Za-z_\-]{1,128}")
_RFC3339_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                         r"(Z|[+-][0-9]{2}:[0-9]{2})")
_BILL_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BILL_TYPES = ("ALL", "SUCCESS", "REFUND")
_WECHAT_CODE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_SHA1_HEX_RE = re.compile(r"[0-9a-fA-F]{40}")
_MAX_MESSAGE = 256
# WeChat Pay's main and backup API hosts: a bill applied for on one may be served by the
# other.  Any other download host is refused (see `_download`).
_WECHATPAY_HOSTS = frozenset({"api.mch.weixin.qq.com", "api2.mch.weixin.qq.com", "api.wechatpay.cn",
                              "api2.wechatpay.cn"})


def _fen(name: str, value: Any) -> int:
    """An amount in fen: a positive int (bool and float are refused, as is 0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of fen, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive (fen)")
    return value


def _text(name: str, value: Any, pattern: re.Pattern | None = None, max_len: int | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{name} has an invalid format")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} is longer than {max_len} characters")
    return value


def _quote(piece: str) -> str:
    """One path segment, percent-encoded ('/' included), so it cannot change the route."""
    return quote(piece, safe="")


class WeChatPayClient:
    """Signed APIv3 calls for one merchant.

    Build it with `WeChatPayClient.from_config(config, keys=...)`; the constructor takes
    the pieces explicitly so tests can inject `clock` (epoch seconds), `nonce_func`,
    `sleep` and `jitter`.

    Two kinds of retry, both bounded by the invocation's deadline (`shared.deadline`):
    - the backup domain: a call that could not connect, timed out or got a 5xx is sent
      once more to `api_base_backup` (WeChat Pay's cross-city disaster recovery, as the
      official SDKs do).  Every call here is safe to repeat: a prepay with the same
      parameters, a query, a close, a refund with the same out_refund_no, a bill;
    - rate limits: `429 FREQUENCY_LIMITED` is retried after a back-off with jitter (at
      most `rate_limit_retries` times); then the caller gets the error, and the sweep
      slows down instead of hammering.
    """

    def __init__(self, *, mchid: str, appid: str, private_key, cert_serial_no: str, keys,
                 notify_url: str | None, api_base: str, api_base_backup: str | None = None,
                 apiv3_key: bytes | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 read_timeout: float = DEFAULT_READ_TIMEOUT,
                 bill_read_timeout: float = DEFAULT_BILL_READ_TIMEOUT,
                 max_bill_bytes: int = DEFAULT_MAX_BILL_BYTES,
                 rate_limit_retries: int = RATE_LIMIT_RETRIES,
                 clock: Callable[[], float] = time.time,
                 nonce_func: Callable[[], str] = signing.nonce,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = _jitter,
                 http: HttpClient | None = None):
        for name, value in (("mchid", mchid), ("appid", appid), ("cert_serial_no", cert_serial_no),
                            ("api_base", api_base)):
            if not value:
                raise ValueError(f"WeChatPayClient needs {name}")
        if private_key is None or keys is None:
            raise ValueError("WeChatPayClient needs the merchant private key and WeChat Pay's keys")
        self.mchid = mchid
        self.appid = appid
        self._private_key = private_key
        self._cert_serial_no = cert_serial_no
        self.keys = keys
        self._apiv3_key = apiv3_key
        self.notify_url = notify_url
        self.api_base = api_base.rstrip("/")
        self._bases = [self._origin_of(self.api_base)]
        if api_base_backup and api_base_backup.rstrip("/") != self.api_base:
            self._bases.append(self._origin_of(api_base_backup.rstrip("/")))
        self._origin = self._bases[0][:2]
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.bill_read_timeout = bill_read_timeout
        self.max_bill_bytes = max_bill_bytes
        self.rate_limit_retries = rate_limit_retries
        self._clock = clock
        self._nonce = nonce_func
        self._sleep = sleep
        self._jitter = jitter
        self._http = http or HttpClient()

    @staticmethod
    def _origin_of(base_url: str) -> tuple[str, str, str]:
        """(scheme, netloc, path prefix) of a base URL; the prefix is signed with the path."""
        base = urlsplit(base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError("api_base must be an http(s) URL")
        return base.scheme.lower(), base.netloc.lower(), base.path.rstrip("/")

    @classmethod
    def from_config(cls, config, *, keys=None, **kwargs) -> WeChatPayClient:
        """The client for a loaded `shared.config.Config` (roles prepare / reconcile)."""
        from shared.wechatpay.keys import key_set_from_config

        return cls(mchid=config.wechatpay_mchid, appid=config.wechat_appid,
                   private_key=config.wechatpay_private_key,
                   cert_serial_no=config.wechatpay_cert_serial_no,
                   keys=keys if keys is not None else key_set_from_config(config),
                   notify_url=config.wechatpay_notify_url,
                   api_base=config.wechatpay_api_base, api_base_backup=config.wechatpay_api_base_backup,
                   apiv3_key=config.wechatpay_apiv3_key, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"WeChatPayClient(mchid={self.mchid!r}, api_base={self.api_base!r})"

    # --- transport ------------------------------------------------------------------

    def _authorization(self, method: str, signed_path: str, body: bytes) -> str:
        return signing.authorization_header(
            self.mchid, self._cert_serial_no, self._private_key, method, signed_path, body,
            str(int(self._clock())), self._nonce())

    def _headers(self, method: str, signed_path: str, body: bytes) -> dict[str, str]:
        headers = {
            "Authorization": self._authorization(method, signed_path, body),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        serial = self.keys.request_serial()
        if serial:  # which of WeChat Pay's keys we verify with (the official samples send it)
            headers["Wechatpay-Serial"] = serial
        return headers

    def _call(self, method: str, path: str, *, query: dict[str, str] | None = None,
              payload: dict | None = None, verify: bool = True) -> tuple[int, bytes, Any]:
        """Send one signed request; (status, raw body, headers) of a 2xx answer, verified
        unless `verify` is False (the caller then verifies it itself)."""
        query_text = ("?" + urlencode(query)) if query else ""
        # The exact bytes that are signed are the bytes that are sent.
        body = (json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                if payload is not None else b"")
        rate_limited = 0
        position = 0
        while True:
            scheme, netloc, prefix = self._bases[position]
            try:
                response = self._send(method, scheme, netloc, prefix + path + query_text, body,
                                      payload is not None, path, backup=position > 0)
            except WeChatPayUnreachable:
                if position + 1 < len(self._bases) and self._time_left():
                    position += 1  # could not connect or timed out: once more, on the backup domain
                    continue
                raise
            status, raw = response.status, response.body
            if status >= 500 and position + 1 < len(self._bases) and self._time_left():
                position += 1
                continue
            if not 200 <= status < 300:
                error = self._rejected(status, raw, path)
                if error.wechat_code == "FREQUENCY_LIMITED" and rate_limited < self.rate_limit_retries \
                        and self._back_off(rate_limited):
                    rate_limited += 1
                    continue
                raise error
            if verify:
                self._verify(response.headers, raw, path)
            return status, raw, response.headers

    def _send(self, method: str, scheme: str, netloc: str, signed_path: str, body: bytes, has_body: bool,
              path: str, *, backup: bool):
        started = time.monotonic()
        status, outcome = None, "error"
        try:
            try:
                response = self._http.request(
                    method, f"{scheme}://{netloc}{signed_path}", body=body if has_body else None,
                    headers=self._headers(method, signed_path, body),
                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
            except HttpError as exc:
                outcome = "unreachable"
                raise WeChatPayUnreachable(
                    f"WeChat Pay could not be reached ({exc.kind}); the outcome of the call is unknown",
                    details={"path": path, "cause": exc.kind}) from exc
            status = response.status
            outcome = "ok" if 200 <= status < 300 else "rejected"
            return response
        finally:
            log("wechatpay.call", level="info" if outcome == "ok" else "warning", method=method,
                path=path, status=status, outcome=outcome, backup=backup or None,
                ms=int((time.monotonic() - started) * 1000))

    @staticmethod
    def _time_left(minimum: float = 0.2) -> bool:
        left = deadline.remaining()
        return left is None or left > minimum

    def _back_off(self, attempt: int) -> bool:
        """Sleep before retrying a rate-limited call; False when the deadline forbids it."""
        pause = RATE_LIMIT_BASE_S * (2 ** attempt) * self._jitter()
        left = deadline.remaining()
        if left is not None and left < pause + 0.2:
            return False
        log("wechatpay.rate_limited", level="warning", attempt=attempt + 1, pause_ms=int(pause * 1000))
        self._sleep(pause)
        return True

    def _verify(self, headers, raw: bytes, path: str, keys=None) -> None:
        try:
            verify_signature(headers, raw, keys=keys or self.keys, now=self._clock(), tolerance=RESPONSE_TOLERANCE)
        except NotificationRejected as exc:
            raise WeChatPayBadResponse(f"WeChat Pay response is not trustworthy: {exc.message}",
                                       details={"path": path, "check": exc.code}) from exc

    @staticmethod
    def _rejected(status: int, raw: bytes, path: str) -> WeChatPayRejected:
        code = message = None
        try:
            error = json.loads(raw.decode("utf-8"))
            if isinstance(error, dict):
                code, message = error.get("code"), error.get("message")
        except (UnicodeDecodeError, ValueError):
            pass
        if isinstance(code, str) and _WECHAT_CODE_RE.fullmatch(code):
            text = message if isinstance(message, str) and message else code
            return WeChatPayRejected(code, text[:_MAX_MESSAGE], http_status=status)
        return WeChatPayRejected(f"HTTP_{status}", f"WeChat Pay answered HTTP {status} without an error code",
                                 http_status=status)

    @staticmethod
    def _json(raw: bytes, path: str) -> dict:
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WeChatPayBadResponse("WeChat Pay response is not JSON", details={"path": path}) from None
        if not isinstance(value, dict):
            raise WeChatPayBadResponse("WeChat Pay response is not a JSON object", details={"path": path})
        return value

    # --- API ------------------------------------------------------------------------

    def jsapi_prepay(self, *, out_trade_no: str, description: str, total_fee: int, openid: str,
                     time_expire: str, notify_url: str | None = None, attach: str | None = None) -> str:
        """POST /v3/pay/transactions/jsapi; returns the `prepay_id` (valid 2 hours).

        `time_expire` is RFC 3339 (`2024-05-01T12:30:00+08:00`); `notify_url` defaults to
        the configured WECHATPAY_NOTIFY_URL.
        """
        payload: dict[str, Any] = {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": _text("description", description, max_len=127),
            "out_trade_no": _text("out_trade_no", out_trade_no, _OUT_TRADE_NO_RE),
            "time_expire": _text("time_expire", time_expire, _RFC3339_RE),
            "notify_url": _text("notify_url", notify_url or self.notify_url),
            "amount": {"total": _fen("total_fee", total_fee), "currency": "CNY"},
            "payer": {"openid": _text("openid", openid, _OPENID_RE)},
        }
        if attach is not None:
            payload["attach"] = _text("attach", attach, max_len=128)
        path = "/v3/pay/transactions/jsapi"
        _, raw, _ = self._call("POST", path, payload=payload)
        prepay_id = self._json(raw, path).get("prepay_id")
        if not isinstance(prepay_id, str) or not _PREPAY_ID_RE.fullmatch(prepay_id):
            raise WeChatPayBadResponse("prepay answer lacks a valid prepay_id", details={"path": path})
        return prepay_id

    def query_order(self, out_trade_no: str) -> dict:
        """GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=...: the transaction.

        Unknown orders raise `WeChatPayRejected` with `wechat_code == "ORDER_NOT_EXIST"`.
        """
        otn = _text("out_trade_no", out_trade_no, _OUT_TRADE_NO_RE)
        path = f"/v3/pay/transactions/out-trade-no/{_quote(otn)}"
        _, raw, _ = self._call("GET", path, query={"mchid": self.mchid})
        return self._json(raw, path)

    def close_order(self, out_trade_no: str) -> None:
        """POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close (204, signed, empty)."""
        otn = _text("out_trade_no", out_trade_no, _OUT_TRADE_NO_RE)
        self._call("POST", f"/v3/pay/transactions/out-trade-no/{_quote(otn)}/close",
                   payload={"mchid": self.mchid})

    def refund(self, *, out_trade_no: str, out_refund_no: str, refund: int, total: int,
               reason: str | None = None, notify_url: str | None = None) -> dict:
        """POST /v3/refund/domestic/refunds; returns the refund (`status`: SUCCESS,
        PROCESSING, CLOSED or ABNORMAL).  `notify_url` defaults to WECHATPAY_NOTIFY_URL."""
        refund = _fen("refund", refund)
        total = _fen("total", total)
        if refund > total:
            raise ValueError("refund cannot exceed total")
        payload: dict[str, Any] = {
            "out_trade_no": _text("out_trade_no", out_trade_no, _OUT_TRADE_NO_RE),
            "out_refund_no": _text("out_refund_no", out_refund_no, _OUT_REFUND_NO_RE),
            "amount": {"refund": refund, "total": total, "currency": "CNY"},
        }
        if reason is not None:
            payload["reason"] = _text("reason", reason, max_len=80)
        target = notify_url or self.notify_url
        if target:
            payload["notify_url"] = _text("notify_url", target)
        path = "/v3/refund/domestic/refunds"
        _, raw, _ = self._call("POST", path, payload=payload)
        return self._json(raw, path)

    def query_refund(self, out_refund_no: str) -> dict:
        """GET /v3/refund/domestic/refunds/{out_refund_no}."""
        orn = _text("out_refund_no", out_refund_no, _OUT_REFUND_NO_RE)
        path = f"/v3/refund/domestic/refunds/{_quote(orn)}"
        _, raw, _ = self._call("GET", path)
        return self._json(raw, path)

    def trade_bill(self, bill_date: str, bill_type: str = "ALL") -> bytes:
        """The day's trade bill (CSV bytes, amounts in yuan), downloaded and checked.

        Two steps: GET /v3/bill/tradebill (signed answer: hash_type, hash_value,
        download_url), then GET download_url with our Authorization (that answer is not
        signed by WeChat Pay, so it is checked by hash instead).

        Hash convention: WeChat Pay documents `hash_value` as the digest of the *original
        bill*, "gzip needs to be decompressed first" (原始账单（gzip需要解压缩）的摘要值,
        pay.weixin.qq.com/doc/v3/merchant/4012556654), and the official wechatpay-java
        `BillDownloadServiceExtension` digests the GZIPInputStream, i.e. the CSV.  So the
        SHA-1 is compared over the decompressed bytes, and a simulator must hash the CSV
        it compresses, not the gzip file it serves.
        """
        _text("bill_date", bill_date, _BILL_DATE_RE)
        if bill_type not in _BILL_TYPES:
            raise ValueError(f"bill_type must be one of {', '.join(_BILL_TYPES)}")
        path = "/v3/bill/tradebill"
        _, raw, _ = self._call("GET", path, query={"bill_date": bill_date, "bill_type": bill_type,
                                                "tar_type": "GZIP"})
        answer = self._json(raw, path)
        hash_type, hash_value = answer.get("hash_type"), answer.get("hash_value")
        url = answer.get("download_url")
        if not isinstance(hash_type, str) or hash_type.upper() != "SHA1":
            raise WeChatPayBadResponse("bill answer has an unsupported hash_type", details={"path": path})
        if not isinstance(hash_value, str) or not _SHA1_HEX_RE.fullmatch(hash_value):
            raise WeChatPayBadResponse("bill answer lacks a SHA-1 hash_value", details={"path": path})
        if not isinstance(url, str):
            raise WeChatPayBadResponse("bill answer lacks download_url", details={"path": path})

        downloaded = self._download(url)
        bill = self._gunzip(downloaded) if downloaded[:2] == b"\x1f\x8b" else downloaded
        # WeChat's integrity check (the answer carrying it is signed), not a security hash.
        digest = hashlib.sha1(bill, usedforsecurity=False).hexdigest()
        if not hmac.compare_digest(digest, hash_value.lower()):
            raise WeChatPayBadResponse("bill file does not match its SHA-1 hash_value",
                                       details={"path": "/v3/billdownload", "bytes": len(downloaded)})
        return bill

    def _download(self, url: str) -> bytes:
        """GET a bill download URL: same origin as the API only, size-bounded, unsigned."""
        parts = urlsplit(url)
        origin = (parts.scheme.lower(), parts.netloc.lower())
        ours = {base[:2] for base in self._bases}
        official = (origin[0] == "https" and origin[1] in _WECHATPAY_HOSTS
                    and self._origin[1] in _WECHATPAY_HOSTS)
        if (origin not in ours and not official) or parts.fragment or not parts.path.startswith("/"):
            # The URL came from a signed answer, but we still never send our signed
            # request (or reach into the VPC) anywhere other than WeChat Pay.
            raise WeChatPayBadResponse("bill download_url is not on the WeChat Pay API host",
                                       details={"host": parts.netloc[:100]})
        # Sign the path and query exactly as they will be sent.
        signed_path = parts.path + (("?" + parts.query) if parts.query else "")
        target = origin[0] + "://" + origin[1] + signed_path
        path = parts.path  # logged without the query: the token is a credential
        started = time.monotonic()
        status: int | None = None
        outcome = "error"
        try:
            # The same headers as every API call (what WeChat's SDKs send to this URL too).
            headers = self._headers("GET", signed_path, b"")
            try:
                response = self._http.request("GET", target, headers=headers, connect_timeout=self.connect_timeout,
                                              read_timeout=self.bill_read_timeout, max_body=self.max_bill_bytes)
            except HttpError as exc:
                if exc.kind == "too_large":
                    raise self._too_big() from None
                outcome = "unreachable"
                raise WeChatPayUnreachable(f"bill download failed ({exc.kind})",
                                           details={"path": path, "cause": exc.kind}) from exc
            status, raw = response.status, response.body
            if not 200 <= status < 300:
                outcome = "rejected"
                raise self._rejected(status, raw, path)
            outcome = "ok"
            return raw
        finally:
            log("wechatpay.call", level="info" if outcome == "ok" else "warning", method="GET",
                path=path, status=status, outcome=outcome, ms=int((time.monotonic() - started) * 1000))

    def _too_big(self) -> WeChatPayBadResponse:
        return WeChatPayBadResponse(f"bill file exceeds {self.max_bill_bytes} bytes",
                                    details={"limit": self.max_bill_bytes})

    def _gunzip(self, data: bytes) -> bytes:
        """Decompress (all gzip members) without ever holding more than the size bound."""
        out: list[bytes] = []
        size = 0
        try:
            while data:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                chunk = inflater.decompress(data, self.max_bill_bytes + 1 - size)
                size += len(chunk)
                out.append(chunk)
                if size > self.max_bill_bytes or inflater.unconsumed_tail:
                    raise self._too_big()
                if not inflater.eof:
                    raise WeChatPayBadResponse("bill file is a truncated gzip stream")
                data = inflater.unused_data
        except zlib.error:
            raise WeChatPayBadResponse("bill file is not valid gzip") from None
        return b"".join(out)

    def download_certificates(self) -> list:
        """GET /v3/certificates: WeChat Pay's platform certificates, each decrypted with the
        APIv3 key (AEAD_AES_256_GCM, associated data "certificate").  The answer is signed by
        one of the certificates it carries (or by the public key, during the switch), so it
        is verified after decrypting them, with the key its serial names."""
        from shared.wechatpay.keys import KeySet, load_certificates

        if not self._apiv3_key:
            raise WeChatPayBadResponse("downloading platform certificates needs WECHATPAY_APIV3_KEY")
        path = "/v3/certificates"
        try:
            _, raw, headers = self._call("GET", path, verify=False)
        except WeChatPayRejected as error:
            if error.wechat_code != "RESOURCE_NOT_EXISTS":
                raise
            # Merchants registered since late 2024 have no platform certificates at all.
            raise WeChatPayRejected(
                "RESOURCE_NOT_EXISTS", "WeChat Pay holds no platform certificates for this merchant: use "
                "the WeChat Pay public key (WECHATPAY_PUBLIC_KEY and WECHATPAY_PUBLIC_KEY_ID) instead of "
                "WECHATPAY_PLATFORM_CERTS=download", http_status=error.http_status) from None
        entries = self._json(raw, path).get("data")
        if not isinstance(entries, list) or not entries:
            raise WeChatPayBadResponse("certificate answer lacks data", details={"path": path})
        certificates = []
        for entry in entries:
            encrypted = entry.get("encrypt_certificate") if isinstance(entry, dict) else None
            if not isinstance(encrypted, dict) or not isinstance(entry.get("serial_no"), str):
                raise WeChatPayBadResponse("certificate answer is malformed", details={"path": path})
            try:
                pem = signing.aes_gcm_decrypt(self._apiv3_key, str(encrypted.get("nonce") or ""),
                                              str(encrypted.get("associated_data") or ""),
                                              str(encrypted.get("ciphertext") or ""))
                [certificate] = load_certificates(pem)
            except ValueError:
                raise WeChatPayBadResponse("a platform certificate does not decrypt with the APIv3 key",
                                           details={"path": path, "check": "decrypt"}) from None
            if certificate.serial != entry["serial_no"].upper():
                raise WeChatPayBadResponse("a platform certificate's serial differs from its serial_no",
                                           details={"path": path})
            certificates.append(certificate)
        self._verify(headers, raw, path, keys=KeySet(public_key=self.keys.public_key,
                                                     public_key_id=self.keys.public_key_id,
                                                     certificates=certificates, clock=self._clock))
        return certificates

    # --- the doctor ------------------------------------------------------------------

    def probe(self, path: str, *, query: dict[str, str] | None = None):
        """One signed GET to the main API host, whatever WeChat Pay answers (the doctor's
        look at the merchant key, WeChat Pay's keys and its clock): the `HttpResponse`,
        neither verified nor retried, nor sent to the backup domain.  WeChatPayUnreachable
        when no answer came."""
        scheme, netloc, prefix = self._bases[0]
        signed_path = prefix + path + (("?" + urlencode(query)) if query else "")
        return self._send("GET", scheme, netloc, signed_path, b"", False, path, backup=False)

    def verify_response(self, headers, raw: bytes, path: str) -> None:
        """The check every 2xx answer must pass (signed by the key its Wechatpay-Serial names,
        its timestamp within RESPONSE_TOLERANCE): WeChatPayBadResponse otherwise, caused by
        the NotificationRejected that says which part failed."""
        self._verify(headers, raw, path)

    def request_payment_params(self, prepay_id: str) -> dict:
        """The object the mini-program passes to `wx.requestPayment` (v3, RSA).

        paySign signs `appId\\ntimeStamp\\nnonceStr\\npackage\\n` with the merchant key;
        `appId` is signed but not returned, `signType` is returned but not signed.
        """
        _text("prepay_id", prepay_id, _PREPAY_ID_RE)
        timestamp = str(int(self._clock()))
        nonce_str = self._nonce()
        package = f"prepay_id={prepay_id}"
        return {
            "timeStamp": timestamp,
            "nonceStr": nonce_str,
            "package": package,
            "signType": "RSA",
            "paySign": signing.pay_sign(self._private_key, self.appid, timestamp, nonce_str, package),
        }
