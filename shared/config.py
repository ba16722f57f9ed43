"""Configuration: the environment-variable contract, read and validated once per instance.

Each function asks only for what it uses (least privilege): `load_config("callback")`
does not need the app secret, `load_config("prepare")` does not need the APIv3 key.
A missing or malformed variable raises `ConfigError` naming it; PEM keys are parsed
here so a bad key fails at cold start, not at the first payment.  `repr()` never shows
a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError

# Which variables each function needs.  A role reads only the variables it uses (below):
# others are neither parsed nor validated, so `callback` never loads the merchant's
# private key, even where one is set.
_WECHATPAY_CALLER = (
    "WECHATPAY_MCHID", "WECHAT_APPID", "WECHATPAY_PRIVATE_KEY", "WECHATPAY_CERT_SERIAL_NO",
    "WECHATPAY_NOTIFY_URL",
)
# WeChat Pay's own keys: the public key (with its id), platform certificates, or both
# (see `_check_wechatpay_keys`); the APIv3 key is optional unless certificates are downloaded.
_WECHATPAY_KEYS = ("WECHATPAY_PUBLIC_KEY", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PLATFORM_CERTS")
REQUIRED_BY_ROLE: dict[str, tuple[str, ...]] = {
    # The store alone (tests, admin scripts).
    "store": ("MONGODB_URI",),
    "prepare": ("MONGODB_URI", "WECHAT_APPSECRET", "ORDER_TOKEN_SECRET") + _WECHATPAY_CALLER,
    "callback": ("MONGODB_URI", "WECHATPAY_MCHID", "WECHAT_APPID", "WECHATPAY_APIV3_KEY"),
    "reconcile": ("MONGODB_URI",) + _WECHATPAY_CALLER,
}
_EVERY_ROLE = ("MONGODB_DB", "WECHATPAY_API_VERSION")
_API = ("WECHATPAY_API_BASE", "WECHATPAY_API_BASE_BACKUP", "WECHATPAY_APIV3_KEY")
# Every function that writes facts delivers them; every one that settles payments plans
# their shipping upload (only reconcile uploads, so callback needs no app secret).
_AFTER_PAYMENT = ("FULFILMENT_WEBHOOK_URL", "FULFILMENT_WEBHOOK_SECRET", "SHIPPING_MODE")
# Optional variables each role reads, besides its required ones.
OPTIONAL_BY_ROLE: dict[str, tuple[str, ...]] = {
    "store": _EVERY_ROLE,
    "prepare": _EVERY_ROLE + _WECHATPAY_KEYS + _API + _AFTER_PAYMENT + (
        "WECHAT_API_BASE", "ORDER_TTL_SECONDS", "ORDER_MAX_TOTAL_FEE"),
    "callback": _EVERY_ROLE + _WECHATPAY_KEYS + _AFTER_PAYMENT,
    "reconcile": _EVERY_ROLE + _WECHATPAY_KEYS + _API + _AFTER_PAYMENT + ("WECHAT_API_BASE", "WECHAT_APPSECRET"),
}
# The roles that verify what WeChat Pay signs.
_VERIFYING_ROLES = ("prepare", "callback", "reconcile")

# Never shown by repr() or in logs.
SECRET_FIELDS = frozenset({
    "mongodb_uri", "wechat_appsecret", "wechatpay_private_key", "wechatpay_apiv3_key",
    "order_token_secret", "fulfilment_webhook_secret",
})

DEFAULT_WECHATPAY_API_BASE = "https://api.mch.weixin.qq.com"
# WeChat Pay's backup domain (cross-city disaster recovery), as its API pages list it.
DEFAULT_WECHATPAY_API_BASE_BACKUP = "https://api2.mch.weixin.qq.com"
DEFAULT_WECHAT_API_BASE = "https://api.weixin.qq.com"
DEFAULT_ORDER_TTL_SECONDS = 1800
SHIPPING_MODES = ("off", "virtual", "manual")
# 20,000 yuan: a mini-shop default; raise it with ORDER_MAX_TOTAL_FEE.
DEFAULT_ORDER_MAX_TOTAL_FEE = 2_000_000

_APPID_RE = re.compile(r"^wx[0-9a-zA-Z]{16}$")
_MCHID_RE = re.compile(r"^[0-9]{6,16}$")
_SERIAL_RE = re.compile(r"^[0-9A-Za-z]{8,64}$")
_PUBKEY_ID_RE = re.compile(r"^[0-9A-Za-z_]{4,80}$")
_DBNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


@dataclass(frozen=True)
class Config:
    role: str
    mongodb_uri: str | None = None
    mongodb_db: str = "cloudpay"
    wechat_appid: str | None = None
    wechat_appsecret: str | None = None
    wechatpay_mchid: str | None = None
    wechatpay_private_key: Any = None        # cryptography RSAPrivateKey
    wechatpay_cert_serial_no: str | None = None
    wechatpay_apiv3_key: bytes | None = None  # exactly 32 bytes
    wechatpay_public_key: Any = None         # cryptography RSAPublicKey
    wechatpay_public_key_id: str | None = None
    # Platform certificates given as PEM (PlatformCertificate), or the word "download".
    wechatpay_platform_certs: Any = None
    wechatpay_notify_url: str | None = None
    wechatpay_api_base: str = DEFAULT_WECHATPAY_API_BASE
    wechatpay_api_base_backup: str = DEFAULT_WECHATPAY_API_BASE_BACKUP
    wechat_api_base: str = DEFAULT_WECHAT_API_BASE
    order_token_secret: bytes | None = None
    fulfilment_webhook_url: str | None = None  # unset: facts are kept, not delivered
    fulfilment_webhook_secret: bytes | None = None
    shipping_mode: str = "off"
    order_ttl_seconds: int = DEFAULT_ORDER_TTL_SECONDS
    order_max_total_fee: int = DEFAULT_ORDER_MAX_TOTAL_FEE

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value is not None:
                shown = "'***'"
            elif f.name in ("wechatpay_private_key", "wechatpay_public_key") and value is not None:
                shown = "<RSA key>"
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Config({', '.join(parts)})"

    __str__ = __repr__


def is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address: where plain http is allowed (simulator, tests)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        import ipaddress  # only for an http:// URL: rare, and not free at cold start

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- parsers: each takes the raw string and returns the typed value or raises ConfigError

def _pem_text(name: str, raw: str, kind: str) -> bytes:
    text = raw.strip()
    # serverless.yml and CI secrets often carry the PEM with literal "\n".
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    if "-----BEGIN" not in text:
        # A bare base64 body (as some consoles show it): wrap it.
        body = re.sub(r"\s+", "", text)
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        text = f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"
    if not text.isascii():
        _fail(name, "is not ASCII PEM text")
    return text.encode("ascii")


def _fail(name: str, problem: str):
    raise ConfigError(name, problem)


def _private_key(name: str, raw: str, *, validate: bool = False):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        # The full RSA consistency check costs ~80-100 ms per cold start; the key is our
        # own, so the hot functions skip it and `reconcile` (a timer) runs it instead:
        # a damaged key is reported by name there, and by every signature WeChat refuses.
        key = load_pem_private_key(_pem_text(name, raw, "PRIVATE KEY"), password=None,
                                   unsafe_skip_rsa_key_validation=not validate)
    except (ValueError, TypeError) as exc:
        raise ConfigError(name, "is not a readable unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        _fail(name, "must be an RSA private key")
    if key.key_size < 2048:
        _fail(name, f"RSA key is {key.key_size} bits; WeChat Pay needs 2048")
    return key


def _validated_private_key(name: str, raw: str):
    return _private_key(name, raw, validate=True)


def _public_key(name: str, raw: str):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = _pem_text(name, raw, "PUBLIC KEY")
    try:
        if b"CERTIFICATE" in text:  # a platform certificate also works
            from cryptography import x509  # ~40 ms of imports: only when needed

            key = x509.load_pem_x509_certificate(text).public_key()
        else:
            key = load_pem_public_key(text)
    except ValueError as exc:
        raise ConfigError(name, "is not a readable PEM public key or certificate") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        _fail(name, "must be an RSA public key")
    if key.key_size < 2048:
        _fail(name, f"RSA key is {key.key_size} bits; expected 2048")
    return key


def _platform_certs(name: str, raw: str):
    value = raw.strip()
    if value.lower() == "download":
        return "download"
    from shared.wechatpay.keys import load_certificates

    try:
        return tuple(load_certificates(_pem_text(name, value, "CERTIFICATE")))
    except ValueError as exc:
        raise ConfigError(name, "must be `download` or the PEM text of one or more platform "
                                "certificates (RSA, 2048 bits or more)") from exc


def _apiv3_key(name: str, raw: str) -> bytes:
    key = raw.encode("utf-8")
    if len(key) != 32:
        _fail(name, f"must be exactly 32 bytes (got {len(key)})")
    return key


def _pattern(regex: re.Pattern, what: str):
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if not regex.match(value):
            _fail(name, f"is not a valid {what}")
        return value
    return parse


def _mongodb_uri(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        _fail(name, "must start with mongodb:// or mongodb+srv://")
    return value


def _base_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        _fail(name, "must be an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        _fail(name, "must use https (plain http is allowed only on loopback, for the simulator)")
    return value


def _notify_url(name: str, raw: str) -> str:
    value = _base_url(name, raw)
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        _fail(name, "must not contain a query string or fragment (WeChat Pay rejects it)")
    return value


def _secret_bytes(name: str, raw: str) -> bytes:
    value = raw.encode("utf-8")
    if len(value) < 32:
        _fail(name, f"must be at least 32 bytes of random text (got {len(value)})")
    return value


def _webhook_url(name: str, raw: str) -> str:
    value = _base_url(name, raw)  # https, or http to a loopback host only
    if urlsplit(value).fragment:
        _fail(name, "must not contain a fragment")
    return value


def _shipping_mode(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in SHIPPING_MODES:
        _fail(name, f"must be one of {', '.join(SHIPPING_MODES)}")
    return value


def _int_range(low: int, high: int):
    def parse(name: str, raw: str) -> int:
        value = raw.strip()
        if not re.fullmatch(r"[0-9]{1,12}", value):
            _fail(name, "must be a whole number")
        number = int(value)
        if not low <= number <= high:
            _fail(name, f"must be between {low} and {high}")
        return number
    return parse


def _api_version(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value == "v2":
        _fail(name, "v2 is not supported by this release; use v3 (the default)")
    if value != "v3":
        _fail(name, "must be v3")
    return value


# variable -> (Config field, parser)
_VARIABLES: dict[str, tuple[str | None, Any]] = {
    "MONGODB_URI": ("mongodb_uri", _mongodb_uri),
    "MONGODB_DB": ("mongodb_db", _pattern(_DBNAME_RE, "database name")),
    "WECHAT_APPID": ("wechat_appid", _pattern(_APPID_RE, "mini-program appid (wx + 16 chars)")),
    "WECHAT_APPSECRET": ("wechat_appsecret", _pattern(re.compile(r"^[0-9A-Za-z]{16,64}$"),
                                                       "app secret")),
    "WECHATPAY_MCHID": ("wechatpay_mchid", _pattern(_MCHID_RE, "merchant id (digits)")),
    # Validated (v2 is refused) but not kept: this release speaks APIv3 only.
    "WECHATPAY_API_VERSION": (None, _api_version),
    "WECHATPAY_PRIVATE_KEY": ("wechatpay_private_key", _private_key),
    "WECHATPAY_CERT_SERIAL_NO": ("wechatpay_cert_serial_no",
                                 _pattern(_SERIAL_RE, "certificate serial number")),
    "WECHATPAY_APIV3_KEY": ("wechatpay_apiv3_key", _apiv3_key),
    "WECHATPAY_PUBLIC_KEY": ("wechatpay_public_key", _public_key),
    "WECHATPAY_PUBLIC_KEY_ID": ("wechatpay_public_key_id",
                                _pattern(_PUBKEY_ID_RE, "public key id (PUB_KEY_ID_...)")),
    "WECHATPAY_NOTIFY_URL": ("wechatpay_notify_url", _notify_url),
    "WECHATPAY_PLATFORM_CERTS": ("wechatpay_platform_certs", _platform_certs),
    "WECHATPAY_API_BASE": ("wechatpay_api_base", _base_url),
    "WECHATPAY_API_BASE_BACKUP": ("wechatpay_api_base_backup", _base_url),
    "WECHAT_API_BASE": ("wechat_api_base", _base_url),
    "ORDER_TOKEN_SECRET": ("order_token_secret", _secret_bytes),
    "FULFILMENT_WEBHOOK_URL": ("fulfilment_webhook_url", _webhook_url),
    "FULFILMENT_WEBHOOK_SECRET": ("fulfilment_webhook_secret", _secret_bytes),
    "SHIPPING_MODE": ("shipping_mode", _shipping_mode),
    # WeChat Pay clamps time_expire to [1 min, 90 days].
    "ORDER_TTL_SECONDS": ("order_ttl_seconds", _int_range(60, 90 * 24 * 3600)),
    "ORDER_MAX_TOTAL_FEE": ("order_max_total_fee", _int_range(1, 10**11)),
}


def parse_variable(variable: str, raw: str, *, full_key_check: bool = False) -> Any:
    """One variable's value as the functions read it, or the ConfigError they would raise
    (`full_key_check`: a private key with the full check reconcile makes)."""
    parse = _VARIABLES[variable][1]
    if full_key_check and parse is _private_key:
        parse = _validated_private_key
    return parse(variable, raw)


def load_config(role: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the variables for `role` from `environ` (default os.environ)."""
    values = _parse_variables(role, os.environ if environ is None else environ, None)
    if role in _VERIFYING_ROLES:
        _check_wechatpay_keys(values)
    _check_after_payment(role, values)
    return Config(**values)


