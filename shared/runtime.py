"""Composition root: what one warm SCF instance keeps between invocations, in one place.

Each function asks `runtime.instance("prepare")` (or "callback", "reconcile") for its
`Instance`; the instance loads the configuration for that role and builds each part
(the store, the WeChat Pay client, the login client, the services) the first time a
request needs it, then reuses it.  Nothing heavy happens at import time, so a cold start
pays only for what its first request uses.

The environment of an instance does not change during its life, so without SSM the
configuration is loaded once.  With SSM, the secret is looked at on every request (its
cache has a TTL); when it changes (a rotated secret), every part is closed and rebuilt
from the new configuration.  Thread-safe: tests, the local gateway and
SCF's multi-concurrency mode call handlers from several threads.

The environment is `os.environ` unless `configure(environ)` gives another mapping (the
local stack and the tests do, so nothing rewrites `os.environ`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from shared.config import Config, load_config
from shared.errors import ConfigError
from shared.log import log

SSM_NAME_VAR = "CLOUDPAY_SSM_SECRET_NAME"


class Instance:
    """The configuration and the built parts of one function role in this process."""

    def __init__(self, role: str, environ: Mapping[str, str] | None = None, *, secrets=None, clock=None):
        self.role = role
        self._environ = environ            # None: os.environ, read at every request
        self._clock = clock                # the store's clock (epoch ms); None: the real one
        self._secrets = secrets            # the SSM cache, made when a secret is configured
        self._lock = threading.RLock()     # builders nest (a service builds the store)
        self._fingerprint: int | None = None
        self._config: Config | None = None
        self._ssm = False                   # whether the loaded configuration came with SSM
        self._resolved: dict[str, str] = {}
        self._parts: dict[str, Any] = {}

    def raw_environ(self) -> dict[str, str]:
        """The environment's own variables, without the SSM secret (the doctor reads both)."""
        return dict(os.environ if self._environ is None else self._environ)

    def environ(self) -> dict[str, str]:
        """The environment as the functions see it: variables overlaid with the SSM secret."""
        raw = os.environ if self._environ is None else self._environ
        if not (raw.get(SSM_NAME_VAR) or "").strip():
            return dict(raw)  # no SSM: nothing of it is imported (cold start)
        if self._secrets is None:
            with self._lock:
                if self._secrets is None:
                    self._secrets = _secret_cache()
        return self._secrets.environ(raw)

    def config(self) -> Config:
        config = self._config
        if config is not None and not self._ssm:
            return config  # the hot path: no copy of the environment per request
        environ = self.environ()
        fingerprint = hash(tuple(sorted(environ.items())))
        if fingerprint != self._fingerprint:
            with self._lock:
                if fingerprint != self._fingerprint:
                    config = load_config(self.role, environ)
                    self._close_parts()
                    self._config, self._resolved, self._fingerprint = config, environ, fingerprint
                    self._ssm = bool((environ.get(SSM_NAME_VAR) or "").strip())
        return self._config

    def _part(self, name: str, build: Callable[[Config], Any]) -> Any:
        config = self.config()
        part = self._parts.get(name)
        if part is None:
            with self._lock:
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = build(config)
        return part

    def _close_parts(self) -> None:
        parts, self._parts = self._parts, {}
        for part in parts.values():
            close = getattr(part, "close", None)
            if callable(close):
                close()

    def close(self) -> None:
        with self._lock:
            self._close_parts()
            self._fingerprint = self._config = None

    # --- the parts ------------------------------------------------------------------

    @property
    def store(self):
        def build(config):
            from shared.store.mongo import MongoOrderStore

            store = MongoOrderStore(config.mongodb_uri, config.mongodb_db,
                                    **({"clock": self._clock} if self._clock is not None else {}))
            if config.fulfilment_webhook_url:
                from shared.outbox import note_fact

                store.fact_listener = note_fact  # the first delivery attempt follows the write
            return store

        return self._part("store", build)

    @property
    def http(self):
        """One keep-alive HTTP client for every outbound call of the instance."""
        def build(config):
            from shared.http import HttpClient

            return HttpClient()

        return self._part("http", build)

    @property
    def keys(self):
        """WeChat Pay's keys (public key and/or platform certificates).  In download mode
        the certificates come from the store, and from WeChat Pay where this function
        holds the merchant key (callback does not: it reads what the others downloaded)."""
        def build(config):
            from shared.wechatpay.keys import CertificateSource, key_set_from_config

            keys = key_set_from_config(config)
            if config.wechatpay_platform_certs == "download":
                can_sign = config.wechatpay_private_key is not None and config.wechatpay_cert_serial_no
                fetch = (lambda: self.wechatpay.download_certificates()) if can_sign else None
                keys.set_source(CertificateSource(lambda: self.store, fetch))
            return keys

        return self._part("keys", build)

    @property
    def wechatpay(self):
        def build(config):
            from shared.wechatpay.client import WeChatPayClient

            return WeChatPayClient.from_config(config, keys=self.keys, http=self.http)

        return self._part("wechatpay", build)

    @property
    def login(self):
        def build(config):
            from shared.login import WeChatLogin

            return WeChatLogin(config, http=self.http)

        return self._part("login", build)

    @property
    def archive(self):
        def build(config):
            from shared.archive import BillArchive

            return BillArchive.from_environ(self._resolved)

        return self._part("archive", build)

    @property
    def checkout(self):
        def build(config):
            from shared.checkout import CheckoutService

            # Login is built on the first create: a status query never needs it.
            return CheckoutService(config, self.store, self.wechatpay, login=lambda code: self.login.openid(code))

        return self._part("checkout", build)

    @property
    def notifications(self):
        def build(config):
            from shared.notifications import NotificationService

            # The store is built only once a notification verified: forgeries never connect
            # (in download mode it may be read for certificates, at most once a minute).
            return NotificationService(config, lambda: self.store, keys=self.keys)

        return self._part("notifications", build)

    @property
    def reconciler(self):
        def build(config):
            from shared.reconcile import Reconciler

            shipping = self.shipping if config.shipping_mode != "off" else None
            return Reconciler(config, self.store, self.wechatpay, archive=self.archive, keys=self.keys,
                              relay=self.relay, shipping=shipping)

        return self._part("reconciler", build)

    @property
    def relay(self):
        """The outbox relay (a no-op without FULFILMENT_WEBHOOK_URL)."""
        def build(config):
            from shared.outbox import Relay

            return Relay(config, self.store, self.http if config.fulfilment_webhook_url else None)

        return self._part("relay", build)

    @property
    def wechat_api(self):
        def build(config):
            from shared.wechat_api import WeChatApi

            return WeChatApi(config, self.store, self.http)

        return self._part("wechat_api", build)

    @property
    def shipping(self):
        def build(config):
            from shared.shipping import ShippingService

            # WeChat's API client (and its token) only when an upload happens.
            return ShippingService(config, self.store, lambda: self.wechat_api)

        return self._part("shipping", build)

    def delivering(self, work: Callable[[], Any]) -> Any:
        """Run `work`; then make the first delivery attempt of the facts it wrote."""
        config = self.config()
        if not config.fulfilment_webhook_url:
            return work()
        from shared.outbox import collecting

        with collecting() as written:
            try:
                return work()
            finally:
                if written:
                    self.relay.deliver_orders(written)


