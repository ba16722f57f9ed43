"""`doctor`: a deployment check, item by item, in words a merchant understands.

    python -m shared.admin doctor                  # every role, from this environment
    scf invoke --target ./scf-reconcile --data '{"action": "doctor"}'   # inside SCF

Each check is a small function of a `Checkup` (what the checks share: the environment,
the configuration, and the answers several checks read, each fetched once) returning
`(status, message)`: "ok", "warn" (works, but look at it), "fail" (it will not work) or
"skip" (not configured, or not checkable here).  `CHECKS` lists them; the result is

    {"ok": <no check failed>, "checks": [{"item", "status", "message"}, ...]}

Rules every check keeps: it is bounded in time (the clients' own timeouts, and
CHECK_BUDGET_S of outbound time at most); one failing never stops the others (an
unexpected exception becomes a "fail" naming its class only); and no message ever
carries a secret value (they name variables, hosts, ids and serials; every message is
also scrubbed of the configured secret values before it is returned).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared import deadline
from shared.config import REQUIRED_BY_ROLE, is_loopback_host, parse_config, parse_variable
from shared.errors import (
    ArchiveUnavailable,
    CloudPayError,
    ConfigError,
    MalformedNotification,
    SignatureInvalid,
    StoreUnavailable,
    TimestampOutOfRange,
    UnknownSerial,
    WeChatApiRejected,
    WeChatApiUnavailable,
    WeChatPayBadResponse,
    WeChatPayRejected,
    WeChatPayUnreachable,
)
from shared.log import log, where

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
ROLES = ("prepare", "callback", "reconcile")
CHECK_BUDGET_S = 20.0           # outbound time one check may take (clients' timeouts are shorter)
ACTION_SAFETY_S = 3.0           # the action stops this long before the function's timeout
CLOCK_WARN_S = 60               # more apart than this: warn
CLOCK_LIMIT_S = 300             # WeChat Pay refuses requests, we refuse answers, past this
NOTIFY_URL_MAX = 256            # WeChat Pay's notify_url: at most 256 characters
PUBLIC_KEY_ID_RE = re.compile(r"PUB_KEY_ID_[0-9]+")
IS_TRADE_MANAGED_PATH = "/wxa/sec/order/is_trade_managed"
SERVERLESS_FILES = {"prepare": "scf-prepare/serverless.yml", "callback": "scf-callback/serverless.yml",
                    "reconcile": "scf-reconcile/serverless.yml"}
# Values never shown (scrubbed from every message, whatever produced it).
SECRET_VARIABLES = ("WECHATPAY_PRIVATE_KEY", "WECHATPAY_APIV3_KEY", "WECHAT_APPSECRET", "ORDER_TOKEN_SECRET",
                    "FULFILMENT_WEBHOOK_SECRET", "MONGODB_URI", "TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY",
                    "TENCENTCLOUD_SESSIONTOKEN", "COS_SECRET_ID", "COS_SECRET_KEY")
_MIN_SCRUBBED = 6               # shorter values are not scrubbed (they would mask ordinary words)


class Skip(Exception):
    """Raised inside a check: it cannot be made here (its message says why)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Check:
    item: str
    run: Callable[[Checkup], tuple[str, str]]


