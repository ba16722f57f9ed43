"""Composition root: the services of each function, built once per warm instance.

Handlers call `checkout_service()`, `notification_service()`, ... on every invocation;
the first call loads the configuration and builds the clients (Mongo, WeChat Pay HTTP
session), later calls reuse them.  Nothing heavy happens at import time, so a cold start
pays only for what the function uses.  Thread-safe: tests and the local gateway call
handlers from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shared.config import get_config
from shared.errors import ConfigError
from shared.log import log

_services: dict[str, Any] = {}
_lock = threading.RLock()  # builders nest (a service builds the store)


def _cached(name: str, role: str, build: Callable[[Any], Any]) -> Any:
    """The service `name`, built from the current configuration of `role`; rebuilt when
    that configuration changes (a rotated SSM secret)."""
    config = get_config(role)
    entry = _services.get(name)
    if entry is None or entry[0] is not config:
        with _lock:
            entry = _services.get(name)
            if entry is None or entry[0] is not config:
                entry = (config, build(config))
                _services[name] = entry
    return entry[1]


def reset() -> None:
    """Forget every built service and the loaded configuration (tests, secret rotation)."""
    from shared.config import reset_cache

    with _lock:
        _services.clear()
    reset_cache()


def warm(role: str) -> None:
    """Called at import by each handler: load the configuration now, so a missing or
    malformed variable is reported (by name) in the cold-start log.  It does not raise:
    requests then answer a clean JSON 500 instead of SCF's opaque init error."""
    try:
        get_config(role)
    except ConfigError as error:
        log("config.invalid", level="error", role=role, variable=error.variable, error=error.message)


def _store(config):
    from shared.store import OrderStore

    return _cached(f"store:{config.role}", config.role, OrderStore.from_config)


def _wechatpay(config):
    from shared.wechatpay.client import get_client

    return get_client(config)


def checkout_service():
    def build(config):
        from shared.checkout import CheckoutService
        from shared.login import code_to_session

        return CheckoutService(config, _store(config), _wechatpay(config),
                               login=lambda code: code_to_session(config, code))

    return _cached("checkout", "prepare", build)


def notification_service():
    def build(config):
        from shared.notifications import NotificationService

        return NotificationService(config, lambda: _store(config))

    return _cached("notifications", "callback", build)


def reconciler():
    def build(config):
        import os

        from shared.archive import BillArchive
        from shared.reconcile import Reconciler
        from shared.ssm import secret_environ

        archive = BillArchive.from_environ(secret_environ(os.environ))
        return Reconciler(config, _store(config), _wechatpay(config), archive=archive)

    return _cached("reconciler", "reconcile", build)
