"""WeChat's server API for the mini-program: the access token and the shipping calls.

The access token comes from `POST {WECHAT_API_BASE}/cgi-bin/stable_token`
(developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html):
in its normal mode it hands every caller the same token while that token is valid, so
instances never invalidate each other's tokens, as the older `/cgi-bin/token` does
(each new token from it ends the previous one).  The token is kept in the store
(`wechat_cache`), shared by every instance, and fetched again REFRESH_BEFORE_MS before
it expires; an instance also keeps it in memory until then.  When WeChat says a token
is invalid (40001), a normal fetch comes first (another instance may hold the current
one); only if that gives the same refused token is a new one forced (`force_refresh`,
which WeChat limits to 20 a day and ends every other holder's token).

The express companies (get_delivery_list, about 1,400 of them) are kept in the store
for a day: the `ship` action checks codes against WeChat's own list.

The token travels in the URL's query: it is never logged, and transport errors name
only the host (`shared.http`).
"""

from __future__ import annotations

import json
import threading
import time

from shared.errors import ConfigError, WeChatApiRejected, WeChatApiUnavailable
from shared.http import HttpError
from shared.log import log

REFRESH_BEFORE_MS = 5 * 60_000
EXPRESS_COMPANIES_TTL_MS = 24 * 3_600_000
DELIVERY_LIST_PATH = "/cgi-bin/express/delivery/open_msg/get_delivery_list"
TIMEOUT_S = 3.0
# errcodes that mean "this token is not (or no longer) valid".
TOKEN_INVALID = frozenset({40001, 40014, 42001})


class WeChatApi:
    def __init__(self, config, store, http, *, clock=None):
        if not config.wechat_appid or not config.wechat_appsecret:
            raise ConfigError("WECHAT_APPSECRET", "is required for WeChat's server API (shipping uploads)")
        self._appid = config.wechat_appid
        self._secret = config.wechat_appsecret
        self._base = config.wechat_api_base.rstrip("/")
        self._store = store
        self._http = http
        self._clock = clock or store.clock
        self._memo: tuple[str, int] | None = None   # (token, expiresAt ms)
        self._companies: tuple[dict[str, str], int] | None = None  # ({code: name}, fetchedAt ms)
        self._lock = threading.Lock()
        self.fetches = 0                              # stable_token calls by this instance

    def __repr__(self) -> str:
        return "WeChatApi()"

    # --- the access token ------------------------------------------------------------

    def access_token(self) -> str:
        now = self._clock()
        memo = self._memo
        if memo is not None and memo[1] - now > REFRESH_BEFORE_MS:
            return memo[0]
        with self._lock:  # one fetch per instance at a time; the others use its token
            memo = self._memo
            if memo is not None and memo[1] - self._clock() > REFRESH_BEFORE_MS:
                return memo[0]
            cached = self._store.cached_token(self._appid)
            if cached is not None and cached["expiresAt"] - self._clock() > REFRESH_BEFORE_MS:
                self._memo = (cached["accessToken"], cached["expiresAt"])
                return cached["accessToken"]
            return self._fetch_token(force=False)

    def _fetch_token(self, *, force: bool) -> str:
        answer = self._post("/cgi-bin/stable_token", {"grant_type": "client_credential", "appid": self._appid,
                                                       "secret": self._secret, "force_refresh": force},
                            what="stable_token")
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token or type(expires_in) is not int or expires_in <= 0:
            raise WeChatApiUnavailable("stable_token answered without a token", details={"path": "stable_token"})
        self.fetches += 1
        expires_at = self._clock() + expires_in * 1000
        self._store.save_token(self._appid, token, expires_at)
        self._memo = (token, expires_at)
        log("wechat.token", outcome="fetched", forced=force or None, expiresIn=expires_in)
        return token

    def _renew_token(self, rejected: str) -> str:
        """WeChat refused `rejected`: the current token, forcing a new one only if WeChat
        still hands out the refused one."""
        with self._lock:
            cached = self._store.cached_token(self._appid)
            if cached is not None and cached["accessToken"] != rejected \
                    and cached["expiresAt"] - self._clock() > REFRESH_BEFORE_MS:
                self._memo = (cached["accessToken"], cached["expiresAt"])
                return cached["accessToken"]
            current = self._fetch_token(force=False)
            return current if current != rejected else self._fetch_token(force=True)

    # --- the express companies ------------------------------------------------------------

    def express_companies(self) -> dict[str, str]:
        """WeChat's express company codes -> names (get_delivery_list), cached for a day."""
        now = self._clock()
        for cached in (self._companies, self._store.cached_express_companies()):
            if cached is not None and now - cached[1] < EXPRESS_COMPANIES_TTL_MS:
                self._companies = cached
                return cached[0]
        answer = self.call(DELIVERY_LIST_PATH, {}, what="get_delivery_list")
        entries = answer.get("delivery_list")
        companies = {entry["delivery_id"]: str(entry.get("delivery_name") or "")
                     for entry in entries if isinstance(entry, dict) and isinstance(entry.get("delivery_id"), str)} \
            if isinstance(entries, list) else {}
        if not companies:
            raise WeChatApiUnavailable("get_delivery_list answered no companies", details={"call": "get_delivery_list"})
        self._store.save_express_companies(companies)
        self._companies = (companies, now)
        return companies

    # --- calls with the token -----------------------------------------------------------

    def call(self, path: str, payload: dict, *, what: str) -> dict:
        """POST `payload` to `path?access_token=...`; a refused token is renewed once."""
        token = self.access_token()
        try:
            return self._post(path, payload, what=what, token=token)
        except WeChatApiRejected as error:
            if error.errcode not in TOKEN_INVALID:
                raise
            log("wechat.token", level="warning", outcome="refused", errcode=error.errcode, call=what)
            return self._post(path, payload, what=what, token=self._renew_token(token))

    def _post(self, path: str, payload: dict, *, what: str, token: str | None = None) -> dict:
        url = self._base + path + (f"?access_token={token}" if token else "")
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                response = self._http.request("POST", url, body=body,
                                              headers={"Content-Type": "application/json; charset=utf-8"},
                                              connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                                              deadline=time.monotonic() + 2 * TIMEOUT_S, max_body=256 * 1024)
            except HttpError as exc:
                outcome = "unreachable"
                raise WeChatApiUnavailable(f"WeChat's API could not be reached ({exc.kind})",
                                           details={"call": what, "cause": exc.kind}) from exc
            try:
                answer = json.loads(response.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                answer = None
            if not 200 <= response.status < 300 or not isinstance(answer, dict):
                outcome = f"http_{response.status}"
                raise WeChatApiUnavailable(f"WeChat's API answered HTTP {response.status}",
                                           details={"call": what, "status": response.status})
            errcode = answer.get("errcode", 0)
            if errcode not in (0, None):
                outcome = f"errcode_{errcode}"
                message = answer.get("errmsg") if isinstance(answer.get("errmsg"), str) else ""
                raise WeChatApiRejected(f"WeChat refused {what}: {errcode} {message[:120]}",
                                        errcode=errcode if type(errcode) is int else None)
            outcome = "ok"
            return answer
        finally:
            log("wechat.call", level="info" if outcome == "ok" else "warning", call=what, outcome=outcome,
                ms=int((time.monotonic() - started) * 1000))
