"""The mini-program login endpoint (api.weixin.qq.com), enough for code2Session.

Test codes (what a fake `wx.login()` returns):
- `test-<name>` (name: 1..64 of A-Z a-z 0-9 _ -) logs in the user <name>: the openid is
  stable for that name and appid, 28 characters like WeChat's ("o" + 27 base64url chars
  of an HMAC), e.g. `test-alice` is always the same user; the code may be reused;
- `err-<errcode>` answers that errcode (e.g. `err-40163` code already used, `err-45011`
  rate limited, `err--1` system busy), for testing error handling;
- anything else is `{"errcode": 40029, "errmsg": "invalid code"}`, with HTTP 200 as WeChat.
A wrong appid answers 40013, a wrong secret 40125.  `GET /cgi-bin/token` answers a token
(valid for the shipping API, see access_tokens.py) but is counted apart (`token_fetches`): each
call invalidates the previous token of every other holder, so a backend should use
`POST /cgi-bin/stable_token` (`stable_token_fetches`) instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

TEST_CODE_RE = re.compile(r"^test-([A-Za-z0-9_-]{1,64})$")
ERROR_CODE_RE = re.compile(r"^err-(-?[0-9]{1,6})$")
ERRMSG = {
    -1: "system error",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40029: "invalid code",
    40125: "invalid appsecret",
    40163: "code been used",
    40226: "high risk user",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    43002: "require POST method",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    47001: "data format error",
}


def openid_for(appid: str, name: str) -> str:
    """The openid of test user `name` under `appid` (the same across restarts)."""
    digest = hmac.new(f"sim-openid:{appid}".encode(), name.encode(), hashlib.sha256).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode("ascii")[:27]


def _session_key(appid: str, name: str) -> str:
    digest = hmac.new(f"sim-session-key:{appid}".encode(), name.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest[:16]).decode("ascii")


def error(errcode: int) -> dict:
    message = ERRMSG.get(errcode, "simulated error")
    return {"errcode": errcode, "errmsg": f"{message}, rid: {secrets.token_hex(12)}"}


def credentials_error(query: dict, appid: str, secret: str) -> dict | None:
    """The errcode answer for a missing or wrong appid / secret (41002, 40013, 41004, 40125), else None."""
    if not query.get("appid"):
        return error(41002)
    if query["appid"] != appid:
        return error(40013)
    if not query.get("secret"):
        return error(41004)
    if not hmac.compare_digest(str(query["secret"]).encode(), secret.encode()):
        return error(40125)
    return None


def jscode2session(query: dict[str, str], appid: str, secret: str) -> dict:
    """GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code."""
    refused = credentials_error(query, appid, secret)
    if refused:
        return refused
    if query.get("grant_type") != "authorization_code":
        return error(40002)
    code = query.get("js_code")
    if not code:
        return error(41008)
    test_user = TEST_CODE_RE.match(code)
    if test_user:
        name = test_user.group(1)
        return {"session_key": _session_key(appid, name), "openid": openid_for(appid, name)}
    wanted_error = ERROR_CODE_RE.match(code)
    if wanted_error:
        return error(int(wanted_error.group(1)))
    return error(40029)
