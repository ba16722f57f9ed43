"""shared.ssm against a local HTTP server that speaks the SSM API (and checks TC3 auth)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared import ssm
from shared.errors import ConfigError
from tests.ssm_fixtures import SECRET_ID, SECRET_KEY, TOKEN, FakeSsm

# Distinctive values: no message, repr or log line may ever contain them.
SECRET_VALUES = {
    "WECHATPAY_APIV3_KEY": "apiv3-VALUE-never-shown-0123456",
    "WECHAT_APPSECRET": "appsecret-VALUE-never-shown",
    "ORDER_TOKEN_SECRET": "ordertoken-VALUE-never-shown",
    "MONGODB_URI": "mongodb://user:pw-VALUE-never-shown@10.0.0.1:27017/admin",
}


_cache = ssm.SecretCache()  # one per process, as shared.runtime keeps it


def secret_environ(environ):
    return _cache.environ(environ)


@pytest.fixture(autouse=True)
def _fresh_cache():
    _cache.clear()
    yield
    _cache.clear()


def _environ(server: FakeSsm | None = None, **overrides) -> dict[str, str]:
    environ = {
        "CLOUDPAY_SSM_SECRET_NAME": "cloudpay/prod",
        "CLOUDPAY_SSM_VERSION_ID": "v1",
        "TENCENTCLOUD_REGION": "ap-guangzhou",
        "TENCENTCLOUD_SECRETID": SECRET_ID,
        "TENCENTCLOUD_SECRETKEY": SECRET_KEY,
        "TENCENTCLOUD_SESSIONTOKEN": TOKEN,
        "WECHAT_APPID": "wx0123456789abcdef",
        "MONGODB_URI": "mongodb://127.0.0.1:1/env-value",
    }
    if server is not None:
        environ["CLOUDPAY_SSM_ENDPOINT"] = server.endpoint
    for name, value in overrides.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_no_secret(text: str) -> None:
    for value in SECRET_VALUES.values():
        assert value not in text
    assert SECRET_KEY not in text and TOKEN not in text


def _config_error(environ) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        secret_environ(environ)
    error = caught.value
    _assert_no_secret(f"{error} {error!r} {error.details} {error.__cause__!r}")
    return error


# --- not configured ------------------------------------------------------------------

def test_unset_returns_environ_unchanged_without_importing_the_sdk():
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from shared.ssm import SecretCache; "
            "env = {'A': '1', 'CLOUDPAY_SSM_SECRET_NAME': ' '}; out = SecretCache().environ(env); "
            "assert out == env and out is not env, out; "
            "assert not any(m.startswith('tencentcloud') for m in sys.modules), 'SDK imported'")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_default_endpoint_is_https_tencentcloudapi():
    source = ssm.ssm_source(_environ())
    assert (source.scheme, source.endpoint, source.region) == ("https", "ssm.tencentcloudapi.com", "ap-guangzhou")
    assert ssm.ssm_source(_environ(CLOUDPAY_SSM_REGION="ap-shanghai")).region == "ap-shanghai"


# --- loading -------------------------------------------------------------------------

def test_secret_loaded_and_overlaid(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(SECRET_VALUES)
    environ = _environ(fake_ssm)
    before = dict(environ)
    merged = secret_environ(environ)
    assert environ == before  # the input is not modified
    for name, value in SECRET_VALUES.items():
        assert merged[name] == value  # the secret wins over the environment
    assert merged["WECHAT_APPID"] == "wx0123456789abcdef"  # untouched variables stay
    assert fake_ssm.requests == [{"body": {"SecretName": "cloudpay/prod", "VersionId": "v1"},
                                  "region": "ap-guangzhou"}]


def test_missing_keys_leave_the_environment_as_it_is(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"WECHATPAY_APIV3_KEY": "k" * 32})
    merged = secret_environ(_environ(fake_ssm))
    assert merged["WECHATPAY_APIV3_KEY"] == "k" * 32
    assert merged["MONGODB_URI"] == "mongodb://127.0.0.1:1/env-value"  # from the environment
    assert "ORDER_TOKEN_SECRET" not in merged  # in neither: config will name it


def test_only_variable_names_are_taken_and_never_reserved_ones(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({
        "lower_case": "x", "1ABC": "x", "WITH-DASH": "x", "": "x",
        "TENCENTCLOUD_SECRETID": "hijack", "CLOUDPAY_SSM_SECRET_NAME": "other", "SCF_X": "x",
        "ORDER_TOKEN_SECRET": SECRET_VALUES["ORDER_TOKEN_SECRET"],
        "ignored_even_if_not_a_string": 5,
    })
    merged = secret_environ(_environ(fake_ssm))
    added = set(merged) - set(_environ(fake_ssm))
    assert added == {"ORDER_TOKEN_SECRET"}
    assert merged["TENCENTCLOUD_SECRETID"] == SECRET_ID
    assert merged["CLOUDPAY_SSM_SECRET_NAME"] == "cloudpay/prod"


def test_cached_within_ttl_and_fetched_again_after(fake_ssm):
    now = [1000.0]
    cache = ssm.SecretCache(clock=lambda: now[0])
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"ORDER_TOKEN_SECRET": "first"})
    environ = _environ(fake_ssm, CLOUDPAY_SSM_TTL_SECONDS="60")
    assert cache.environ(environ)["ORDER_TOKEN_SECRET"] == "first"
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"ORDER_TOKEN_SECRET": "second"})
    now[0] += 59
    assert cache.environ(environ)["ORDER_TOKEN_SECRET"] == "first"
    assert len(fake_ssm.requests) == 1
    now[0] += 2
    assert cache.environ(environ)["ORDER_TOKEN_SECRET"] == "second"
    assert len(fake_ssm.requests) == 2


def test_default_cache_reuses_the_secret(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(SECRET_VALUES)
    for _ in range(5):
        secret_environ(_environ(fake_ssm))
    assert len(fake_ssm.requests) == 1
    # Another version is another secret: fetched.
    fake_ssm.secrets[("cloudpay/prod", "v2")] = json.dumps(SECRET_VALUES)
    secret_environ(_environ(fake_ssm, CLOUDPAY_SSM_VERSION_ID="v2"))
    assert len(fake_ssm.requests) == 2


def test_stale_secret_served_when_a_refresh_fails(fake_ssm):
    now = [0.0]
    cache = ssm.SecretCache(clock=lambda: now[0])
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"ORDER_TOKEN_SECRET": "kept"})
    environ = _environ(fake_ssm)
    cache.environ(environ)
    fake_ssm.secrets[("cloudpay/prod", "v1")] = {"Error": {"Code": "InternalError", "Message": "blip"}}
    now[0] += ssm.DEFAULT_TTL_SECONDS + 1
    assert cache.environ(environ)["ORDER_TOKEN_SECRET"] == "kept"
    assert cache.environ(environ)["ORDER_TOKEN_SECRET"] == "kept"
    assert len(fake_ssm.requests) == 2  # one failed refresh, then a back-off
    now[0] += ssm.STALE_RETRY_SECONDS + 1
    cache.environ(environ)
    assert len(fake_ssm.requests) == 3


# --- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("stored, expected", [
    ("not json " + SECRET_VALUES["WECHATPAY_APIV3_KEY"], "is not JSON"),
    ('{"WECHATPAY_APIV3_KEY": "' + SECRET_VALUES["WECHATPAY_APIV3_KEY"] + '"', "is not JSON"),
    (json.dumps([SECRET_VALUES["WECHAT_APPSECRET"]]), "is a JSON list, not an object"),
    (json.dumps(SECRET_VALUES["WECHAT_APPSECRET"]), "is a JSON str, not an object"),
    (json.dumps({**SECRET_VALUES, "ORDER_TTL_SECONDS": 1800}), "key 'ORDER_TTL_SECONDS' is a JSON int"),
    (json.dumps({"MONGODB_URI": None}), "key 'MONGODB_URI' is a JSON NoneType"),
    ({"SecretName": "cloudpay/prod", "SecretBinary": "AAEC"}, "is a binary secret"),
    ("", "is empty"),
])
def test_malformed_secret_is_a_named_config_error(fake_ssm, stored, expected):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = stored
    error = _config_error(_environ(fake_ssm))
    assert error.variable == "CLOUDPAY_SSM_SECRET_NAME"
    assert "'cloudpay/prod'" in error.message and "'v1'" in error.message
    assert expected in error.message


def test_ssm_error_code_is_named(fake_ssm):
    error = _config_error(_environ(fake_ssm, CLOUDPAY_SSM_SECRET_NAME="cloudpay/missing"))
    assert error.variable == "CLOUDPAY_SSM_SECRET_NAME"
    assert "ResourceNotFound" in error.message and "'cloudpay/missing'" in error.message
    assert "req-0001" in error.message  # the RequestId, for a support ticket


def test_wrong_credentials_are_rejected_by_the_signature_check(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(SECRET_VALUES)
    error = _config_error(_environ(fake_ssm, TENCENTCLOUD_SECRETKEY="another-key"))
    assert "AuthFailure.SignatureFailure" in error.message
    error = _config_error(_environ(fake_ssm, TENCENTCLOUD_SESSIONTOKEN="stale-token"))
    assert "AuthFailure.TokenFailure" in error.message


def test_missing_credentials_are_named_before_any_request(fake_ssm):
    for variable in ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY"):
        error = _config_error(_environ(fake_ssm, **{variable: None}))
        assert error.variable == variable and "'cloudpay/prod'" in error.message
    assert fake_ssm.requests == []


def test_ssm_down_at_cold_start_fails_quickly():
    environ = _environ(CLOUDPAY_SSM_ENDPOINT=f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    error = _config_error(environ)
    assert time.monotonic() - started < 3
    assert error.variable == "CLOUDPAY_SSM_SECRET_NAME"
    assert "SSM unreachable" in error.message and "ClientNetworkError" in error.message
    assert isinstance(error.__cause__, Exception)  # the SDK exception is chained


@pytest.mark.parametrize("overrides, variable", [
    ({"CLOUDPAY_SSM_VERSION_ID": None}, "CLOUDPAY_SSM_VERSION_ID"),
    ({"CLOUDPAY_SSM_VERSION_ID": "  "}, "CLOUDPAY_SSM_VERSION_ID"),
    ({"TENCENTCLOUD_REGION": None}, "CLOUDPAY_SSM_REGION"),
    ({"CLOUDPAY_SSM_REGION": "Guangzhou!"}, "CLOUDPAY_SSM_REGION"),
    ({"CLOUDPAY_SSM_ENDPOINT": "http://ssm.tencentcloudapi.com"}, "CLOUDPAY_SSM_ENDPOINT"),
    ({"CLOUDPAY_SSM_ENDPOINT": "ftp://127.0.0.1:21"}, "CLOUDPAY_SSM_ENDPOINT"),
    ({"CLOUDPAY_SSM_ENDPOINT": "127.0.0.1:99999"}, "CLOUDPAY_SSM_ENDPOINT"),
    ({"CLOUDPAY_SSM_ENDPOINT": "https://ssm.tencentcloudapi.com/path"}, "CLOUDPAY_SSM_ENDPOINT"),
    ({"CLOUDPAY_SSM_TTL_SECONDS": "5m"}, "CLOUDPAY_SSM_TTL_SECONDS"),
    ({"CLOUDPAY_SSM_TTL_SECONDS": "-1"}, "CLOUDPAY_SSM_TTL_SECONDS"),
])
def test_bad_settings_are_named(overrides, variable):
    assert _config_error(_environ(**overrides)).variable == variable


def test_loopback_endpoint_forms():
    assert ssm._endpoint("127.0.0.1:8080") == ("http", "127.0.0.1:8080")
    assert ssm._endpoint("http://localhost:8080") == ("http", "localhost:8080")
    assert ssm._endpoint("https://[::1]:8443") == ("https", "[::1]:8443")
    assert ssm._endpoint("ssm.ap-guangzhou.tencentcloudapi.com") == ("https", "ssm.ap-guangzhou.tencentcloudapi.com")


# --- concurrency ----------------------------------------------------------------------

def _cold_burst(environ, threads=16):
    barrier = threading.Barrier(threads)
    results: list = []

    def call():
        barrier.wait()
        try:
            results.append(secret_environ(environ))
        except ConfigError as error:
            results.append(error)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return results


def test_many_threads_cold_make_one_fetch(fake_ssm):
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(SECRET_VALUES)
    fake_ssm.delay = 0.3
    results = _cold_burst(_environ(fake_ssm))
    assert len(results) == 16 and all(r["WECHAT_APPSECRET"] == SECRET_VALUES["WECHAT_APPSECRET"] for r in results)
    assert len(fake_ssm.requests) == 1


def test_many_threads_cold_share_one_failure(fake_ssm):
    fake_ssm.delay = 0.3
    results = _cold_burst(_environ(fake_ssm, CLOUDPAY_SSM_SECRET_NAME="cloudpay/missing"))
    assert len(results) == 16 and all(isinstance(r, ConfigError) and "ResourceNotFound" in r.message
                                      for r in results)
    assert len(fake_ssm.requests) == 1


# --- nothing secret shows ---------------------------------------------------------------

def test_repr_and_logs_never_show_values(fake_ssm, capsys):
    from shared import log as log_module

    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(SECRET_VALUES)
    cache = ssm.SecretCache()
    log_module.set_sink(sys.stdout)
    try:
        cache.environ(_environ(fake_ssm))
    finally:
        log_module.set_sink(sys.__stdout__)
    shown = repr(cache) + str(cache) + repr(ssm.ssm_source(_environ(fake_ssm))) + capsys.readouterr().out
    assert "cloudpay/prod" in shown and '"ssm.loaded"' in shown
    _assert_no_secret(shown)


def test_functions_take_their_secrets_from_ssm(fake_ssm, function_env, env_store):
    """End to end: callback runs with no APIv3 key in its environment, only in SSM."""
    from shared import order_states
    from tests.functions import http_event, load_function
    from tests.keys import APIV3_KEY, APPID, MCHID, make_notification, transaction

    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"WECHATPAY_APIV3_KEY": APIV3_KEY})
    function_env(WECHATPAY_APIV3_KEY=None, CLOUDPAY_SSM_SECRET_NAME="cloudpay/prod", CLOUDPAY_SSM_VERSION_ID="v1",
                 CLOUDPAY_SSM_ENDPOINT=fake_ssm.endpoint, TENCENTCLOUD_REGION="ap-guangzhou",
                 TENCENTCLOUD_SECRETID=SECRET_ID, TENCENTCLOUD_SECRETKEY=SECRET_KEY, TENCENTCLOUD_SESSIONTOKEN=TOKEN)
    env_store.insert_order({"outTradeNo": "T20261126SSM0000001", "openid": "o", "appid": APPID, "mchid": MCHID,
                            "items": [], "totalFee": 100, "description": "x", "expireTime": 4_102_444_800_000})
    handler = load_function("callback")
    for _ in range(3):
        headers, body = make_notification(transaction("T20261126SSM0000001", total=100))
        reply = handler(http_event("POST", "/callback", body=body, headers=headers), {})
        assert reply["statusCode"] == 204
    assert env_store.get_order("T20261126SSM0000001")["payStatus"] == order_states.SUCCESS
    assert len(fake_ssm.requests) == 1  # fetched once per instance, then cached


def test_functions_fail_clearly_when_the_secret_is_missing_a_key(fake_ssm, function_env):
    from tests.functions import http_event, load_function
    from tests.keys import make_notification, transaction

    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"SOMETHING_ELSE": "x"})
    function_env(WECHATPAY_APIV3_KEY=None, CLOUDPAY_SSM_SECRET_NAME="cloudpay/prod", CLOUDPAY_SSM_VERSION_ID="v1",
                 CLOUDPAY_SSM_ENDPOINT=fake_ssm.endpoint, TENCENTCLOUD_REGION="ap-guangzhou",
                 TENCENTCLOUD_SECRETID=SECRET_ID, TENCENTCLOUD_SECRETKEY=SECRET_KEY, TENCENTCLOUD_SESSIONTOKEN=TOKEN)
    handler = load_function("callback")
    headers, body = make_notification(transaction("T20261126SSM0000002"))
    reply = handler(http_event("POST", "/callback", body=body, headers=headers), {})
    assert reply["statusCode"] == 500
    assert json.loads(reply["body"]) == {"code": "FAIL", "message": "internal error; it has been logged"}