def parse_config(role: str, environ: Mapping[str, str] | None = None) -> tuple[Config, list[ConfigError]]:
    """Every variable of `role` read on its own (the doctor): the configuration of those
    that parsed (one that did not keeps its default) and every problem found, each a
    ConfigError naming its variable, once per variable.  `load_config` raises the first."""
    problems: list[ConfigError] = []
    values = _parse_variables(role, os.environ if environ is None else environ, problems)
    checks = [_check_wechatpay_keys] if role in _VERIFYING_ROLES else []
    checks.append(lambda found: _check_after_payment(role, found))
    for check in checks:
        try:
            check(values)
        except ConfigError as error:
            if error.variable not in {problem.variable for problem in problems}:
                problems.append(error)
    return Config(**values), problems


def _parse_variables(role: str, env: Mapping[str, str], problems: list[ConfigError] | None) -> dict[str, Any]:
    """The parsed values of `role`'s variables; a problem is raised, or kept in `problems`."""
    if role not in REQUIRED_BY_ROLE:
        raise ValueError(f"unknown role {role!r}")
    required = REQUIRED_BY_ROLE[role]
    used = set(required) | set(OPTIONAL_BY_ROLE[role])
    values: dict[str, Any] = {"role": role}
    for variable, (field_name, parse) in _VARIABLES.items():
        if variable not in used:
            continue
        if parse is _private_key and role == "reconcile":
            parse = _validated_private_key
        raw = env.get(variable)
        try:
            if raw is None or raw.strip() == "":
                if variable in required:
                    raise ConfigError(variable, "is required but not set")
                continue
            value = parse(variable, raw)
        except ConfigError as error:
            if problems is None:
                raise
            problems.append(error)
            continue
        if field_name is not None:
            values[field_name] = value
    return values


