"""The simulator's access tokens (api.weixin.qq.com): /cgi-bin/stable_token and /cgi-bin/token.

WeChat's rules (shipping_rules.py names the sources), as simulated:

- the two kinds are isolated (与 getAccessToken 获取的调用凭证完全隔离，互不影响): fetching one
  never invalidates the other;
- stable_token, normal mode (force_refresh false or absent): while the current token has more
  than the refresh margin left (5 minutes: 普通模式下平台会提前5分钟更新access_token) the same
  token is answered, with `expires_in` its remaining seconds; within the margin a new token is
  issued and the old one stays valid until it expires (新旧 access_token 都可用);
- stable_token, force_refresh true: a new token, and the previous stable token is invalid at
  once (会导致上次获取的 access_token 失效); a second forced refresh less than 30 seconds after the
  last one does not refresh (需间隔30秒 ... 否则不会刷新): it answers the current token;
- /cgi-bin/token: every call issues a new token, and the previous /cgi-bin/token token stays
  valid for the refresh margin only (重复获取将导致上次获取的 access_token 失效; 5分钟内新老都可用);
- a token never issued, or superseded, is refused with 40001 (invalid credential, access_token is
  invalid or not latest); a token past its expiry with 42001 (access_token expired); no token with
  41001 (access_token missing).

Settings (`Simulator.configure`, `POST /_sim/config`), for tests that watch a refresh:
`token_ttl_s` (1..7200, default 7200) is the lifetime of tokens issued from now on;
`token_refresh_margin_s` (default: ttl / 24, i.e. 300 s for 7200 s; setting a ttl alone goes
back to that default) must be below the ttl, and is also the overlap /cgi-bin/token leaves the
previous token; `force_refresh_interval_s` (default 30).  `reset` restores the defaults.  The
20-per-day limit of forced refreshes is not simulated.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from devtools.simulator.errors import SimError
from devtools.simulator.shipping_rules import FORCE_REFRESH_MIN_INTERVAL_S, TOKEN_TTL_S
from devtools.simulator.timeutil import rfc3339

STABLE = "stable"
LEGACY = "legacy"
_MARGIN_SHARE = 24   # WeChat: 300 s of 7200 s


@dataclass
class Token:
    value: str
    kind: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None   # superseded: invalid from this moment (40001)

    def problem(self, now: float) -> int | None:
        """None while usable, else the errcode WeChat answers for it."""
        if self.revoked_at is not None and now >= self.revoked_at:
            return 40001
        if now >= self.expires_at:
            return 42001
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TokenBook:
    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._current: dict[str, Token] = {}
        self._last_forced: float | None = None
        self._set_defaults()

    def _set_defaults(self) -> None:
        self.ttl_s = TOKEN_TTL_S
        self._margin_s: int | None = None          # None: ttl / 24
        self.force_refresh_interval_s = FORCE_REFRESH_MIN_INTERVAL_S

    @property
    def refresh_margin_s(self) -> float:
        return self.ttl_s / _MARGIN_SHARE if self._margin_s is None else self._margin_s

    def reset(self) -> None:
        """Forget every token and go back to the default settings."""
        with self._lock:
            self._tokens.clear()
            self._current.clear()
            self._last_forced = None
            self._set_defaults()

    def configure(self, *, token_ttl_s: int | None = None, token_refresh_margin_s: int | None = None,
                  force_refresh_interval_s: int | None = None) -> dict:
        with self._lock:
            ttl = self.ttl_s
            if token_ttl_s is not None:
                if not _is_int(token_ttl_s) or not 1 <= token_ttl_s <= TOKEN_TTL_S:
                    raise SimError(400, "BAD_REQUEST", f"token_ttl_s must be an integer 1..{TOKEN_TTL_S}")
                ttl = token_ttl_s
            margin = self._margin_s if token_ttl_s is None else None   # a new ttl rescales the margin
            if token_refresh_margin_s is not None:
                if not _is_int(token_refresh_margin_s) or not 0 <= token_refresh_margin_s < ttl:
                    raise SimError(400, "BAD_REQUEST",
                                   f"token_refresh_margin_s must be an integer 0..{ttl - 1} (below token_ttl_s)")
                margin = token_refresh_margin_s
            elif margin is not None and margin >= ttl:
                margin = None
            if force_refresh_interval_s is not None:
                if not _is_int(force_refresh_interval_s) or not 0 <= force_refresh_interval_s <= 86_400:
                    raise SimError(400, "BAD_REQUEST", "force_refresh_interval_s must be an integer 0..86400")
                self.force_refresh_interval_s = force_refresh_interval_s
            self.ttl_s, self._margin_s = ttl, margin
            return self.settings()

    def settings(self) -> dict:
        return {"token_ttl_s": self.ttl_s, "token_refresh_margin_s": self.refresh_margin_s,
                "force_refresh_interval_s": self.force_refresh_interval_s}

    # --- issuing ---------------------------------------------------------------------------

    def _new(self, kind: str, now: float) -> Token:
        prefix = "SIM_STABLE_" if kind == STABLE else "SIM_"
        token = Token(prefix + secrets.token_urlsafe(48), kind, now, now + self.ttl_s)
        self._tokens[token.value] = token
        self._current[kind] = token
        return token

    @staticmethod
    def _answer(token: Token, now: float) -> dict:
        return {"access_token": token.value, "expires_in": max(1, int(token.expires_at - now))}

    def issue_stable(self, *, force_refresh: bool = False) -> dict:
        """POST /cgi-bin/stable_token with valid credentials: {access_token, expires_in}."""
        now = self._clock()
        with self._lock:
            current = self._current.get(STABLE)
            usable = current is not None and current.problem(now) is None
            if force_refresh:
                too_soon = (self._last_forced is not None
                            and now - self._last_forced < self.force_refresh_interval_s)
                if usable and too_soon:
                    return self._answer(current, now)   # 需间隔30秒, 否则不会刷新
                if current is not None:
                    current.revoked_at = now            # 强制刷新: 上次获取的 access_token 失效
                self._last_forced = now
                return self._answer(self._new(STABLE, now), now)
            if usable and current.expires_at - now > self.refresh_margin_s:
                return self._answer(current, now)
            return self._answer(self._new(STABLE, now), now)   # the old one lives out its time

    def issue_legacy(self) -> dict:
        """GET /cgi-bin/token with valid credentials: a new token; the previous one of this kind
        stays valid for the refresh margin only."""
        now = self._clock()
        with self._lock:
            previous = self._current.get(LEGACY)
            if previous is not None and previous.revoked_at is None:
                previous.revoked_at = min(previous.expires_at, now + self.refresh_margin_s)
            return self._answer(self._new(LEGACY, now), now)

    # --- checking ----------------------------------------------------------------------------

    def check(self, value: str | None) -> int | None:
        """None when `value` may call an API now, else the errcode (41001, 40001, 42001)."""
        if not value:
            return 41001
        with self._lock:
            token = self._tokens.get(value)
            if token is None:
                return 40001
            return token.problem(self._clock())

    def state(self) -> list[dict]:
        """Every token issued since the last reset, oldest first (control API)."""
        now = self._clock()
        with self._lock:
            return [{"access_token": t.value, "kind": t.kind, "issued_at": rfc3339(t.issued_at),
                     "expires_at": rfc3339(t.expires_at),
                     "revoked_at": None if t.revoked_at is None else rfc3339(t.revoked_at),
                     "current": self._current.get(t.kind) is t,
                     "valid": t.problem(now) is None, "errcode": t.problem(now)}
                    for t in self._tokens.values()]
