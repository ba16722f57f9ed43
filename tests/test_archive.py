"""shared.archive against moto's S3 server (the COS stand-in) on loopback."""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.archive import ArchiveUnavailable, BillArchive
from shared.errors import ConfigError
from tests import s3_fixtures
from tests.s3_fixtures import S3Server, cos_variables, make_bucket, s3_client

# The shared fixtures, bound here so pytest finds them (conftest could list the module
# in pytest_plugins instead).
s3_server = s3_fixtures.s3_server
cos_environ = s3_fixtures.cos_environ

CSV = ("交易时间,公众账号ID,商户号\n`2024-05-01 12:00:00,`wx0123456789abcdef,`1900000001\n"
       "总交易单数,应结订单总金额\n`1,`12.30\n").encode()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- configuration ------------------------------------------------------------------

def test_disabled_when_bucket_unset():
    assert BillArchive.from_environ({}) is None
    assert BillArchive.from_environ({"COS_BUCKET": "  ", "COS_REGION": "ap-guangzhou"}) is None


def test_real_cos_uses_virtual_addressing_without_network():
    archive = BillArchive.from_environ({"COS_BUCKET": "bills-1250000000", "COS_REGION": "ap-guangzhou",
                                        "TENCENTCLOUD_SECRETID": "AKIDx", "TENCENTCLOUD_SECRETKEY": "k",
                                        "TENCENTCLOUD_SESSIONTOKEN": "t"})
    assert archive.endpoint == "https://cos.ap-guangzhou.myqcloud.com"
    config = archive.client.meta.config
    assert config.s3 == {"addressing_style": "virtual"}
    assert (config.connect_timeout, config.read_timeout) == (3.0, 10.0)
    assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    # Signing a URL needs no network: the bucket is in the host name, not the path.
    url = urlsplit(archive.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bills-1250000000", "Key": "wechatpay-bills/x"}, ExpiresIn=60))
    assert (url.scheme, url.hostname) == ("https", "bills-1250000000.cos.ap-guangzhou.myqcloud.com")
    assert url.path == "/wechatpay-bills/x"
    assert "x-amz-security-token=t" in url.query.lower()


def test_loopback_endpoint_uses_path_addressing(cos_environ):
    archive = BillArchive.from_environ(cos_environ)
    assert archive.addressing_style == "path"
    assert archive.client.meta.config.s3 == {"addressing_style": "path"}


def test_dedicated_cos_keys_win_over_role_credentials():
    archive = BillArchive.from_environ({"COS_BUCKET": "bills-1250000000", "COS_REGION": "ap-shanghai",
                                        "COS_SECRET_ID": "AKIDcos", "COS_SECRET_KEY": "coskey",
                                        "TENCENTCLOUD_SECRETID": "AKIDrole", "TENCENTCLOUD_SECRETKEY": "rolekey",
                                        "TENCENTCLOUD_SESSIONTOKEN": "roletoken"})
    credentials = archive.client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key, credentials.token) == ("AKIDcos", "coskey", None)


@pytest.mark.parametrize("overrides, variable", [
    ({"COS_REGION": None}, "COS_REGION"),
    ({"COS_REGION": "Guangzhou"}, "COS_REGION"),
    ({"COS_BUCKET": "Bills_1250000000"}, "COS_BUCKET"),
    ({"COS_ENDPOINT": "http://cos.ap-guangzhou.myqcloud.com"}, "COS_ENDPOINT"),
    ({"COS_ENDPOINT": "cos.ap-guangzhou.myqcloud.com"}, "COS_ENDPOINT"),
    ({"COS_ENDPOINT": "https://cos.ap-guangzhou.myqcloud.com/bucket"}, "COS_ENDPOINT"),
    ({"COS_PREFIX": "../escape/"}, "COS_PREFIX"),
    ({"COS_PREFIX": "/abs"}, "COS_PREFIX"),
    ({"TENCENTCLOUD_SECRETID": None}, "TENCENTCLOUD_SECRETID"),
    ({"TENCENTCLOUD_SECRETKEY": ""}, "TENCENTCLOUD_SECRETKEY"),
    ({"COS_SECRET_ID": "AKIDcos"}, "COS_SECRET_KEY"),
])
def test_bad_configuration_is_named(overrides, variable):
    environ = cos_variables("http://127.0.0.1:9", "bills-1250000000")
    for name, value in overrides.items():
        if value is None:
            environ.pop(name)
        else:
            environ[name] = value
    with pytest.raises(ConfigError) as caught:
        BillArchive.from_environ(environ)
    assert caught.value.variable == variable


def test_prefix_forms():
    base = cos_variables("http://127.0.0.1:9", "bills-1250000000")
    assert BillArchive.from_environ(base).bill_key("2024-05-01") == "wechatpay-bills/2024-05-01/tradebill-ALL.csv.gz"
    assert BillArchive.from_environ({**base, "COS_PREFIX": "prod/bills"}).prefix == "prod/bills/"
    assert BillArchive.from_environ({**base, "COS_PREFIX": ""}).bill_key("2024-05-01", "text/csv") == \
        "2024-05-01/tradebill-ALL.csv"
    archive = BillArchive.from_environ(base)
    for bad in ("2024-5-1", "2024-05-01/../x", "", None):
        with pytest.raises(ValueError):
            archive.bill_key(bad)


def test_nothing_secret_in_repr():
    archive = BillArchive.from_environ(cos_variables("http://127.0.0.1:9", "bills-1250000000"))
    assert "testcossecret" not in repr(archive) and "test-session-token" not in repr(archive)


