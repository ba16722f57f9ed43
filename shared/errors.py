"""The one error hierarchy of cloudpay-scf.

Every error a caller may see carries an HTTP status, an UPPER_SNAKE code and a human
message.  `shared.http_event` is the single place that turns them into responses; no
other module decides a status code.  Messages never contain secrets or payer data.
"""

from __future__ import annotations


class CloudPayError(Exception):
    """Base of every error this package raises on purpose."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None,
                 public: dict | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Safe, non-secret evidence for logs (never sent to a client).
        self.details = details or {}
        # Fields the caller may see beside code and message (e.g. which order it was).
        self.public = public or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- configuration -------------------------------------------------------------------

class ConfigError(CloudPayError):
    """Missing or malformed configuration; raised at cold start, names the variable."""

    code = "CONFIG_INVALID"

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}", details={"variable": variable})
        self.variable = variable


# --- client-facing (4xx) -------------------------------------------------------------

class BadRequest(CloudPayError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(CloudPayError):
    status = 401
    code = "UNAUTHORIZED"


class Forbidden(CloudPayError):
    status = 403
    code = "FORBIDDEN"


class NotFound(CloudPayError):
    status = 404
    code = "NOT_FOUND"


class Conflict(CloudPayError):
    status = 409
    code = "CONFLICT"


class MethodNotAllowed(CloudPayError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class PayloadTooLarge(CloudPayError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(CloudPayError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


# --- our own data ----------------------------------------------------------------------

class CatalogInvalid(CloudPayError):
    """A product in the catalog is unusable (e.g. a float or zero price): our data error,
    not the customer's.  500, and a log line for the operator."""

    code = "CATALOG_INVALID"


# --- the order store -----------------------------------------------------------------

class StoreError(CloudPayError):
    """Base of store failures; callers map the subclasses to 503 / 409 / 404."""


class StoreUnavailable(StoreError):
    status = 503
    code = "STORE_UNAVAILABLE"


class StoreConflict(StoreError, Conflict):
    """A unique key already exists (duplicate order number, refund number, ...)."""

    code = "CONFLICT"


class StoreNotFound(StoreError, NotFound):
    code = "NOT_FOUND"


class IllegalTransition(StoreError, Conflict):
    """The state machine forbids this change (e.g. SUCCESS -> NOTPAY)."""

    code = "ILLEGAL_TRANSITION"


# --- WeChat Pay and WeChat login -----------------------------------------------------

class WeChatPayError(CloudPayError):
    """Base of WeChat Pay call failures: the client gets 502."""

    status = 502
    code = "WECHATPAY_ERROR"


class WeChatPayRejected(WeChatPayError):
    """WeChat Pay answered with its error JSON: `wechat_code` is its reason code."""

    def __init__(self, wechat_code: str, message: str, *, http_status: int | None = None):
        super().__init__(message, code=f"WECHATPAY_{wechat_code}",
                         details={"wechatCode": wechat_code, "httpStatus": http_status})
        self.wechat_code = wechat_code
        self.http_status = http_status

    @property
    def outcome_unknown(self) -> bool:
        """A 5xx (SYSTEM_ERROR ...) may have been applied: retry with the same
        parameters, do not assume it was refused."""
        return self.http_status is None or self.http_status >= 500


class WeChatPayUnreachable(WeChatPayError):
    """Transport failure or timeout: WeChat Pay could not be reached (outcome unknown)."""

    code = "WECHATPAY_UNREACHABLE"


class WeChatPayBadResponse(WeChatPayError):
    """A response we cannot trust: missing or wrong signature, unparseable body, bad hash."""

    code = "WECHATPAY_BAD_RESPONSE"


class LoginFailed(Unauthorized):
    """code2session refused the code (expired, reused or forged)."""

    code = "LOGIN_FAILED"


class LoginUnavailable(CloudPayError):
    """WeChat's login service could not be reached."""

    status = 502
    code = "WECHAT_LOGIN_UNAVAILABLE"


class BillFormatError(WeChatPayError):
    """The bill is not what WeChat Pay documents (WeChat sent something we cannot trust)."""

    code = "BILL_FORMAT"


# --- the bill archive (COS) ------------------------------------------------------------

class ArchiveUnavailable(CloudPayError):
    """COS could not be reached or refused the request (the archive is not written)."""

    status = 503
    code = "ARCHIVE_UNAVAILABLE"


# --- notifications (callback) --------------------------------------------------------

class NotificationRejected(CloudPayError):
    """A notification we refuse before touching the store; WeChat Pay will retry."""

    status = 401
    code = "NOTIFICATION_REJECTED"


class SignatureInvalid(NotificationRejected):
    code = "SIGNATURE_INVALID"


class SignatureProbe(NotificationRejected):
    code = "SIGNATURE_PROBE"


class UnknownSerial(NotificationRejected):
    code = "UNKNOWN_SERIAL"


class TimestampOutOfRange(NotificationRejected):
    code = "TIMESTAMP_OUT_OF_RANGE"


class DecryptFailed(NotificationRejected):
    """Signature was fine but the resource did not decrypt (wrong APIv3 key?)."""

    status = 400
    code = "DECRYPT_FAILED"


class MalformedNotification(NotificationRejected):
    status = 400
    code = "MALFORMED_NOTIFICATION"


# --- fulfilment webhooks (the shop's side) ---------------------------------------------

class WebhookRejected(CloudPayError):
    """A delivery the shop's receiver must refuse (`shared.webhook.verify_webhook`);
    answer it with a non-2xx status and the relay tries again later."""

    status = 400
    code = "WEBHOOK_REJECTED"


# --- WeChat's server API (access token, shipping information) -------------------------

class WeChatApiRejected(CloudPayError):
    """api.weixin.qq.com answered with an errcode (in `errcode` and details)."""

    status = 502
    code = "WECHAT_API_REJECTED"

    def __init__(self, message: str, *, errcode: int | None, code: str | None = None):
        super().__init__(message, code=code, details={"errcode": errcode})
        self.errcode = errcode


class WeChatApiUnavailable(CloudPayError):
    """api.weixin.qq.com could not be reached in time, or answered something unreadable."""

    status = 502
    code = "WECHAT_API_UNAVAILABLE"
