"""Merchant secrets from Tencent Cloud SSM (Secrets Manager), overlaid on the environment.

SCF caps a function's environment at 4 KB and shows it in the console, so production
keeps the secrets in one SSM secret whose SecretString is a JSON object of contract
variable names to strings::

    {"WECHATPAY_PRIVATE_KEY": "-----BEGIN ...", "WECHATPAY_APIV3_KEY": "...",
     "WECHAT_APPSECRET": "...", "ORDER_TOKEN_SECRET": "...", "MONGODB_URI": "mongodb://..."}

`SecretCache().environ(os.environ)` returns a new dict: the environment with those
keys laid over it (`shared.runtime` keeps one cache per process).  Variables (all
optional unless CLOUDPAY_SSM_SECRET_NAME is set):

  CLOUDPAY_SSM_SECRET_NAME   the secret's name; unset or blank = SSM not used
  CLOUDPAY_SSM_VERSION_ID    the version to read (required, no default: `SSM_Current`
                             exists only for rotated cloud-product secrets such as
                             database credentials; a user secret has explicit versions,
                             and pinning one makes a rotation a deliberate deploy)
  CLOUDPAY_SSM_REGION        region; default TENCENTCLOUD_REGION (set by SCF)
  CLOUDPAY_SSM_ENDPOINT      default ssm.tencentcloudapi.com over https; "host:port" or a
                             URL; http only for a loopback host (tests)
  CLOUDPAY_SSM_TTL_SECONDS   how long a fetched secret is reused, default 300
  TENCENTCLOUD_SECRETID / TENCENTCLOUD_SECRETKEY / TENCENTCLOUD_SESSIONTOKEN
                             the function role's temporary credentials, injected by SCF

The tencentcloud SDK is imported only when a secret is actually fetched (cold start).
Every failure is a ConfigError naming the variable and the secret, never a value.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config import is_loopback_host
from shared.errors import ConfigError
from shared.log import log

SSM_NAME_VAR = "CLOUDPAY_SSM_SECRET_NAME"
SSM_VERSION_VAR = "CLOUDPAY_SSM_VERSION_ID"
SSM_REGION_VAR = "CLOUDPAY_SSM_REGION"
SSM_ENDPOINT_VAR = "CLOUDPAY_SSM_ENDPOINT"
SSM_TTL_VAR = "CLOUDPAY_SSM_TTL_SECONDS"
# SCF injects the role credentials under these names; the SDK's own default provider
# reads TENCENTCLOUD_SECRET_ID / _SECRET_KEY and no token, hence the credential by hand.
ROLE_ID_VAR = "TENCENTCLOUD_SECRETID"
ROLE_KEY_VAR = "TENCENTCLOUD_SECRETKEY"
ROLE_SESSION_VAR = "TENCENTCLOUD_SESSIONTOKEN"
SCF_REGION_VAR = "TENCENTCLOUD_REGION"

DEFAULT_ENDPOINT = "ssm.tencentcloudapi.com"
DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 86_400
REQUEST_TIMEOUT_SECONDS = 5
# After a failed refresh with a cached secret at hand, keep serving it and retry after this.
STALE_RETRY_SECONDS = 30

_ENV_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
# Never taken from the secret: the platform's own variables and the SSM settings themselves.
_RESERVED_PREFIXES = ("TENCENTCLOUD_", "SCF_", "QCLOUD_", "CLOUDPAY_SSM_")
_REGION_RE = re.compile(r"[a-z]{2,}(-[a-z0-9]+)+")


@dataclass(frozen=True)
class SsmSource:
    """Where the secret lives (no credentials, nothing secret): also the cache key."""

    name: str
    version_id: str
    region: str
    endpoint: str   # host[:port], as the SDK wants it
    scheme: str     # "https", or "http" for a loopback endpoint


class _Failure(Exception):
    """Internal: a fetch failure, turned into a fresh ConfigError for each caller."""

    def __init__(self, variable: str, problem: str):
        super().__init__(variable, problem)
        self.variable = variable
        self.problem = problem


def _fail(variable: str, problem: str):
    raise ConfigError(variable, problem)


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()



def _endpoint(raw: str | None) -> tuple[str, str]:
    """(scheme, host[:port]) from CLOUDPAY_SSM_ENDPOINT."""
    if _blank(raw):
        return "https", DEFAULT_ENDPOINT
    text = raw.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        _fail(SSM_ENDPOINT_VAR, "has an invalid port")
    if (not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username or parts.password):
        _fail(SSM_ENDPOINT_VAR, "must be host[:port] or scheme://host[:port] (no path, query or user)")
    loopback = is_loopback_host(parts.hostname)
    scheme = (parts.scheme or ("http" if loopback else "https")).lower()
    if scheme not in ("http", "https"):
        _fail(SSM_ENDPOINT_VAR, "scheme must be https (or http for a loopback test server)")
    if scheme == "http" and not loopback:
        _fail(SSM_ENDPOINT_VAR, "plain http is allowed only for a loopback host (tests); use https")
    return scheme, parts.netloc


def ssm_source(environ: Mapping[str, str]) -> SsmSource | None:
    """The validated SSM settings, or None when CLOUDPAY_SSM_SECRET_NAME is unset."""
    name = environ.get(SSM_NAME_VAR)
    if _blank(name):
        return None
    name = name.strip()
    if len(name) > 128 or not name.isprintable():
        _fail(SSM_NAME_VAR, "must be a printable secret name of at most 128 characters")
    version_id = environ.get(SSM_VERSION_VAR)
    if _blank(version_id):
        _fail(SSM_VERSION_VAR, f"is required with {SSM_NAME_VAR} (the secret version to read, e.g. v1; "
                              "SSM_Current only exists for rotated cloud-product secrets)")
    region = environ.get(SSM_REGION_VAR) or environ.get(SCF_REGION_VAR)
    if _blank(region):
        _fail(SSM_REGION_VAR, f"is required with {SSM_NAME_VAR} (or {SCF_REGION_VAR}, which SCF sets)")
    region = region.strip()
    if not _REGION_RE.fullmatch(region):
        _fail(SSM_REGION_VAR if environ.get(SSM_REGION_VAR) else SCF_REGION_VAR, "is not a region like ap-guangzhou")
    scheme, endpoint = _endpoint(environ.get(SSM_ENDPOINT_VAR))
    return SsmSource(name, version_id.strip(), region, endpoint, scheme)


def ttl_seconds(environ: Mapping[str, str]) -> int:
    raw = environ.get(SSM_TTL_VAR)
    if _blank(raw):
        return DEFAULT_TTL_SECONDS
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TTL_SECONDS:
        _fail(SSM_TTL_VAR, f"must be an integer from 0 to {MAX_TTL_SECONDS}")
    return int(raw)


def _credential_parts(environ: Mapping[str, str], source: SsmSource) -> tuple[str, str, str | None]:
    for variable in (ROLE_ID_VAR, ROLE_KEY_VAR):
        if _blank(environ.get(variable)):
            raise _Failure(variable, f"is not set: reading SSM secret {source.name!r} needs the function role's "
                                     "credentials (give the function a role allowed ssm:GetSecretValue)")
    token = environ.get(ROLE_SESSION_VAR)
    return environ[ROLE_ID_VAR].strip(), environ[ROLE_KEY_VAR].strip(), (token.strip() or None) if token else None


def fetch_secret(source: SsmSource, environ: Mapping[str, str]) -> dict[str, str]:
    """One GetSecretValue call; the secret's valid variables.  Raises _Failure."""
    secret_id, secret_key, token = _credential_parts(environ, source)
    where = f"SSM secret {source.name!r} version {source.version_id!r}"
    try:
        # Lazy: the SDK costs import time, and most cold starts may not need it.
        from tencentcloud.common import credential
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.ssm.v20190923 import models, ssm_client
    except ImportError as exc:
        raise _Failure(SSM_NAME_VAR, "is set but tencentcloud-sdk-python-ssm is not installed") from exc

    started = time.monotonic()
    try:
        cred = credential.Credential(secret_id, secret_key, token)
        profile = HttpProfile(protocol=source.scheme, endpoint=source.endpoint,
                              reqTimeout=REQUEST_TIMEOUT_SECONDS)
        client = ssm_client.SsmClient(cred, source.region, ClientProfile(httpProfile=profile))
        request = models.GetSecretValueRequest()
        request.SecretName = source.name
        request.VersionId = source.version_id
        response = client.GetSecretValue(request)
    except TencentCloudSDKException as exc:
        code = str(exc.get_code() or "Unknown")
        message = str(exc.get_message() or "")[:200]
        if code == "InvalidCredential":
            raise _Failure(ROLE_ID_VAR, f"role credentials are malformed ({message})") from exc
        if code in ("ClientNetworkError", "ServerNetworkError"):
            problem = f"{where}: SSM unreachable at {source.scheme}://{source.endpoint} ({code}: {message})"
        else:
            problem = f"{where}: GetSecretValue failed with {code}: {message} (RequestId {exc.get_request_id()})"
        log("ssm.failed", level="error", name=source.name, version=source.version_id, code=code,
            ms=int((time.monotonic() - started) * 1000))
        raise _Failure(SSM_NAME_VAR, problem) from exc

    text = response.SecretString
    if not isinstance(text, str) or not text:
        kind = "a binary secret" if response.SecretBinary else "empty"
        raise _Failure(SSM_NAME_VAR, f"{where} is {kind}; store a JSON object as its SecretString")
    try:
        document = json.loads(text)
    except ValueError:
        # `from None`: a JSONDecodeError keeps the whole document (the secret) in .doc.
        raise _Failure(SSM_NAME_VAR, f"{where} is not JSON (expected an object of variable names "
                                        "to strings)") from None
    if not isinstance(document, dict):
        raise _Failure(SSM_NAME_VAR, f"{where} is a JSON {type(document).__name__}, not an object")

    values: dict[str, str] = {}
    skipped = 0
    for key, value in document.items():
        if not _ENV_NAME_RE.fullmatch(key) or key.startswith(_RESERVED_PREFIXES):
            skipped += 1  # not a variable we may set; its name is not logged (could be anything)
            continue
        if not isinstance(value, str):
            raise _Failure(SSM_NAME_VAR, f"{where}: key {key!r} is a JSON {type(value).__name__}, "
                                            "not a string")
        values[key] = value
    log("ssm.loaded", name=source.name, version=source.version_id, variables=sorted(values),
        skipped=skipped, ms=int((time.monotonic() - started) * 1000))
    return values