class Checkup:
    """What the checks share.  `function` is the role of the running function (the action),
    None on the command line; `context` that function's SCF context."""

    def __init__(self, environ: Mapping[str, str], roles: tuple[str, ...] = ROLES, *, function: str | None = None,
                 context: Any = None, cwd: Path | None = None, clock: Callable[[], float] = time.time):
        self.raw = dict(environ)
        self.roles = roles
        self.function = function
        self.context = context
        self.cwd = cwd
        self.clock = clock
        self._memo: dict[str, tuple[bool, Any]] = {}
        self._closers: list[Callable[[], None]] = []

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time; its value, or its exception, every time."""
        if name not in self._memo:
            try:
                self._memo[name] = (True, compute())
            except Exception as exc:  # kept: the next check that needs it gets the same answer
                self._memo[name] = (False, exc)
        ok, value = self._memo[name]
        if not ok:
            raise value
        return value

    def failed(self, name: str) -> bool:
        return name in self._memo and not self._memo[name][0]

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: S110 - closing a probe's client must not fail the report
                pass

    # --- the environment and the configuration ----------------------------------------

    def ssm(self) -> tuple[Any, dict[str, str], dict[str, str]] | None:
        """(source, the secret's variables, the environment overlaid with them), or None
        without CLOUDPAY_SSM_SECRET_NAME; ConfigError when it cannot be read."""
        def read():
            from shared import ssm

            source = ssm.ssm_source(self.raw)
            if source is None:
                return None
            held: dict[str, str] = {}

            def fetch(src, env):
                values = ssm.fetch_secret(src, env)
                held.update(values)
                return values

            merged = ssm.SecretCache(fetch=fetch).environ(self.raw)   # a fresh read, not a cached one
            return source, held, merged

        return self.once("ssm", read)

    def environ(self) -> dict[str, str]:
        """What the functions see: the environment with the SSM secret laid over it (the
        environment alone when the secret cannot be read)."""
        try:
            found = self.ssm()
        except ConfigError:
            return self.raw
        return self.raw if found is None else found[2]

    def config_of(self, role: str):
        return self.once(f"config:{role}", lambda: parse_config(role, self.environ()))

    @property
    def config(self):
        """The reconcile configuration, of the variables that parsed: what the other checks use."""
        return self.config_of("reconcile")[0]

    def secret_values(self) -> list[str]:
        environ = self.environ()
        values = [environ.get(name) or "" for name in SECRET_VARIABLES]
        try:
            found = self.ssm()
        except ConfigError:
            found = None
        if found is not None:
            values.extend(found[1].values())
        uri = environ.get("MONGODB_URI") or ""
        try:
            password = urlsplit(uri).password
        except ValueError:
            password = None
        if password:
            values.extend((password, unquote(password)))
        values.extend(line for value in list(values) if "\n" in value for line in value.splitlines()
                      if len(line.strip()) >= 16 and not line.startswith("-----"))   # a PEM's lines, one by one
        return sorted({value.strip() for value in values if len(value.strip()) >= _MIN_SCRUBBED}, key=len,
                      reverse=True)

    def scrub(self, text: str) -> str:
        for value in self.secret_values():
            text = text.replace(value, "***")
        return text

    # --- clients ---------------------------------------------------------------------

    @property
    def http(self):
        def build():
            from shared.http import HttpClient

            client = HttpClient()
            self._closers.append(client.close)
            return client

        return self.once("http", build)

    def store(self):
        config = self.config
        if not config.mongodb_uri:
            raise Skip("MONGODB_URI is not set or not usable (see config)")

        def build():
            from shared.store.mongo import MongoOrderStore

            store = MongoOrderStore(config.mongodb_uri, config.mongodb_db)
            self._closers.append(store.close)
            return store

        return self.once("store", build)

    def mongo(self) -> list[dict]:
        """Ping MongoDB, then read its indexes (before this doctor writes anything)."""
        def look():
            store = self.store()
            store.ping()
            return store.index_differences()

        return self.once("mongo", look)

    def keys(self):
        def build():
            from shared.wechatpay.keys import key_set_from_config

            try:
                keys = key_set_from_config(self.config)
            except ValueError:
                raise Skip("the WeChat Pay public key and its id do not both load (see config)") from None
            if self.config.wechatpay_platform_certs == "download":
                keys.set_source(self._certificate_source)
            return keys

        return self.once("keys", build)

    def _certificate_source(self, reason: str) -> list:
        """Download mode: what the functions share in the store, and WeChat Pay's download."""
        from shared.wechatpay.keys import load_certificates

        known = []
        if not self.failed("mongo"):
            try:
                self.mongo()
                for record in self.store().platform_certificates():
                    known.extend(load_certificates(record["pem"]))
            except (CloudPayError, Skip, KeyError, ValueError):
                pass
        try:
            return known + list(self.certificates())
        except CloudPayError:
            if known:
                return known
            raise

    def client(self):
        config = self.config
        missing = [name for name, value in (
            ("WECHATPAY_MCHID", config.wechatpay_mchid), ("WECHAT_APPID", config.wechat_appid),
            ("WECHATPAY_PRIVATE_KEY", config.wechatpay_private_key),
            ("WECHATPAY_CERT_SERIAL_NO", config.wechatpay_cert_serial_no)) if not value]
        if missing:
            raise Skip(f"{', '.join(missing)} not set or not usable (see config): no signed call can be made")

        def build():
            from shared.wechatpay.client import WeChatPayClient

            return WeChatPayClient.from_config(config, keys=self.keys(), http=self.http)

        return self.once("client", build)

    def answer(self):
        """(path, response, local time on arrival) of one signed call: the query of an
        order number that cannot exist (404 ORDER_NOT_EXIST once the signature is accepted)."""
        client = self.client()

        def call():
            path = f"/v3/pay/transactions/out-trade-no/DOCTOR{secrets.randbelow(10**20):020d}"
            response = client.probe(path, query={"mchid": client.mchid})
            return path, response, self.clock()

        return self.once("answer", call)

    def certificates(self) -> list:
        return self.once("certificates", lambda: self.client().download_certificates())


# --- small helpers ----------------------------------------------------------------------

def _wechat_error(raw: bytes) -> tuple[str, str]:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("code") or "")[:64], str(body.get("message") or "")[:160]


