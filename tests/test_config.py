"""Configuration: every required variable missing, every malformed one, gives its named error."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.config import REQUIRED_BY_ROLE, Config, load_config
from shared.errors import ConfigError
from tests.keys import APIV3_KEY, APPSECRET, ORDER_TOKEN_SECRET, make_environ, merchant_keys


def _pem(key, private: bool) -> str:
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _error(role: str, **overrides) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(role, make_environ(**overrides))
    return caught.value


@pytest.mark.parametrize("role", sorted(REQUIRED_BY_ROLE))
def test_complete_environment_loads(role):
    config = load_config(role, make_environ())
    assert isinstance(config, Config) and config.role == role


@pytest.mark.parametrize("role, variable", [
    (role, variable) for role, variables in sorted(REQUIRED_BY_ROLE.items()) for variable in variables])
def test_each_required_variable_missing_is_named(role, variable):
    error = _error(role, **{variable: None})
    assert error.variable == variable
    assert variable in str(error) and "required" in error.message
    blank = _error(role, **{variable: "   "})
    assert blank.variable == variable


def test_least_privilege_callback_needs_no_app_secret_and_prepare_no_apiv3_key():
    assert load_config("callback", make_environ(WECHAT_APPSECRET=None, WECHATPAY_PRIVATE_KEY=None))
    assert load_config("prepare", make_environ(WECHATPAY_APIV3_KEY=None)).wechatpay_apiv3_key is None


_RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("variable, value, words", [
    ("WECHATPAY_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----", "PEM"),
    ("WECHATPAY_PRIVATE_KEY", "garbage", "PEM"),
    ("WECHATPAY_PRIVATE_KEY", _pem(_RSA_1024, True), "2048"),
    ("WECHATPAY_PRIVATE_KEY", _pem(_EC_KEY, True), "RSA"),
    ("WECHATPAY_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "PEM"),
    ("WECHATPAY_PUBLIC_KEY", _pem(_RSA_1024, False), "2048"),
    ("WECHATPAY_APIV3_KEY", APIV3_KEY[:31], "32 bytes"),
    ("WECHATPAY_APIV3_KEY", APIV3_KEY + "x", "32 bytes"),
    ("WECHAT_APPID", "wx123", "appid"),
    ("WECHATPAY_MCHID", "19000abc", "merchant id"),
    ("WECHATPAY_CERT_SERIAL_NO", "bad serial!", "serial"),
    ("WECHATPAY_PUBLIC_KEY_ID", "PUB KEY", "public key id"),
    ("WECHATPAY_NOTIFY_URL", "https://example.com/notify?x=1", "query"),
    ("WECHATPAY_NOTIFY_URL", "http://example.com/notify", "https"),
    ("WECHATPAY_NOTIFY_URL", "ftp://example.com/notify", "URL"),
    ("WECHATPAY_API_BASE", "http://10.0.0.1:8080", "https"),
    ("MONGODB_URI", "postgres://x", "mongodb://"),
    ("MONGODB_DB", "bad name!", "database"),
    ("ORDER_TOKEN_SECRET", "short", "32 bytes"),
    ("ORDER_TTL_SECONDS", "10", "between"),
    ("ORDER_TTL_SECONDS", "1.5", "whole number"),
    ("ORDER_MAX_TOTAL_FEE", "-1", "whole number"),
    ("WECHATPAY_API_VERSION", "v2", "not supported"),
    ("WECHATPAY_API_VERSION", "v4", "v3"),
])
def test_each_malformed_variable_is_named(variable, value, words):
    error = _error("prepare" if variable != "WECHATPAY_APIV3_KEY" else "callback", **{variable: value})
    assert error.variable == variable
    assert words in error.message, error.message


def test_pem_with_escaped_newlines_or_bare_body_is_accepted():
    pem = merchant_keys().private_pem
    escaped = load_config("prepare", make_environ(WECHATPAY_PRIVATE_KEY=pem.replace("\n", "\\n")))
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    bare = load_config("prepare", make_environ(WECHATPAY_PRIVATE_KEY=body))
    assert escaped.wechatpay_private_key.key_size == bare.wechatpay_private_key.key_size == 2048


def test_defaults():
    config = load_config("prepare", make_environ(WECHATPAY_API_BASE=None, WECHAT_API_BASE=None,
                                                 ORDER_TTL_SECONDS=None, MONGODB_DB=None))
    assert config.wechatpay_api_base == "https://api.mch.weixin.qq.com"
    assert config.wechat_api_base == "https://api.weixin.qq.com"
    assert config.order_ttl_seconds == 1800 and type(config.order_ttl_seconds) is int
    assert config.mongodb_db == "cloudpay"


def test_repr_never_shows_a_secret():
    environ = make_environ(MONGODB_URI="mongodb://user:hunter2pass@10.0.0.1:27017/admin")
    config = load_config("prepare", environ)
    shown = repr(config) + str(config)
    for secret in ("hunter2pass", APPSECRET, ORDER_TOKEN_SECRET, "BEGIN", "PRIVATE"):
        assert secret not in shown
    callback = repr(load_config("callback", environ))
    assert APIV3_KEY not in callback


def test_config_errors_never_echo_the_value():
    error = _error("callback", WECHATPAY_APIV3_KEY="s3cret-but-too-short")
    assert "s3cret" not in str(error) and "s3cret" not in repr(error.details)


def test_a_platform_certificate_is_accepted_as_the_public_key():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from tests.keys import platform_keys

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(platform_keys().public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
            .sign(platform_keys().private_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    config = load_config("callback", make_environ(WECHATPAY_PUBLIC_KEY=pem))
    assert config.wechatpay_public_key.public_numbers() == platform_keys().public_key.public_numbers()


# --- each role reads only what it uses; the merchant key is checked once, by reconcile ------

def _inconsistent_private_key_pem() -> str:
    """A readable RSA key whose CRT exponent is wrong: only a full validation notices."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(p=numbers.p, q=numbers.q, d=numbers.d, dmp1=numbers.dmp1 + 2,
                                   dmq1=numbers.dmq1, iqmp=numbers.iqmp, public_numbers=numbers.public_numbers)
    key = broken.private_key(unsafe_skip_rsa_key_validation=True)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_callback_never_parses_the_private_key_or_other_variables_it_does_not_use():
    config = load_config("callback", make_environ(WECHATPAY_PRIVATE_KEY="not a key", ORDER_TOKEN_SECRET="short",
                                                  WECHATPAY_NOTIFY_URL="ftp://x", WECHAT_APPSECRET="!"))
    assert config.wechatpay_private_key is None and config.order_token_secret is None
    assert config.wechatpay_notify_url is None and config.wechat_appsecret is None