@dataclass
class _Entry:
    source: SsmSource
    values: dict[str, str]
    expires: float


class SecretCache:
    """The per-process cache: one fetch per TTL, one fetch when many threads start cold.

    The lock is held during the fetch, so concurrent callers wait for that one request
    and share its outcome (its values, or its error: they do not each retry a dead SSM).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[SsmSource, Mapping[str, str]], dict[str, str]] = fetch_secret):
        self._clock = clock
        self._fetch = fetch
        self._lock = threading.Lock()
        self._entry: _Entry | None = None
        self._completed = 0  # fetches finished (either way): waiters compare it
        self._failure: tuple[SsmSource, _Failure] | None = None

    def __repr__(self) -> str:
        entry = self._entry
        if entry is None:
            return "<SecretCache empty>"
        return (f"<SecretCache {entry.source.name!r} version {entry.source.version_id!r}: "
                f"{len(entry.values)} variables>")

    def clear(self) -> None:
        with self._lock:
            self._entry = None
            self._failure = None

    def environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        source = ssm_source(environ)
        if source is None:
            return dict(environ)
        merged = dict(environ)
        merged.update(self._values(source, ttl_seconds(environ), environ))
        return merged

    def _values(self, source: SsmSource, ttl: int, environ: Mapping[str, str]) -> dict[str, str]:
        entry = self._entry
        if entry is not None and entry.source == source and self._clock() < entry.expires:
            return entry.values
        completed_seen = self._completed
        with self._lock:
            entry = self._entry
            now = self._clock()
            if entry is not None and entry.source == source and now < entry.expires:
                return entry.values  # another thread fetched it while we waited
            if completed_seen != self._completed:
                # A fetch finished while we waited: share its outcome (even with TTL 0).
                failure = self._failure
                if failure is not None and failure[0] == source:
                    raise ConfigError(failure[1].variable, failure[1].problem)
                if failure is None and entry is not None and entry.source == source:
                    return entry.values
            try:
                values = self._fetch(source, environ)
            except _Failure as failed:
                self._completed += 1
                self._failure = (source, failed)
                if entry is not None and entry.source == source:
                    # Warm instance, SSM blip: the secret we have is better than failing
                    # every request; try again a little later.
                    entry.expires = now + min(ttl, STALE_RETRY_SECONDS)
                    log("ssm.stale", level="warning", name=source.name, variable=failed.variable,
                        error=failed.problem)
                    return entry.values
                raise ConfigError(failed.variable, failed.problem) from failed.__cause__
            self._completed += 1
            self._failure = None
            self._entry = _Entry(source, values, now + ttl)
            return values