# --- the process's instances ----------------------------------------------------------

_instances: dict[str, Instance] = {}
_environ: Mapping[str, str] | None = None
_clock: Callable[[], int] | None = None
_secrets = None  # one SSM cache serves every role of the process
_lock = threading.Lock()


def _secret_cache():
    global _secrets
    with _lock:
        if _secrets is None:
            from shared.ssm import SecretCache

            _secrets = SecretCache()
        return _secrets


def instance(role: str) -> Instance:
    found = _instances.get(role)
    if found is None:
        with _lock:
            found = _instances.get(role)
            if found is None:
                found = _instances[role] = Instance(role, _environ, secrets=_secrets, clock=_clock)
    return found


def configure(environ: Mapping[str, str] | None, *, clock: Callable[[], int] | None = None) -> None:
    """Use `environ` instead of `os.environ` from now on (None: back to os.environ);
    every instance is rebuilt from it.  `clock` (epoch ms) is the stores' time: the local
    stack's test clock moves it forward, so expiry and retries come without waiting."""
    global _environ, _clock
    with _lock:
        _environ = None if environ is None else dict(environ)
        _clock = clock
        _reset_locked()


def reset() -> None:
    """Forget every instance and the cached SSM secret (tests, forced re-read)."""
    with _lock:
        _reset_locked()


def _reset_locked() -> None:
    for found in _instances.values():
        found.close()
    _instances.clear()
    if _secrets is not None:
        _secrets.clear()


def warm(role: str) -> None:
    """Called at import by each handler: load the configuration now, so a missing or
    malformed variable is reported (by name) in the cold-start log.  It does not raise:
    requests then answer a clean JSON 500 instead of SCF's opaque init error."""
    try:
        instance(role).config()
    except ConfigError as error:
        log("config.invalid", level="error", role=role, variable=error.variable, error=error.message)