def _their_time(headers) -> int | None:
    stamp = headers.get("Wechatpay-Timestamp")
    if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit():
        return int(stamp)
    date = headers.get("Date")
    if date:
        from email.utils import parsedate_to_datetime

        try:
            return int(parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            return None
    return None


def _skew(checkup: Checkup) -> int | None:
    """WeChat Pay's clock minus ours, in seconds (None without an answer carrying a time)."""
    _, response, received = checkup.answer()
    theirs = _their_time(response.headers)
    # Whole seconds, cut down: their clock read somewhere in [theirs, theirs + 1).
    return None if theirs is None else int(round(theirs + 0.5 - received))


def _mongo_hosts(uri: str) -> str:
    rest = uri.split("://", 1)[-1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return netloc.rpartition("@")[2] or "?"


def _shown_url(url: str) -> str:
    """scheme://host/path: a query may hold a credential."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _key_name(serial: str) -> str:
    return f"public key {serial}" if serial.startswith("PUB_KEY_ID_") else f"platform certificate {serial}"


def _configured_keys(keys) -> str:
    parts = []
    if keys.public_key_id:
        parts.append(f"public key {keys.public_key_id}")
    certificates = keys.certificates()
    if certificates:
        parts.append("platform certificate(s) " + ", ".join(cert.serial for cert in certificates))
    elif keys.downloads:
        parts.append("platform certificates downloaded from WeChat Pay (none obtained)")
    return " and ".join(parts) or "no key"


# --- the checks -----------------------------------------------------------------------------

def check_ssm(checkup: Checkup) -> tuple[str, str]:
    try:
        found = checkup.ssm()
    except ConfigError as error:
        return FAIL, f"the SSM secret cannot be read: {error.message}"
    if found is None:
        return SKIP, "CLOUDPAY_SSM_SECRET_NAME is not set: every variable comes from the environment"
    source, held, _ = found
    lacking: dict[str, list[str]] = {}
    environ = checkup.environ()   # the environment with the secret laid over it
    for role in checkup.roles:
        for problem in checkup.config_of(role)[1]:
            if not (environ.get(problem.variable) or "").strip():   # required, and set nowhere
                lacking.setdefault(problem.variable, []).append(role)
    where_ = f"SSM secret {source.name!r} version {source.version_id!r}"
    if lacking:
        missing = "; ".join(f"{name} (needed by {', '.join(roles)})" for name, roles in lacking.items())
        return FAIL, f"{where_} lacks {missing}, and the environment does not set it either"
    return OK, f"{where_} read: {len(held)} variable(s) ({', '.join(sorted(held)) or 'none'})"


def _config_check(role: str) -> Callable[[Checkup], tuple[str, str]]:
    def check(checkup: Checkup) -> tuple[str, str]:
        problems = checkup.config_of(role)[1]
        if not problems:
            return OK, f"the {role} configuration loads"
        text = "; ".join(problem.message for problem in problems)
        if checkup.failed("ssm"):
            text += " (the SSM secret could not be read: see ssm)"
        return FAIL, text

    check.__name__ = f"check_config_{role}"
    return check


def check_public_key_id(checkup: Checkup) -> tuple[str, str]:
    value = (checkup.environ().get("WECHATPAY_PUBLIC_KEY_ID") or "").strip()
    if not value:
        if checkup.config.wechatpay_platform_certs:
            return SKIP, "WECHATPAY_PUBLIC_KEY_ID is not set (WeChat Pay is verified with platform certificates)"
        return SKIP, "WECHATPAY_PUBLIC_KEY_ID is not set (see config)"
    if not PUBLIC_KEY_ID_RE.fullmatch(value):
        return FAIL, ("WECHATPAY_PUBLIC_KEY_ID is not a WeChat Pay public key id: it is PUB_KEY_ID_ followed by "
                      "digits, as the merchant platform shows it (账户中心 > API安全 > 微信支付公钥)")
    return OK, f"{value} has the form of a WeChat Pay public key id"


def check_notify_url(checkup: Checkup) -> tuple[str, str]:
    raw = (checkup.environ().get("WECHATPAY_NOTIFY_URL") or "").strip()
    if not raw:
        needed = [role for role in checkup.roles if "WECHATPAY_NOTIFY_URL" in REQUIRED_BY_ROLE[role]]
        if needed:
            return FAIL, f"WECHATPAY_NOTIFY_URL is not set ({', '.join(needed)} need it: the callback's URL)"
        return SKIP, "WECHATPAY_NOTIFY_URL is not set"
    try:
        url = parse_variable("WECHATPAY_NOTIFY_URL", raw)   # https (http on loopback), no query or fragment
    except ConfigError as error:
        return FAIL, (f"{error.message}: WeChat Pay notifies only an absolute https URL without parameters, of at "
                      f"most {NOTIFY_URL_MAX} characters (the callback's Function URL)")
    if len(url) > NOTIFY_URL_MAX:
        return FAIL, f"WECHATPAY_NOTIFY_URL is {len(url)} characters; WeChat Pay takes at most {NOTIFY_URL_MAX}"
    if is_loopback_host(urlsplit(url).hostname):
        if checkup.raw.get("TENCENTCLOUD_RUNENV") == "SCF":
            return FAIL, f"WECHATPAY_NOTIFY_URL {url} is a loopback address, which WeChat Pay cannot reach"
        return OK, f"{url} (a loopback address: right for a local run only, WeChat Pay cannot reach it)"
    return OK, f"{url} is an absolute https URL without query or fragment ({len(url)} characters)"


def check_mongodb(checkup: Checkup) -> tuple[str, str]:
    config = checkup.config
    store = checkup.store()
    hosts = _mongo_hosts(config.mongodb_uri)
    try:
        checkup.mongo()
    except StoreUnavailable as error:
        code = error.details.get("mongoCode")
        if code is not None:
            return FAIL, (f"MongoDB at {hosts} refused the doctor (code {code}): check the user and password in "
                          f"MONGODB_URI and that the user may read and write database {config.mongodb_db!r}")
        return FAIL, (f"MongoDB at {hosts} did not answer ({error.details.get('error') or error.code}): check "
                      "MONGODB_URI, and that the function runs in the database's VPC and subnet")
    try:
        store.write_probe()
    except StoreUnavailable as error:
        return FAIL, (f"MongoDB at {hosts} answers but did not take a write "
                      f"({error.details.get('mongoCode') or error.details.get('error') or error.code}): the user in "
                      f"MONGODB_URI needs readWrite on database {config.mongodb_db!r}")
    return OK, f"MongoDB at {hosts} answers and takes writes (database {config.mongodb_db!r})"


def check_indexes(checkup: Checkup) -> tuple[str, str]:
    if checkup.failed("mongo"):
        raise Skip("MongoDB is not reachable (see mongodb)")
    try:
        differences = checkup.mongo()
    except StoreUnavailable:
        raise Skip("MongoDB is not reachable (see mongodb)") from None
    absent = [d["collection"] for d in differences if d["problem"] == "no_collection"]
    wrong = [d for d in differences if d["problem"] != "no_collection"]
    meaning = {"missing": "lacks index", "not_unique": "has a non-unique", "conflict": "has another index named",
               "not_ttl": "lacks the declared expiry (expireAfterSeconds) of"}
    if wrong:
        listed = "; ".join(f"{d['collection']} {meaning[d['problem']]} {d['index']}" for d in wrong)
        return FAIL, f"{listed}: run `python -m shared.admin setup` (or the action {{\"action\": \"setup\"}})"
    if absent:
        return WARN, (f"{len(absent)} collection(s) do not exist yet ({', '.join(absent)}): the functions create "
                      "them with their indexes at first use, or run `python -m shared.admin setup` now")
    from shared.store.port import INDEXES

    count = sum(len(indexes) for indexes in INDEXES.values())
    return OK, f"every declared index is there ({count} in {len(INDEXES)} collections)"


def check_merchant_key(checkup: Checkup) -> tuple[str, str]:
    client = checkup.client()
    config = checkup.config
    try:
        _, response, _ = checkup.answer()
    except WeChatPayUnreachable as error:
        return FAIL, (f"WeChat Pay could not be reached at {client.api_base} ({error.details.get('cause')}): the "
                      "function needs internet access (publicAccess, or a NAT gateway in its VPC)")
    code, message = _wechat_error(response.body)
    if 200 <= response.status < 300 or (response.status == 404 and code == "ORDER_NOT_EXIST"):
        return OK, (f"WeChat Pay accepted a request signed for merchant {config.wechatpay_mchid} with certificate "
                    f"serial {config.wechatpay_cert_serial_no}")
    said = f" (WeChat Pay: {code} {message})".rstrip() if code else ""
    if response.status == 401:
        skew = _skew(checkup)
        if skew is not None and abs(skew) > CLOCK_LIMIT_S:
            return FAIL, (f"WeChat Pay refused the signature{said}: this machine's clock is {abs(skew)} s off "
                          "WeChat Pay's (see clock)")
        return FAIL, (f"WeChat Pay refused the request signature{said}: WECHATPAY_PRIVATE_KEY and "
                      f"WECHATPAY_CERT_SERIAL_NO {config.wechatpay_cert_serial_no} do not belong together, or "
                      f"WECHATPAY_MCHID {config.wechatpay_mchid} is not the merchant of that certificate "
                      "(商户API证书: 账户中心 > API安全)")
    return FAIL, f"WeChat Pay answered HTTP {response.status} to a signed query{said}"


def check_wechatpay_keys(checkup: Checkup) -> tuple[str, str]:
    client = checkup.client()
    try:
        path, response, _ = checkup.answer()
    except WeChatPayUnreachable:
        raise Skip("WeChat Pay gave no answer to verify (see merchant_key)") from None
    serial = (response.headers.get("Wechatpay-Serial") or "").strip()
    if not response.headers.get("Wechatpay-Signature"):
        if 200 <= response.status < 300:
            return FAIL, "WeChat Pay's answer carries no signature: it is not WeChat Pay (check WECHATPAY_API_BASE)"
        raise Skip(f"WeChat Pay's {response.status} answer carries no signature, so the keys could not be checked "
                   "(see merchant_key)")
    keys = client.keys
    try:
        client.verify_response(response.headers, response.body, path)
    except WeChatPayBadResponse as error:
        return _keys_failure(checkup, keys, serial, error.__cause__)
    verified = f"WeChat Pay's answer verifies with the {_key_name(serial)}"
    if keys.downloads and not checkup.failed("certificates"):
        try:
            checkup.certificates()
            verified += "; the platform certificates' download verified too"
        except CloudPayError:
            pass
    return OK, verified


def _keys_failure(checkup: Checkup, keys, serial: str, cause) -> tuple[str, str]:
    configured = _configured_keys(keys)
    if isinstance(cause, UnknownSerial):
        held = {cert.serial: cert for cert in keys.certificates()}
        if serial in held:
            ended = time.strftime("%Y-%m-%d", time.gmtime(held[serial].not_after))
            return FAIL, f"WeChat Pay signed with platform certificate {serial}, which expired on {ended} (UTC)"
        if serial.startswith("PUB_KEY_ID_"):
            hint = "" if PUBLIC_KEY_ID_RE.fullmatch(keys.public_key_id or "") else " (see public_key_id)"
            return FAIL, (f"WeChat Pay signed with public key {serial}, which is not configured ({configured}): "
                          f"set WECHATPAY_PUBLIC_KEY_ID to {serial} and WECHATPAY_PUBLIC_KEY to that key "
                          f"(账户中心 > API安全 > 微信支付公钥){hint}")
        if keys.downloads and checkup.failed("certificates"):
            raise Skip(f"WeChat Pay signed with platform certificate {serial}, and no platform certificate could be "
                       "downloaded to check it (see apiv3_key)")
        return FAIL, (f"WeChat Pay signed with platform certificate {serial}, which is not configured ({configured}): "
                      "this merchant signs with platform certificates: set WECHATPAY_PLATFORM_CERTS=download "
                      "(with WECHATPAY_APIV3_KEY)")
    if isinstance(cause, SignatureInvalid):
        if serial.startswith("PUB_KEY_ID_"):
            return FAIL, (f"WeChat Pay signed with public key {serial}, and WECHATPAY_PUBLIC_KEY does not verify the "
                          f"signature: it is not the public key of {serial} (download it again: 账户中心 > API安全 "
                          "> 微信支付公钥)")
        return FAIL, (f"WeChat Pay signed with platform certificate {serial}, and the certificate configured under "
                      "that serial does not verify the signature: it is not WeChat Pay's")
    if isinstance(cause, TimestampOutOfRange):
        return FAIL, (f"WeChat Pay's answer is signed with a time {cause.details.get('skewSeconds')} s from this "
                      "machine's clock, more than the 300 s allowed (see clock)")
    if isinstance(cause, MalformedNotification):
        return FAIL, f"WeChat Pay's signature headers are malformed ({cause.message})"
    return FAIL, f"WeChat Pay's answer does not verify ({type(cause).__name__})"


def check_apiv3_key(checkup: Checkup) -> tuple[str, str]:
    raw = checkup.environ().get("WECHATPAY_APIV3_KEY") or ""
    download = checkup.config.wechatpay_platform_certs == "download"
    if not raw.strip():
        raise Skip("WECHATPAY_APIV3_KEY is not set here (callback needs it to decrypt notifications)")
    size = len(raw.encode("utf-8"))
    if size != 32:
        return FAIL, f"WECHATPAY_APIV3_KEY must be exactly 32 bytes (got {size})"
    checkup.client()
    try:
        certificates = checkup.certificates()
    except WeChatPayRejected as error:
        if error.wechat_code == "RESOURCE_NOT_EXISTS":
            if download:
                return FAIL, ("WECHATPAY_PLATFORM_CERTS=download, but WeChat Pay holds no platform certificates for "
                              "this merchant: verify with the WeChat Pay public key instead (WECHATPAY_PUBLIC_KEY "
                              "and WECHATPAY_PUBLIC_KEY_ID)")
            return SKIP, ("WECHATPAY_APIV3_KEY has the right form (32 bytes); this merchant has no platform "
                          "certificates (it uses the public key), so only the first notification can prove the key: "
                          "callback answers 400 and logs DECRYPT_FAILED if it is wrong")
        if error.http_status == 401:
            raise Skip("WeChat Pay refused the signed call, so the APIv3 key could not be tried (see "
                       "merchant_key)") from None
        return FAIL, f"downloading the platform certificates failed: {error.wechat_code} {error.message}"
    except WeChatPayUnreachable:
        raise Skip("WeChat Pay could not be reached (see merchant_key)") from None
    except WeChatPayBadResponse as error:
        if error.details.get("check") == "decrypt":
            return FAIL, ("WECHATPAY_APIV3_KEY does not decrypt WeChat Pay's platform certificates: it is not the "
                          "APIv3 key set in the merchant platform (账户中心 > API安全 > APIv3密钥)")
        if error.details.get("check"):
            return WARN, ("WECHATPAY_APIV3_KEY decrypts the platform certificates, but their answer did not verify "
                          f"({error.details['check']}: see wechatpay_keys)")
        return FAIL, f"the platform certificates could not be read ({error.message})"
    serials = ", ".join(cert.serial for cert in certificates)
    return OK, f"WECHATPAY_APIV3_KEY decrypts WeChat Pay's platform certificates ({serials})"


def check_clock(checkup: Checkup) -> tuple[str, str]:
    try:
        skew = _skew(checkup)
    except WeChatPayUnreachable:
        raise Skip("WeChat Pay gave no answer to compare clocks with (see merchant_key)") from None
    if skew is None:
        raise Skip("WeChat Pay's answer carries no time to compare with")
    side = "behind" if skew > 0 else "ahead of"
    if abs(skew) > CLOCK_LIMIT_S:
        return FAIL, (f"this machine's clock is {abs(skew)} s {side} WeChat Pay's: past {CLOCK_LIMIT_S} s WeChat Pay "
                      "refuses our requests and we refuse its answers and notifications: synchronise the clock (NTP)")
    if abs(skew) > CLOCK_WARN_S:
        return WARN, (f"this machine's clock is {abs(skew)} s {side} WeChat Pay's ({CLOCK_LIMIT_S} s are tolerated): "
                      "synchronise the clock (NTP) before it drifts further")
    return OK, f"this machine's clock is within {max(abs(skew), 1)} s of WeChat Pay's"


def check_timeout(checkup: Checkup) -> tuple[str, str]:
    if checkup.function is not None:
        return _running_timeout(checkup, checkup.function)
    problems, notes, read = [], [], []
    for function, assumed in deadline.FUNCTION_TIMEOUT_S.items():
        if assumed < deadline.MIN_TIMEOUT_S[function]:
            problems.append(f"shared/deadline.py gives {function} {assumed} s, below the "
                            f"{deadline.MIN_TIMEOUT_S[function]} s it needs")
    root = checkup.cwd or Path.cwd()
    present = {function: root / name for function, name in SERVERLESS_FILES.items() if (root / name).is_file()}
    yaml = _yaml() if present else None
    if present and yaml is None:
        notes.append("PyYAML is not installed, so scf-*/serverless.yml were not read")
        present = {}
    for function, path in present.items():
        name, need, assumed = SERVERLESS_FILES[function], deadline.MIN_TIMEOUT_S[function], \
            deadline.FUNCTION_TIMEOUT_S[function]
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(f"{name} cannot be read ({type(exc).__name__})")
            continue
        timeout = _timeout_of(document)
        if timeout is None:
            notes.append(f"{name} sets no whole-number timeout")
        elif timeout < need:
            problems.append(f"{name} gives {function} a timeout of {timeout} s; it needs at least {need} s")
        elif timeout != assumed:
            notes.append(f"{name} gives {function} {timeout} s, while the handlers assume {assumed} s when SCF "
                         "passes no time limit (shared/deadline.py)")
        read.append(name)
    if problems:
        return FAIL, "; ".join(problems + notes)
    if notes:
        return WARN, "; ".join(notes)
    summary = ", ".join(f"{function} {assumed} s (needs {deadline.MIN_TIMEOUT_S[function]})"
                        for function, assumed in deadline.FUNCTION_TIMEOUT_S.items())
    return OK, summary + (f"; {', '.join(read)} agree" if read else "; no scf-*/serverless.yml here to compare")


def _running_timeout(checkup: Checkup, function: str) -> tuple[str, str]:
    context = checkup.context
    limit = context.get("time_limit_in_ms") if isinstance(context, dict) else None
    if type(limit) is not int or limit <= 0:
        raise Skip("SCF passed no time_limit_in_ms in the context, so the running timeout is not known")
    need = deadline.MIN_TIMEOUT_S[function]
    seconds = f"{limit / 1000:g}"
    if limit < need * 1000:
        return FAIL, (f"{function} runs with a timeout of {seconds} s; it needs at least {need} s: set timeout: "
                      f"{deadline.FUNCTION_TIMEOUT_S[function]} in scf-{function}/serverless.yml (or the console) "
                      "and deploy again")
    return OK, f"{function} runs with a timeout of {seconds} s (it needs at least {need} s)"


def _yaml():
    try:
        import yaml  # a dev dependency, never packaged: only the command line at the repository root reads it
    except ImportError:
        return None
    return yaml


def _timeout_of(document) -> int | None:
    if not isinstance(document, dict):
        return None
    inputs = document.get("inputs")
    value = inputs.get("timeout") if isinstance(inputs, dict) and "timeout" in inputs else document.get("timeout")
    return value if type(value) is int else None


def check_cos(checkup: Checkup) -> tuple[str, str]:
    from shared.archive import BillArchive

    environ = checkup.environ()
    if not (environ.get("COS_BUCKET") or "").strip():
        return SKIP, "COS_BUCKET is not set: the daily bills are not archived"
    try:
        archive = BillArchive.from_environ(environ)
    except ConfigError as error:
        return FAIL, error.message
    try:
        archive.write_probe()
    except ArchiveUnavailable as error:
        reason, operation = str(error.details.get("reason")), error.details.get("operation")
        if reason in ("NoSuchBucket", "404"):
            return FAIL, (f"bucket {archive.bucket} does not exist in {archive.region}: create it, or correct "
                          "COS_BUCKET / COS_REGION")
        if reason in ("AccessDenied", "403"):
            return FAIL, (f"the credentials may not {operation} objects in bucket {archive.bucket}: give the function "
                          "role (or COS_SECRET_ID) cos:PutObject and cos:DeleteObject on it")
        if reason in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return FAIL, f"COS refused the credentials ({reason}): check the function role, or COS_SECRET_ID/KEY"
        if reason.endswith(("ConnectionError", "TimeoutError", "ConnectTimeoutError", "ReadTimeoutError")):
            return FAIL, f"COS could not be reached at {archive.endpoint} ({reason})"
        return FAIL, f"COS {operation} in bucket {archive.bucket} failed ({reason})"
    return OK, f"bucket {archive.bucket} ({archive.region}) takes writes: a probe object was put and deleted"


def check_fulfilment(checkup: Checkup) -> tuple[str, str]:
    from shared.outbox import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, Relay
    from shared.store.port import now_ms

    raw = (checkup.environ().get("FULFILMENT_WEBHOOK_URL") or "").strip()
    if not raw:
        return SKIP, "FULFILMENT_WEBHOOK_URL is not set: facts are kept in `events`, not delivered to a shop"
    config = checkup.config
    if not config.fulfilment_webhook_url:
        return FAIL, "FULFILMENT_WEBHOOK_URL is not usable (see config)"
    if not config.fulfilment_webhook_secret:
        return FAIL, "FULFILMENT_WEBHOOK_SECRET is not set or not usable (every delivery is signed with it)"
    shown = _shown_url(config.fulfilment_webhook_url)
    status, error = Relay(config, None, checkup.http, clock=now_ms).ping()
    if error is None:
        return OK, f"{shown} answered {status} to a signed cloudpay.ping"
    if status is None:
        kind = error.rpartition(" ")[2]
        words = {"connect": "refused the connection (is the receiver running, and reachable from the function?)",
                 "timeout": f"gave no answer within {CONNECT_TIMEOUT_S + READ_TIMEOUT_S:g} s (deliveries give up "
                            "after that)",
                 "tls": "failed the TLS handshake (its certificate?)"}
        return FAIL, f"{shown} {words.get(kind, f'could not be reached ({kind})')}"
    if 300 <= status < 400:
        return FAIL, (f"{shown} answered {status}, a redirect: deliveries never follow redirects, so set "
                      "FULFILMENT_WEBHOOK_URL to the final address")
    if status == 400:
        return FAIL, (f"{shown} answered 400: the receiver refused the signature, so FULFILMENT_WEBHOOK_SECRET is "
                      "not the secret it verifies with (or it refuses a fact type it does not know: answer 2xx to "
                      "those)")
    if status in (401, 403):
        return FAIL, (f"{shown} answered {status}: refused (the signature, or an access rule in front of the "
                      "receiver): check FULFILMENT_WEBHOOK_SECRET")
    if status in (404, 405):
        return FAIL, f"{shown} answered {status}: no receiver takes POST at that path"
    return FAIL, f"{shown} answered {status}: the receiver failed"


def check_shipping(checkup: Checkup) -> tuple[str, str]:
    from shared.store.memory import InMemoryOrderStore
    from shared.wechat_api import WeChatApi

    config = checkup.config
    raw = (checkup.environ().get("SHIPPING_MODE") or "").strip().lower()
    if raw and raw != config.shipping_mode:
        return FAIL, "SHIPPING_MODE is not usable (see config)"
    if config.shipping_mode == "off":
        return SKIP, ("SHIPPING_MODE is off: no shipping information is uploaded (a mini-program under WeChat's "
                      "shipping management must upload it: set SHIPPING_MODE)")
    if not config.wechat_appid or not config.wechat_appsecret:
        return FAIL, (f"WECHAT_APPSECRET is required with SHIPPING_MODE {config.shipping_mode} (the upload needs an "
                      "access token)")
    # A store of its own: the token is fetched fresh (normal stable_token mode ends no other
    # holder's token), which also proves WECHAT_APPSECRET.
    api = WeChatApi(config, InMemoryOrderStore(), checkup.http)
    try:
        answer = api.call(IS_TRADE_MANAGED_PATH, {"appid": config.wechat_appid}, what="is_trade_managed")
    except WeChatApiRejected as error:
        words = {40013: f"WeChat does not know WECHAT_APPID {config.wechat_appid}",
                 40125: "WECHAT_APPSECRET is not this mini-program's app secret",
                 40164: ("the function's egress IP is not in the mini-program's IP whitelist "
                         "(开发管理 > 开发设置 > IP白名单)")}
        return FAIL, words.get(error.errcode, error.message)
    except WeChatApiUnavailable as error:
        return FAIL, f"WeChat's API at {config.wechat_api_base} did not answer usefully ({error.message})"
    managed = answer.get("is_trade_managed")
    if managed is True:
        return OK, (f"the mini-program is enrolled in WeChat's shipping management (SHIPPING_MODE "
                    f"{config.shipping_mode})")
    if managed is False:
        return FAIL, ("this mini-program is not enrolled in WeChat's shipping management; uploads will be refused "
                      "(set SHIPPING_MODE=off, or enrol it: 小程序后台 > 发货信息管理)")
    return FAIL, "is_trade_managed answered without is_trade_managed"


# The checks, in the order they are reported.  `config.<role>` come from ROLE_CHECKS.
CHECKS: tuple[Check, ...] = (
    Check("ssm", check_ssm),
    Check("public_key_id", check_public_key_id),
    Check("notify_url", check_notify_url),
    Check("mongodb", check_mongodb),
    Check("indexes", check_indexes),
    Check("merchant_key", check_merchant_key),
    Check("wechatpay_keys", check_wechatpay_keys),
    Check("apiv3_key", check_apiv3_key),
    Check("clock", check_clock),
    Check("timeout", check_timeout),
    Check("cos", check_cos),
    Check("fulfilment", check_fulfilment),
    Check("shipping", check_shipping),
)
ROLE_CHECKS = {role: Check(f"config.{role}", _config_check(role)) for role in ROLES}


def checks_for(roles: tuple[str, ...]) -> tuple[Check, ...]:
    return CHECKS[:1] + tuple(ROLE_CHECKS[role] for role in roles) + CHECKS[1:]


# --- running them ------------------------------------------------------------------------

def run(checkup: Checkup, checks: tuple[Check, ...] | None = None) -> dict:
    """Every check, each bounded and on its own; `{"ok", "checks"}`."""
    results = []
    for check in checks if checks is not None else checks_for(checkup.roles):
        started = time.monotonic()
        try:
            with deadline.until(time.monotonic() + CHECK_BUDGET_S):
                status, message = check.run(checkup)
        except Skip as skipped:
            status, message = SKIP, skipped.message
        except Exception as exc:  # a check's own failure is reported, never raised
            log("doctor.crash", level="error", item=check.item, error=type(exc).__name__, where=where(exc))
            status, message = FAIL, f"the check itself failed ({type(exc).__name__})"
        results.append({"item": check.item, "status": status, "message": checkup.scrub(str(message))})
        log("doctor.check", item=check.item, status=status, ms=int((time.monotonic() - started) * 1000))
    return {"ok": all(result["status"] != FAIL for result in results), "checks": results}


def for_function(instance, context=None) -> dict:
    """The `doctor` action, inside the function `instance` serves (reconcile)."""
    role = instance.role
    started = time.monotonic()
    budget = deadline.timeout_s(context, role) - ACTION_SAFETY_S
    checkup = Checkup(instance.raw_environ(), (role,), function=role, context=context)
    try:
        with deadline.until(started + max(budget, 1.0)):
            result = run(checkup)
    finally:
        checkup.close()
    log("doctor", ok=result["ok"], failed=[c["item"] for c in result["checks"] if c["status"] == FAIL],
        ms=int((time.monotonic() - started) * 1000))
    return result


def format_lines(result: dict) -> list[str]:
    width = max((len(check["item"]) for check in result["checks"]), default=0)
    return [f"{check['status'].upper():<5}{check['item']:<{width}}  {check['message']}" for check in result["checks"]]


def cli(environ: Mapping[str, str] | None = None, *, out=None, cwd: Path | None = None) -> int:
    """`python -m shared.admin doctor`: one line per check; 1 if any failed, else 0.  The
    functions' log lines go to stderr meanwhile, so stdout holds the report alone."""
    from shared import log as log_module

    if environ is None:
        from shared import runtime

        environ = runtime.instance("reconcile").raw_environ()
    out = out or sys.stdout
    log_module.flush()
    previous = log_module.set_sink(sys.stderr)
    checkup = Checkup(environ, ROLES, cwd=cwd)
    try:
        result = run(checkup)
    finally:
        checkup.close()
        log_module.flush()
        log_module.set_sink(previous)
    for line in format_lines(result):
        print(line, file=out)
    return 0 if result["ok"] else 1