def test_boto3_is_imported_only_when_used():
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from shared.archive import BillArchive; "
            "a = BillArchive.from_environ({'COS_BUCKET': 'bills-1250000000', 'COS_REGION': 'ap-guangzhou', "
            "'TENCENTCLOUD_SECRETID': 'x', 'TENCENTCLOUD_SECRETKEY': 'y'}); "
            "assert a is not None and not any(m.split('.')[0] in ('boto3', 'botocore') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_client_built_once_across_threads(cos_environ):
    archive = BillArchive.from_environ(cos_environ)
    clients, barrier = [], threading.Barrier(8)

    def grab():
        barrier.wait()
        clients.append(archive.client)

    workers = [threading.Thread(target=grab) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(clients) == 8 and len({id(c) for c in clients}) == 1


# --- against the server -------------------------------------------------------------

def test_put_gzip_then_get_back_identical_bytes(cos_environ, s3_server):
    archive = BillArchive.from_environ(cos_environ)
    data = gzip.compress(CSV, mtime=1714540800)
    key = archive.put_bill("2024-05-01", data)
    assert key == "wechatpay-bills/2024-05-01/tradebill-ALL.csv.gz"
    assert archive.exists(key)
    assert archive.get(key) == data
    head = s3_client(s3_server).head_object(Bucket=cos_environ["COS_BUCKET"], Key=key)
    assert head["ContentType"] == "application/gzip"
    assert head["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                "csv-sha1": hashlib.sha1(CSV, usedforsecurity=False).hexdigest()}


def test_plain_csv_is_archived_as_deterministic_gzip(cos_environ):
    archive = BillArchive.from_environ(cos_environ)
    key = archive.put_bill("2024-05-02", CSV)
    first = archive.get(key)
    assert first[:2] == b"\x1f\x8b" and gzip.decompress(first) == CSV
    archive.put_bill("2024-05-02", CSV)
    assert archive.get(key) == first  # same CSV, same object bytes


def test_text_csv_is_stored_as_is(cos_environ):
    archive = BillArchive.from_environ(cos_environ)
    key = archive.put_bill("2024-05-03", CSV, content_type="text/csv")
    assert key.endswith("/tradebill-ALL.csv") and archive.get(key) == CSV
    with pytest.raises(ValueError):
        archive.put_bill("2024-05-03", gzip.compress(CSV), content_type="text/csv")
    with pytest.raises(ValueError):
        archive.put_bill("2024-05-03", CSV, content_type="application/zip")
    with pytest.raises(ValueError):
        archive.put_bill("2024-05-03", gzip.compress(CSV)[:20])  # a broken gzip is not archived


def test_put_is_idempotent(cos_environ, s3_server):
    archive = BillArchive.from_environ(cos_environ)
    data = gzip.compress(CSV)
    keys = {archive.put_bill("2024-05-04", data) for _ in range(3)}
    assert len(keys) == 1
    listed = s3_client(s3_server).list_objects_v2(Bucket=cos_environ["COS_BUCKET"])["Contents"]
    assert [item["Key"] for item in listed] == list(keys)
    assert archive.get(keys.pop()) == data


def test_missing_object(cos_environ):
    archive = BillArchive.from_environ(cos_environ)
    assert archive.exists("wechatpay-bills/1999-01-01/tradebill-ALL.csv.gz") is False
    assert archive.get("wechatpay-bills/1999-01-01/tradebill-ALL.csv.gz") is None


def test_missing_bucket_is_archive_unavailable(s3_server):
    archive = BillArchive.from_environ(cos_variables(s3_server, "no-such-bucket-1250000000"))
    with pytest.raises(ArchiveUnavailable) as caught:
        archive.put_bill("2024-05-01", CSV)
    error = caught.value
    assert (error.status, error.code) == (503, "ARCHIVE_UNAVAILABLE")
    assert error.details["reason"] == "NoSuchBucket" and "NoSuchBucket" in error.message


# --- COS down -------------------------------------------------------------------------

def _assert_unavailable_quickly(call, bound: float = 10.0) -> ArchiveUnavailable:
    started = time.monotonic()
    with pytest.raises(ArchiveUnavailable) as caught:
        call()
    assert time.monotonic() - started < bound
    assert caught.value.__cause__ is not None  # the botocore error, chained
    return caught.value


def test_closed_port_is_archive_unavailable_quickly():
    archive = BillArchive.from_environ(cos_variables(f"http://127.0.0.1:{_closed_port()}", "bills-1250000000"))
    error = _assert_unavailable_quickly(lambda: archive.put_bill("2024-05-01", CSV))
    assert error.details["reason"] == "EndpointConnectionError"
    _assert_unavailable_quickly(lambda: archive.exists("wechatpay-bills/2024-05-01/tradebill-ALL.csv.gz"))


def test_stopped_server_is_archive_unavailable():
    server = S3Server().start()
    try:
        archive = BillArchive.from_environ(cos_variables(server.endpoint, make_bucket(server.endpoint)))
        key = archive.put_bill("2024-05-01", CSV)
    finally:
        server.stop()
    _assert_unavailable_quickly(lambda: archive.put_bill("2024-05-01", CSV))
    _assert_unavailable_quickly(lambda: archive.get(key))


def test_silent_server_times_out_with_bounded_retries():
    """A host that accepts and never answers: read timeout, then a bounded number of tries.

    Per try: up to 1 s waiting for "100 Continue" (botocore sends Expect on PUT), then the
    read timeout; between tries the standard backoff (at most 1 s, then 2 s)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        archive = BillArchive("bills-1250000000", "ap-guangzhou", secret_id="x", secret_key="y",
                              endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}",
                              connect_timeout=0.5, read_timeout=0.5)
        error = _assert_unavailable_quickly(lambda: archive.put_bill("2024-05-01", CSV), bound=12.0)
        assert error.details["reason"] == "ReadTimeoutError"
        assert len(accepted) == 3  # max_attempts, first try included
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in accepted:
            conn.close()
