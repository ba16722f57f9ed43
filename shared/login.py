"""Mini-program login: the `wx.login()` code -> the user's openid (code2Session).

`WeChatLogin(config).openid(code)` returns the openid; `.login(code)` also returns the
unionid when WeChat sends one.  The `session_key` is never returned, stored or
logged: this backend does not decrypt user data, so it has no use for it.

One GET (https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/code2Session.html):
`{WECHAT_API_BASE}/sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`,
answered `{openid, session_key, unionid?}` or `{errcode, errmsg}`.  It needs no access
token, so none is ever fetched.  The URL carries the app secret: it is never logged,
and transport errors name only the host.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from shared.errors import ConfigError, LoginFailed, LoginUnavailable
from shared.http import HttpClient, HttpError
from shared.log import log
from shared.strict_json import JsonRejected, loads_object

LOGIN_TIMEOUT = 3.0
_CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

# errcode -> message for the user (LoginFailed: get a fresh code with wx.login()).
_REFUSED = {
    40029: "the login code is invalid or expired; call wx.login() again",
    40163: "the login code was already used; call wx.login() again",
    40226: "this WeChat account is blocked by WeChat's risk control",
}
# errcode -> message (LoginUnavailable: not the user's fault; try again later).
_BUSY = {
    -1: "WeChat's login service is busy; try again shortly",
    45011: "too many login attempts; try again in a minute",
}
# Our own configuration is wrong (appid / secret): an operator must act.
_MISCONFIGURED = {40001, 40013, 40125, 41002, 41004}


@dataclass(frozen=True)
class LoginSession:
    """Who logged in.  Deliberately without `session_key`."""

    openid: str
    unionid: str | None = None


class WeChatLogin:
    """code2Session for one mini-program: built once per warm instance (`shared.runtime`)."""

    def __init__(self, config, http: HttpClient | None = None, *, timeout: float | None = None):
        if not config.wechat_appid:
            raise ConfigError("WECHAT_APPID", "is required for login")
        if not config.wechat_appsecret:
            raise ConfigError("WECHAT_APPSECRET", "is required for login")
        self._appid = config.wechat_appid
        self._secret = config.wechat_appsecret
        self._url = config.wechat_api_base.rstrip("/") + "/sns/jscode2session"
        self._http = http or HttpClient()
        self._timeout = LOGIN_TIMEOUT if timeout is None else timeout

    def __repr__(self) -> str:
        return "WeChatLogin()"

    def close(self) -> None:
        self._http.close()

    def openid(self, code: str) -> str:
        """The openid for a `wx.login()` code (what `CheckoutService` needs)."""
        return self.login(code).openid

    def login(self, code: str) -> LoginSession:
        """Exchange a `wx.login()` code for the user's identity.

        Raises `LoginFailed` (401) when WeChat refuses the code (invalid, expired, reused)
        or the code is malformed (then without any request), and `LoginUnavailable` (502)
        when WeChat cannot be reached, times out, answers non-JSON or is busy, or when our
        appid/secret are refused (logged as an error for the operator).
        """
        if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
            raise LoginFailed("the login code is malformed; call wx.login() again",
                              details={"reason": "malformed"})
        query = urlencode({"appid": self._appid, "secret": self._secret, "js_code": code,
                           "grant_type": "authorization_code"})
        started = time.monotonic()
        outcome, errcode = "error", None
        try:
            try:
                response = self._http.request("GET", f"{self._url}?{query}", connect_timeout=self._timeout,
                                              read_timeout=self._timeout,
                                              deadline=time.monotonic() + 2 * self._timeout, max_body=64 * 1024)
            except HttpError as exc:
                outcome = "unreachable"
                raise LoginUnavailable(f"WeChat login could not be reached ({exc.kind})",
                                       details={"cause": exc.kind}) from None
            if not response.ok():
                outcome = "refused"
                raise LoginUnavailable("WeChat login answered with an HTTP error",
                                       details={"httpStatus": response.status})
            try:
                result = loads_object(response.body, "the login answer")
            except JsonRejected:
                outcome = "bad_answer"
                raise LoginUnavailable("WeChat login answered something that is not JSON") from None
            errcode = result.get("errcode")
            if errcode not in (None, 0):
                outcome = "refused"
                raise _login_error(errcode)
            openid, unionid = result.get("openid"), result.get("unionid")
            if not isinstance(openid, str) or not openid:
                outcome = "bad_answer"
                raise LoginUnavailable("WeChat login answered without an openid")
            outcome = "ok"
            return LoginSession(openid=openid,
                                unionid=unionid if isinstance(unionid, str) and unionid else None)
        finally:
            log("wechat.login", level="info" if outcome == "ok" else "warning", outcome=outcome,
                errcode=errcode, ms=int((time.monotonic() - started) * 1000))


def _login_error(errcode) -> Exception:
    if errcode in _REFUSED:
        return LoginFailed(_REFUSED[errcode], details={"errcode": errcode})
    if errcode in _BUSY:
        return LoginUnavailable(_BUSY[errcode], details={"errcode": errcode})
    if errcode in _MISCONFIGURED:
        log("wechat.login_misconfigured", level="error", errcode=errcode,
            hint="check WECHAT_APPID and WECHAT_APPSECRET")
        return LoginUnavailable("WeChat login is misconfigured on the server", details={"errcode": errcode})
    return LoginFailed(f"WeChat refused the login code (errcode {errcode}); call wx.login() again",
                       details={"errcode": errcode})
