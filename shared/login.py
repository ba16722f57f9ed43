"""Mini-program login: the `wx.login()` code -> the user's openid (code2Session).

`WeChatLogin(config).openid(code)` returns the openid; `.login(code)` also returns the
unionid when WeChat sends one.  The `session_key` is never returned, stored or
logged: this backend does not decrypt user data, so it has no use for it.

Built on wechatpy's `WeChatClient`, with two precautions from reading its source
(wechatpy 1.8.18, `client/base.py`):
- it fetches an access token from a hard-coded `https://api.weixin.qq.com/cgi-bin/token`
  before any call unless one is given; jscode2session needs none, so the client gets the
  placeholder token "unused" (a user-provided token is returned as is, never refreshed);
- with `auto_retry=True`, errcodes 40001/40014/42001 trigger that same token fetch and a
  retry; `auto_retry=False` turns it off.
wechatpy is imported lazily, so functions that never log anyone in do not pay for it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError, LoginFailed, LoginUnavailable
from shared.log import log

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
    """code2Session for one mini-program: built once per warm instance (`shared.runtime`).

    wechatpy is imported here, at construction, so functions that never log anyone in
    (and `prepare`'s status queries) do not pay for it.
    """

    def __init__(self, config):
        if not config.wechat_appid:
            raise ConfigError("WECHAT_APPID", "is required for login")
        if not config.wechat_appsecret:
            raise ConfigError("WECHAT_APPSECRET", "is required for login")
        from wechatpy import WeChatClient

        self._client = WeChatClient(config.wechat_appid, config.wechat_appsecret,
                                    access_token="unused",  # noqa: S106 - placeholder, see module doc
                                    timeout=LOGIN_TIMEOUT, auto_retry=False)
        # wechatpy joins base and endpoint without a separator: keep the trailing slash.
        self._client.wxa.API_BASE_URL = config.wechat_api_base.rstrip("/") + "/"

    def __repr__(self) -> str:
        return "WeChatLogin()"

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

        from requests import RequestException
        from wechatpy.exceptions import WeChatClientException

        started = time.monotonic()
        outcome, errcode = "error", None
        try:
            try:
                result: Any = self._client.wxa.code_to_session(code)
            except WeChatClientException as exc:
                errcode = exc.errcode
                outcome = "refused"
                # Not chained: wechatpy's exception holds the request, whose URL has the secret.
                raise _login_error(exc.errcode) from None
            except RequestException as exc:
                outcome = "unreachable"
                # Not chained either: requests' messages quote the URL, secret included.
                raise LoginUnavailable(f"WeChat login could not be reached ({type(exc).__name__})",
                                       details={"cause": type(exc).__name__}) from None
            if not isinstance(result, dict):  # wechatpy returns the raw Response for non-JSON
                outcome = "bad_answer"
                raise LoginUnavailable("WeChat login answered something that is not JSON")
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
    if errcode is None:
        # wechatpy raises errcode=None for a non-2xx HTTP status.
        return LoginUnavailable("WeChat login answered with an HTTP error", details={"errcode": None})
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
