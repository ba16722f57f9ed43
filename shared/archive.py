"""Archive raw files (the daily WeChat Pay trade bill) to Tencent COS, through its S3 API.

WeChat Pay keeps bills downloadable for 3 months only; the archive is the merchant's own
evidence.  `BillArchive.from_environ(os.environ)` reads:

  COS_BUCKET     bucket, "name-APPID" (e.g. bills-1250000000); unset = archiving disabled
  COS_REGION     e.g. ap-guangzhou (required with COS_BUCKET)
  COS_PREFIX     key prefix, default "wechatpay-bills/" ("" for none)
  COS_ENDPOINT   default https://cos.<region>.myqcloud.com; http only for a loopback host
  COS_SECRET_ID / COS_SECRET_KEY   a dedicated key pair, if set (both); otherwise the
                 function role's TENCENTCLOUD_SECRETID / _SECRETKEY / _SESSIONTOKEN

Objects: f"{prefix}{bill_date}/tradebill-ALL.csv.gz" (gzip; plain CSV is compressed
deterministically, so re-archiving the same bill writes the same bytes), with Content-MD5
(COS verifies the upload) and metadata `sha256` (of the object) and `csv-sha1` (of the CSV:
the digest WeChat Pay's signed `hash_value` names, so the archive can be audited against it).

Failures raise ArchiveUnavailable (503).  A call is bounded: at most 3 tries, each with a
3 s connect and 10 s read timeout, and the standard backoff (at most 1 s, then 2 s) between.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import secrets
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from shared.config import is_loopback_host
from shared.errors import ArchiveUnavailable, ConfigError
from shared.log import log

DEFAULT_PREFIX = "wechatpay-bills/"
GZIP_MAGIC = b"\x1f\x8b"
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 3  # including the first: bounded, a timer run has a deadline
# content type -> object key suffix
_SUFFIXES = {"application/gzip": ".csv.gz", "text/csv": ".csv"}

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z]{2,}(-[a-z0-9]+)+")
_PREFIX_RE = re.compile(r"([A-Za-z0-9._-]+/)*")
_BILL_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _endpoint(raw: str | None, region: str) -> str:
    if raw is None or not raw.strip():
        return f"https://cos.{region}.myqcloud.com"
    parts = urlsplit(raw.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("COS_ENDPOINT", "has an invalid port") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
            or parts.query or parts.fragment or parts.username):
        raise ConfigError("COS_ENDPOINT", "must be an https URL like https://cos.ap-guangzhou.myqcloud.com")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError("COS_ENDPOINT", "plain http is allowed only for a loopback host (tests); use https")
    return f"{parts.scheme}://{parts.netloc}"


def _gzip(data: bytes) -> bytes:
    # mtime=0 and no file name: the same CSV always gives the same bytes (idempotent puts).
    return gzip.compress(data, compresslevel=9, mtime=0)


class BillArchive:
    def __init__(self, bucket: str, region: str, *, secret_id: str, secret_key: str,
                 session_token: str | None = None, endpoint: str | None = None,
                 prefix: str = DEFAULT_PREFIX, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 read_timeout: float = READ_TIMEOUT_SECONDS, max_attempts: int = MAX_ATTEMPTS):
        self.bucket = bucket
        self.region = region
        self.endpoint = _endpoint(endpoint, region)
        self.prefix = prefix
        # Buckets created after 2024-01-01 reject path-style requests (PathStyleDomainForbidden),
        # and boto3 uses path style whenever endpoint_url is set unless told otherwise.
        # A loopback test server (moto) has no per-bucket host names: path style there.
        host = urlsplit(self.endpoint).hostname or ""
        self.addressing_style = "path" if is_loopback_host(host) else "virtual"
        self._credentials = (secret_id, secret_key, session_token)
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BillArchive(bucket={self.bucket!r}, region={self.region!r}, endpoint={self.endpoint!r}, " \
               f"prefix={self.prefix!r})"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> BillArchive | None:
        bucket = (environ.get("COS_BUCKET") or "").strip()
        if not bucket:
            return None
        if not _BUCKET_RE.fullmatch(bucket):
            raise ConfigError("COS_BUCKET", "must be a COS bucket name like bills-1250000000 "
                                            "(lower-case letters, digits, hyphens)")
        region = (environ.get("COS_REGION") or "").strip()
        if not region:
            raise ConfigError("COS_REGION", "is required with COS_BUCKET (e.g. ap-guangzhou)")
        if not _REGION_RE.fullmatch(region):
            raise ConfigError("COS_REGION", "is not a region like ap-guangzhou")
        prefix = environ.get("COS_PREFIX")
        prefix = DEFAULT_PREFIX if prefix is None else prefix.strip()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if not _PREFIX_RE.fullmatch(prefix) or any(part in (".", "..") for part in prefix.split("/")):
            raise ConfigError("COS_PREFIX", "must be folder names (letters, digits, . _ -) separated by '/'")
        if environ.get("COS_SECRET_ID") or environ.get("COS_SECRET_KEY"):
            names: tuple[str, str, str | None] = ("COS_SECRET_ID", "COS_SECRET_KEY", None)
        else:
            names = ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN")
        for name in names[:2]:
            if not (environ.get(name) or "").strip():
                raise ConfigError(name, "is required to archive bills to COS_BUCKET "
                                        "(the function role's credentials, or COS_SECRET_ID/COS_SECRET_KEY)")
        token = None
        if names[2] is not None:  # a role's temporary credentials come with a session token
            token = (environ.get(names[2]) or "").strip() or None
        return cls(bucket, region, secret_id=environ[names[0]].strip(), secret_key=environ[names[1]].strip(),
                   session_token=token, endpoint=environ.get("COS_ENDPOINT"), prefix=prefix)

    # --- the client -------------------------------------------------------------------

    @property
    def client(self):
        """The boto3 S3 client, built on first use (boto3 is slow to import: cold start)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self):
        import boto3
        from botocore.config import Config

        connect_timeout, read_timeout, max_attempts = self._timeouts
        config = Config(
            s3={"addressing_style": self.addressing_style},
            # boto3 >= 1.36 sends CRC checksums by default; COS has answered those with
            # MissingContentLength.  Content-MD5 (below) is what COS verifies.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # total_max_attempts counts the first try (botocore's "max_attempts" would not).
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        )
        secret_id, secret_key, token = self._credentials
        # A session of our own: boto3's default session is not thread-safe to create clients.
        session = boto3.session.Session()
        return session.client("s3", region_name=self.region, endpoint_url=self.endpoint,
                              aws_access_key_id=secret_id, aws_secret_access_key=secret_key,
                              aws_session_token=token, config=config)

    # --- operations -------------------------------------------------------------------

    def bill_key(self, bill_date: str, content_type: str = "application/gzip") -> str:
        if not isinstance(bill_date, str) or not _BILL_DATE_RE.fullmatch(bill_date):
            raise ValueError("bill_date must be YYYY-MM-DD")
        if content_type not in _SUFFIXES:
            raise ValueError(f"content_type must be one of {', '.join(_SUFFIXES)}")
        return f"{self.prefix}{bill_date}/tradebill-ALL{_SUFFIXES[content_type]}"

    def put_bill(self, bill_date: str, data: bytes, content_type: str = "application/gzip") -> str:
        """Archive a day's trade bill; returns the object key.  Idempotent: the same bill
        always lands on the same key with the same bytes.

        `data` is the CSV or its gzip.  With the default content type the object is gzip
        (CSV is compressed here); with "text/csv" the CSV is stored as it is.
        """
        key = self.bill_key(bill_date, content_type)
        compressed = data[:2] == GZIP_MAGIC
        if content_type == "application/gzip":
            body = data if compressed else _gzip(data)
            try:
                csv = gzip.decompress(data) if compressed else data
            except (OSError, EOFError, zlib.error):
                raise ValueError("data starts like gzip but is not a valid gzip file") from None
        else:
            if compressed:
                raise ValueError("data is gzip: archive it as application/gzip")
            body = csv = data
        # Integrity digests, not security ones.
        metadata = {"sha256": hashlib.sha256(body).hexdigest(),
                    "csv-sha1": hashlib.sha1(csv, usedforsecurity=False).hexdigest()}
        content_md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
        self._call("put", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, ContentMD5=content_md5,
            Metadata=metadata), size=len(body))
        return key

    def write_probe(self) -> str:
        """Put a small object under the prefix and delete it (the doctor: the bucket takes
        writes with these credentials); its key.  ArchiveUnavailable when either fails."""
        key = f"{self.prefix}doctor-probe-{secrets.token_hex(8)}.txt"
        body = b"cloudpay-scf doctor: a probe object, deleted at once\n"
        content_md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                                              ContentType="text/plain", ContentMD5=content_md5),
                   size=len(body))
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        return key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ArchiveUnavailable as error:
            if isinstance(error.__cause__, ClientError) and _status(error.__cause__) == 404:
                return False
            raise
        return True

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object (audits, tests)."""
        from botocore.exceptions import ClientError

        try:
            return self._call("get", key, lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ArchiveUnavailable as error:
            if isinstance(error.__cause__, ClientError) and _status(error.__cause__) == 404:
                return None
            raise

    def _call(self, operation: str, key: str, call, **fields):
        from botocore.exceptions import BotoCoreError, ClientError

        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        started = time.monotonic()
        try:
            result = call()
        except (BotoCoreError, ClientError) as exc:
            ms = int((time.monotonic() - started) * 1000)
            if isinstance(exc, ClientError):
                reason = str(exc.response.get("Error", {}).get("Code") or _status(exc))
            else:
                reason = type(exc).__name__
            if not (isinstance(exc, ClientError) and _status(exc) == 404 and operation != "put"):
                log("archive.failed", level="error", operation=operation, bucket=self.bucket, object=key,
                    reason=reason, ms=ms)
            raise ArchiveUnavailable(f"COS {operation} of {key!r} in bucket {self.bucket!r} failed: {reason}",
                                     details={"bucket": self.bucket, "object": key, "reason": reason,
                                              "operation": operation}) from exc
        if operation == "put":
            log("archive.put", bucket=self.bucket, object=key, ms=int((time.monotonic() - started) * 1000),
                **fields)
        return result


def _status(error) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
