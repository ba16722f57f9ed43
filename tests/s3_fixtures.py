"""S3 (COS stand-in) fixtures: moto's S3 server on a free loopback port, in a thread.

Use them from a test module by binding them at module level (pytest finds them there)::

    from tests import s3_fixtures
    s3_server = s3_fixtures.s3_server
    cos_environ = s3_fixtures.cos_environ

or list "tests.s3_fixtures" in tests/conftest.py's `pytest_plugins`.
"""

from __future__ import annotations

import uuid

import pytest

REGION = "ap-guangzhou"
ACCESS_KEY = "AKIDtestcos"
SECRET_KEY = "testcossecret"


def s3_client(endpoint: str):
    """A plain boto3 client on the test server (to create buckets and look behind the archive)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


class S3Server:
    """moto's threaded server on 127.0.0.1 and a port the OS picks; stop() closes the port."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""

    def start(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()
        # ThreadedMotoServer.stop() leaves the socket listening (connections would hang):
        # close it, so a stopped server refuses connections like a dead host.
        self._server._server.server_close()


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL (http://127.0.0.1:PORT) of a moto S3 server for the session."""
    server = S3Server().start()
    yield server.endpoint
    server.stop()


def make_bucket(endpoint: str) -> str:
    bucket = f"bills-{uuid.uuid4().hex[:10]}-1250000000"
    s3_client(endpoint).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return bucket


def drop_bucket(endpoint: str, bucket: str) -> None:
    client = s3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def cos_variables(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "COS_BUCKET": bucket,
        "COS_REGION": REGION,
        "COS_ENDPOINT": endpoint,
        "TENCENTCLOUD_SECRETID": ACCESS_KEY,
        "TENCENTCLOUD_SECRETKEY": SECRET_KEY,
        "TENCENTCLOUD_SESSIONTOKEN": "test-session-token",
    }


@pytest.fixture
def cos_environ(s3_server):
    """COS_* variables for a fresh bucket of this test's own (emptied and deleted after)."""
    bucket = make_bucket(s3_server)
    yield cos_variables(s3_server, bucket)
    drop_bucket(s3_server, bucket)