def _check_after_payment(role: str, values: dict) -> None:
    if "fulfilment_webhook_url" in values and "fulfilment_webhook_secret" not in values:
        raise ConfigError("FULFILMENT_WEBHOOK_SECRET", "is required with FULFILMENT_WEBHOOK_URL "
                                                       "(every delivery is signed with it)")
    if role == "reconcile" and values.get("shipping_mode", "off") != "off" and "wechat_appsecret" not in values:
        raise ConfigError("WECHAT_APPSECRET", "is required in reconcile with SHIPPING_MODE "
                                              f"{values['shipping_mode']} (the shipping upload needs an access token)")


def _check_wechatpay_keys(values: dict) -> None:
    """At least one way to verify WeChat Pay: the public key and its id together, and/or
    platform certificates; downloading certificates needs the APIv3 key to decrypt them."""
    has_key, has_id = "wechatpay_public_key" in values, "wechatpay_public_key_id" in values
    if has_key != has_id:
        missing = "WECHATPAY_PUBLIC_KEY_ID" if has_key else "WECHATPAY_PUBLIC_KEY"
        raise ConfigError(missing, "is required with its pair (the WeChat Pay public key and its "
                                   "PUB_KEY_ID_... go together)")
    certificates = values.get("wechatpay_platform_certs")
    if not has_key and not certificates:
        raise ConfigError("WECHATPAY_PUBLIC_KEY", "is required but not set (or set WECHATPAY_PLATFORM_CERTS "
                                                  "for platform certificates)")
    if certificates == "download" and "wechatpay_apiv3_key" not in values:
        raise ConfigError("WECHATPAY_APIV3_KEY", "is required with WECHATPAY_PLATFORM_CERTS=download "
                                                 "(the certificates are encrypted with it)")
