"""WeChat Pay's key set: the public key and platform certificates, each only for its serial."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.config import load_config
from shared.errors import ConfigError, SignatureInvalid, UnknownSerial
from shared.wechatpay.keys import CertificateSource, KeySet, load_certificates
from shared.wechatpay.notification import verify_notification, verify_signature
from tests.keys import (
    APIV3_KEY,
    PUBLIC_KEY_ID,
    make_environ,
    make_notification,
    platform_keys,
    sign_response,
    transaction,
)

NOW = 1_800_000_000


def certificate(days_before: int = 1, days_after: int = 1825, key=None):
    """(private key, PEM, serial) of a self-signed platform certificate valid around NOW."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com test platform")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(days=days_before))
            .not_valid_after(start + datetime.timedelta(days=days_after)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode(), f"{cert.serial_number:X}"


@pytest.fixture(scope="module")
def old_cert():
    return certificate()


@pytest.fixture(scope="module")
def new_cert():
    return certificate()


def _keyset(*pems, with_public_key=False, source=None, **kwargs):
    certs = [c for pem in pems for c in load_certificates(pem)]
    public = {"public_key": platform_keys().public_key, "public_key_id": PUBLIC_KEY_ID} if with_public_key else {}
    return KeySet(certificates=certs, source=source, clock=lambda: NOW, **public, **kwargs)


def test_each_serial_verifies_with_its_own_key_only(old_cert, new_cert):
    keys = _keyset(old_cert[1], new_cert[1], with_public_key=True)
    body = b'{"ok":1}'
    for private_key, serial in ((old_cert[0], old_cert[2]), (new_cert[0], new_cert[2]),
                                (platform_keys().private_key, PUBLIC_KEY_ID)):
        verify_signature(sign_response(body, platform_key=private_key, serial=serial, timestamp=NOW), body,
                         keys=keys, now=NOW)
    # Signed by the old certificate's key but naming the new serial: never tried with another key.
    with pytest.raises(SignatureInvalid):
        verify_signature(sign_response(body, platform_key=old_cert[0], serial=new_cert[2], timestamp=NOW), body,
                         keys=keys, now=NOW)
    with pytest.raises(SignatureInvalid):
        verify_signature(sign_response(body, platform_key=old_cert[0], serial=PUBLIC_KEY_ID, timestamp=NOW), body,
                         keys=keys, now=NOW)


def test_unknown_expired_and_not_yet_valid_serials_are_refused(old_cert):
    expired = certificate(days_before=400, days_after=-1)
    future = certificate(days_before=-10, days_after=400)
    keys = _keyset(old_cert[1], expired[1], future[1])
    body = b"{}"
    for private_key, serial in ((expired[0], expired[2]), (future[0], future[2]), (old_cert[0], "ABCDEF0123")):
        with pytest.raises(UnknownSerial):
            verify_signature(sign_response(body, platform_key=private_key, serial=serial, timestamp=NOW), body,
                             keys=keys, now=NOW)
    assert keys.request_serial() == old_cert[2]


def test_the_request_serial_prefers_the_public_key_then_the_newest_certificate(old_cert):
    newest = certificate(days_after=3000)
    assert _keyset(old_cert[1], newest[1]).request_serial() == newest[2]
    assert _keyset(old_cert[1], with_public_key=True).request_serial() == PUBLIC_KEY_ID


def test_a_flood_of_unknown_serials_looks_at_most_once_a_minute(old_cert):
    looks, now = [], [0.0]

    def source(reason):
        looks.append(reason)
        return load_certificates(old_cert[1])

    keys = KeySet(source=source, clock=lambda: NOW, monotonic=lambda: now[0])
    for i in range(500):
        assert keys.key_for(f"FORGED{i:06d}") is None
    assert len(looks) == 1
    now[0] = 61.0
    assert keys.key_for(old_cert[2]) is not None  # known now: no look needed
    assert keys.key_for("FORGEDAGAIN") is None
    assert len(looks) == 2 and keys.looks == 2


def test_a_failing_source_keeps_what_the_set_had(old_cert):
    def broken(reason):
        raise OSError("network down")

    keys = _keyset(old_cert[1], source=broken)
    assert keys.key_for("NEWSERIAL") is None
    assert keys.key_for(old_cert[2]) is not None


def test_the_source_reads_the_store_and_downloads_only_what_it_lacks(memory_store, old_cert, new_cert):
    cert = load_certificates(old_cert[1])[0]
    memory_store.save_platform_certificate(cert.serial, cert.pem, cert.not_before, cert.not_after)
    fetched = []

    def fetch():
        fetched.append(1)
        return load_certificates(new_cert[1])

    source = CertificateSource(lambda: memory_store, fetch)
    assert [c.serial for c in source(f"unknown serial {old_cert[2]}")] == [old_cert[2]] and fetched == []
    found = source(f"unknown serial {new_cert[2]}")
    assert {c.serial for c in found} == {old_cert[2], new_cert[2]} and fetched == [1]
    assert {r["serial"] for r in memory_store.platform_certificates()} == {old_cert[2], new_cert[2]}
    store_only = CertificateSource(lambda: memory_store, None)  # callback: no merchant key to download with
    assert {c.serial for c in store_only("unknown serial X")} == {old_cert[2], new_cert[2]}


def test_expiring_certificates_without_a_successor_are_reported(old_cert):
    soon = certificate(days_after=20)
    assert [c.serial for c in _keyset(soon[1]).expiring_without_successor()] == [soon[2]]
    assert _keyset(soon[1], old_cert[1]).expiring_without_successor() == []  # a successor outlives it
    assert _keyset(soon[1], with_public_key=True).expiring_without_successor() == []  # the public key takes over
    assert _keyset(old_cert[1]).expiring_without_successor() == []


def test_notifications_verify_in_every_mode(old_cert):
    headers, body = make_notification(transaction("T20261126KEYS000001"), platform_key=old_cert[0],
                                      serial=old_cert[2], timestamp=NOW)
    for keys in (_keyset(old_cert[1]), _keyset(old_cert[1], with_public_key=True)):
        notification = verify_notification(headers, body, keys=keys, apiv3_key=APIV3_KEY.encode(), now=NOW)
        assert notification["resource"]["out_trade_no"] == "T20261126KEYS000001"
    with pytest.raises(UnknownSerial):
        verify_notification(headers, body, public_key=platform_keys().public_key, public_key_id=PUBLIC_KEY_ID,
                            apiv3_key=APIV3_KEY.encode(), now=NOW)


# --- configuration of the modes ---------------------------------------------------------

def test_certificate_mode_needs_no_public_key(old_cert, new_cert):
    config = load_config("callback", make_environ(WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None,
                                                  WECHATPAY_PLATFORM_CERTS=old_cert[1] + new_cert[1]))
    assert {c.serial for c in config.wechatpay_platform_certs} == {old_cert[2], new_cert[2]}
    assert config.wechatpay_public_key is None
    download = load_config("prepare", make_environ(WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None,
                                                   WECHATPAY_PLATFORM_CERTS="download"))
    assert download.wechatpay_platform_certs == "download" and download.wechatpay_apiv3_key


@pytest.mark.parametrize("changes, variable", [
    ({"WECHATPAY_PUBLIC_KEY": None, "WECHATPAY_PUBLIC_KEY_ID": None}, "WECHATPAY_PUBLIC_KEY"),
    ({"WECHATPAY_PUBLIC_KEY_ID": None}, "WECHATPAY_PUBLIC_KEY_ID"),
    ({"WECHATPAY_PUBLIC_KEY": None}, "WECHATPAY_PUBLIC_KEY"),
    ({"WECHATPAY_PLATFORM_CERTS": "not a certificate"}, "WECHATPAY_PLATFORM_CERTS"),
    ({"WECHATPAY_PLATFORM_CERTS": "download", "WECHATPAY_APIV3_KEY": None}, "WECHATPAY_APIV3_KEY"),
])
def test_incomplete_key_configurations_name_the_variable(changes, variable):
    with pytest.raises(ConfigError) as caught:
        load_config("prepare", make_environ(**changes))
    assert caught.value.variable == variable


def test_requests_arriving_during_a_look_wait_for_it_instead_of_being_refused(old_cert):
    """Notifications signed with a new certificate come together: one look serves them all."""
    import threading
    import time as clock

    started = threading.Event()

    def slow_source(reason):
        started.set()
        clock.sleep(0.3)
        return load_certificates(old_cert[1])

    keys = KeySet(source=slow_source, clock=lambda: NOW)
    found = []

    def verify():
        found.append(keys.key_for(old_cert[2]) is not None)

    first = threading.Thread(target=verify)
    first.start()
    assert started.wait(2)
    others = [threading.Thread(target=verify) for _ in range(8)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(5)
    assert found == [True] * 9 and keys.looks == 1


def test_download_mode_looks_again_every_hour_and_before_the_newest_expires(old_cert):
    now = [0.0]
    keys = KeySet(source=lambda reason: load_certificates(old_cert[1]), clock=lambda: NOW,
                  monotonic=lambda: now[0])
    assert keys.refresh_due()                       # nothing known yet
    keys.refresh("scheduled")
    assert not keys.refresh_due()
    now[0] = 3_599.0
    assert not keys.refresh_due()
    now[0] = 3_600.0
    assert keys.refresh_due()                       # an hour: a rotation's new certificate is listed by now
    keys.refresh("scheduled")
    assert not keys.refresh_due()
    soon = certificate(days_after=9)
    expiring = KeySet(source=lambda reason: load_certificates(soon[1]), clock=lambda: NOW, monotonic=lambda: 0.0)
    expiring.refresh("scheduled")
    assert expiring.refresh_due()                   # the newest expires within 10 days
    assert not _keyset(old_cert[1]).refresh_due()   # PEM certificates: nothing to download
