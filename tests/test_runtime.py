"""The composition root: one container of per-instance state, configuration injected."""

from __future__ import annotations

import os
import threading

import pytest

from shared import runtime
from shared.errors import ConfigError
from shared.runtime import Instance
from tests.keys import make_environ


class RotatingSecret:
    """Stands in for the SSM cache: its overlay can change, as a rotated secret does."""

    def __init__(self, **overlay):
        self.overlay = overlay

    def environ(self, raw):
        return {**raw, **self.overlay}

    def clear(self):
        pass


def test_parts_are_built_once_across_threads_and_rebuilt_when_the_secret_changes():
    secret = RotatingSecret()
    instance = Instance("reconcile", make_environ(CLOUDPAY_SSM_SECRET_NAME="cloudpay/prod"), secrets=secret)
    barrier = threading.Barrier(8)
    seen: list = []

    def grab():
        barrier.wait()
        seen.append((instance.store, instance.wechatpay, instance.reconciler))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(parts[0]) for parts in seen}) == 1 and len({id(parts[2]) for parts in seen}) == 1
    store, reconciler = seen[0][0], seen[0][2]
    assert reconciler.store is store and reconciler.wechatpay is seen[0][1]

    secret.overlay = {"MONGODB_DB": "rotated"}  # a new version of the SSM secret
    assert instance.store is not store and instance.store.db_name == "rotated"
    assert store._client is None  # the old one was closed
    assert instance.reconciler is not reconciler


def test_without_ssm_the_configuration_is_loaded_once_per_instance():
    environ = make_environ()
    instance = Instance("prepare", environ)
    first = instance.config()
    environ["MONGODB_DB"] = "changed"  # SCF never changes an instance's environment
    assert instance.config() is first and first.mongodb_db != "changed"
    instance.close()
    assert instance.config().mongodb_db == "changed"


def test_configure_injects_an_environment_without_touching_os_environ():
    before = dict(os.environ)
    try:
        runtime.configure(make_environ(MONGODB_DB="injected"))
        assert runtime.instance("callback").config().mongodb_db == "injected"
        assert runtime.instance("callback") is runtime.instance("callback")
        runtime.configure(make_environ(MONGODB_DB="second"))
        assert runtime.instance("callback").config().mongodb_db == "second"
    finally:
        runtime.configure(None)
    assert dict(os.environ) == before


def test_a_missing_variable_is_named_at_cold_start_and_on_each_request():
    import io
    import sys

    from shared import log

    sink = io.StringIO()
    runtime.configure(make_environ(WECHATPAY_APIV3_KEY=None))
    log.set_sink(sink)
    try:
        runtime.warm("callback")
        assert '"variable":"WECHATPAY_APIV3_KEY"' in sink.getvalue()
        with pytest.raises(ConfigError) as caught:
            runtime.instance("callback").config()
        assert caught.value.variable == "WECHATPAY_APIV3_KEY"
    finally:
        log.set_sink(sys.stdout)
        runtime.configure(None)


def test_the_callback_instance_builds_no_store_until_a_notification_verifies():
    instance = Instance("callback", make_environ())
    service = instance.notifications
    assert "store" not in instance._parts
    assert service is instance.notifications


def test_the_local_stack_leaves_os_environ_alone(tmp_path):
    from devtools.local_stack import LocalStack

    before = dict(os.environ)
    with LocalStack(tmp_path, retry_factor=0.01) as stack:
        assert dict(os.environ) == before
        assert runtime.instance("prepare").config().wechatpay_api_base == stack.simulator.url
    assert dict(os.environ) == before