def test_the_hot_functions_skip_the_key_check_and_reconcile_runs_it():
    pem = _inconsistent_private_key_pem()
    assert load_config("prepare", make_environ(WECHATPAY_PRIVATE_KEY=pem)).wechatpay_private_key is not None
    with pytest.raises(ConfigError) as caught:
        load_config("reconcile", make_environ(WECHATPAY_PRIVATE_KEY=pem))
    assert caught.value.variable == "WECHATPAY_PRIVATE_KEY"


def test_every_variable_is_read_by_some_role():
    from shared.config import _VARIABLES, OPTIONAL_BY_ROLE, REQUIRED_BY_ROLE

    read = {v for role in REQUIRED_BY_ROLE for v in REQUIRED_BY_ROLE[role] + OPTIONAL_BY_ROLE[role]}
    assert read == set(_VARIABLES)


# --- fulfilment and shipping ---------------------------------------------------------------

WEBHOOK = {"FULFILMENT_WEBHOOK_URL": "https://shop.example.com/hooks/cloudpay",
           "FULFILMENT_WEBHOOK_SECRET": "w" * 32}


@pytest.mark.parametrize("role", ["prepare", "callback", "reconcile"])
def test_every_function_that_writes_facts_reads_the_webhook(role):
    config = load_config(role, make_environ(**WEBHOOK, SHIPPING_MODE="virtual"))
    assert config.fulfilment_webhook_url == WEBHOOK["FULFILMENT_WEBHOOK_URL"]
    assert config.fulfilment_webhook_secret == b"w" * 32 and config.shipping_mode == "virtual"
    assert "w" * 32 not in repr(config)


@pytest.mark.parametrize("changes, variable, words", [
    ({"FULFILMENT_WEBHOOK_URL": "http://shop.example.com/hook"}, "FULFILMENT_WEBHOOK_URL", "https"),
    ({"FULFILMENT_WEBHOOK_URL": "shop.example.com/hook"}, "FULFILMENT_WEBHOOK_URL", "URL"),
    ({"FULFILMENT_WEBHOOK_URL": "https://shop.example.com/hook#x"}, "FULFILMENT_WEBHOOK_URL", "fragment"),
    ({"FULFILMENT_WEBHOOK_SECRET": None}, "FULFILMENT_WEBHOOK_SECRET", "required"),
    ({"FULFILMENT_WEBHOOK_SECRET": "short"}, "FULFILMENT_WEBHOOK_SECRET", "32 bytes"),
    ({"SHIPPING_MODE": "sometimes"}, "SHIPPING_MODE", "off, virtual, manual"),
])
def test_bad_fulfilment_settings_are_named(changes, variable, words):
    error = _error("callback", **{**WEBHOOK, **changes})
    assert error.variable == variable and words in error.message, error.message


def test_plain_http_webhooks_only_to_loopback():
    config = load_config("callback", make_environ(**{**WEBHOOK, "FULFILMENT_WEBHOOK_URL": "http://127.0.0.1:8099/h"}))
    assert config.fulfilment_webhook_url == "http://127.0.0.1:8099/h"


def test_reconcile_needs_the_app_secret_only_when_it_uploads_shipping():
    assert load_config("reconcile", make_environ(WECHAT_APPSECRET=None)).shipping_mode == "off"
    for mode in ("virtual", "manual"):
        error = _error("reconcile", WECHAT_APPSECRET=None, SHIPPING_MODE=mode)
        assert error.variable == "WECHAT_APPSECRET"
    assert load_config("callback", make_environ(WECHAT_APPSECRET=None, SHIPPING_MODE="virtual")).shipping_mode == \
        "virtual"   # callback only plans the upload
