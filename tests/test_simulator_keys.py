"""The simulator's platform keys (public key, certificates, the switch, rotation), rate limits
and coupons, tested over HTTP against the running simulator.

Signatures are verified here with `cryptography` directly (SHA256withRSA, PKCS#1 v1.5, over
`timestamp\\nnonce\\nbody\\n`), certificates decrypted with AES-256-GCM and the APIv3 key:
nothing of shared/ checks what the simulator signs.  wechatpayv3 is used once more, as an
independent merchant client in certificate and switch modes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from wechatpayv3 import WeChatPay, WeChatPayType

from devtools.sim_keys import PLATFORM_CERT_FILE, SimCertificate, ephemeral, load_or_create
from devtools.simulator.bill import DETAIL_HEADER, SUMMARY_HEADER
from devtools.simulator.timeutil import CST, parse_rfc3339
from devtools.wechatpay_simulator import Simulator, main, parse_trade_bill, yuan_to_fen
from tests.sim_fixtures import SimMerchant

pytest_plugins = ["tests.sim_fixtures"]

CERT_SERIAL_RE = re.compile(r"^[0-9A-F]{40}$")
RATE_LIMITED = {"code": "FREQUENCY_LIMITED", "message": "频率超限"}
NO_CERTIFICATE = {"code": "RESOURCE_NOT_EXISTS",
                  "message": "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥"}
JSAPI = "/v3/pay/transactions/jsapi"


# --- helpers: verification with cryptography only ---------------------------------------

def signature_valid(public_key, headers, body: bytes) -> bool:
    message = f"{headers['Wechatpay-Timestamp']}\n{headers['Wechatpay-Nonce']}\n".encode() + body + b"\n"
    try:
        public_key.verify(base64.b64decode(headers["Wechatpay-Signature"]), message, padding.PKCS1v15(),
                          hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"


def aes_gcm_decrypt(keys, nonce: str, associated_data: str, ciphertext: str) -> bytes:
    return AESGCM(keys.apiv3_key.encode("ascii")).decrypt(nonce.encode(), base64.b64decode(ciphertext),
                                                          associated_data.encode())


def download_certificates(merchant: SimMerchant) -> tuple[dict[str, x509.Certificate], object, dict]:
    """GET /v3/certificates: ({serial_no: certificate}, the response, the raw answer)."""
    response = merchant.call("GET", "/v3/certificates")
    assert response.status_code == 200, response.text
    answer = response.json()
    certificates = {}
    for item in answer["data"]:
        encrypted = item["encrypt_certificate"]
        assert encrypted["algorithm"] == "AEAD_AES_256_GCM" and encrypted["associated_data"] == "certificate"
        assert len(encrypted["nonce"]) == 12
        pem = aes_gcm_decrypt(merchant.keys, encrypted["nonce"], "certificate", encrypted["ciphertext"])
        certificate = x509.load_pem_x509_certificate(pem)
        assert f"{certificate.serial_number:X}" == item["serial_no"]
        assert parse_rfc3339(item["effective_time"]) == certificate.not_valid_before_utc.timestamp()
        assert parse_rfc3339(item["expire_time"]) == certificate.not_valid_after_utc.timestamp()
        assert item["effective_time"].endswith("+08:00")
        certificates[item["serial_no"]] = certificate
    return certificates, response, answer


def decrypt_notification(keys, body: bytes) -> dict:
    resource = json.loads(body)["resource"]
    return json.loads(aes_gcm_decrypt(keys, resource["nonce"], resource["associated_data"], resource["ciphertext"]))


def set_mode(merchant: SimMerchant, mode: str, rollout=None) -> dict:
    body = {"mode": mode} if rollout is None else {"mode": mode, "rollout": rollout}
    response = merchant.control("POST", "/_sim/keys", body)
    assert response.status_code == 200, response.text
    return response.json()


def yesterday_cst() -> str:
    return (datetime.now(CST) - timedelta(days=1)).strftime("%Y-%m-%d")


def pay(merchant: SimMerchant, out_trade_no: str, **body) -> dict:
    response = merchant.control("POST", f"/_sim/orders/{out_trade_no}/pay", body)
    assert response.status_code == 200, response.text
    return response.json()


# --- function_environ and persistence ---------------------------------------------------

def test_function_environ_per_key_mode(sim_keys):
    args = ("http://127.0.0.1:8090/", "http://127.0.0.1:8080/callback", "mongodb://127.0.0.1:27017")
    default = sim_keys.function_environ(*args)
    assert default == sim_keys.function_environ(*args, key_mode="public_key")
    assert default["WECHATPAY_PUBLIC_KEY_ID"] == sim_keys.platform_public_key_id
    assert "WECHATPAY_PLATFORM_CERTS" not in default
    certificate = sim_keys.function_environ(*args, key_mode="certificate")
    assert certificate["WECHATPAY_PLATFORM_CERTS"] == "download"
    assert "WECHATPAY_PUBLIC_KEY" not in certificate and "WECHATPAY_PUBLIC_KEY_ID" not in certificate
    switch = sim_keys.function_environ(*args, key_mode="switch")
    assert switch["WECHATPAY_PLATFORM_CERTS"] == "download"
    assert switch["WECHATPAY_PUBLIC_KEY"] == sim_keys.platform_public_pem
    assert switch["WECHATPAY_PUBLIC_KEY_ID"] == sim_keys.platform_public_key_id
    for environ in (default, certificate, switch):
        assert environ["WECHATPAY_API_BASE_BACKUP"] == environ["WECHATPAY_API_BASE"] == "http://127.0.0.1:8090"
    with pytest.raises(ValueError, match="key_mode"):
        sim_keys.function_environ(*args, key_mode="both")


def test_default_certificate_is_an_x509_platform_certificate(sim_keys):
    cert = sim_keys.platform_certificate
    assert CERT_SERIAL_RE.match(cert.serial) and cert.serial == f"{cert.certificate.serial_number:X}"
    assert cert.not_after - cert.not_before == 1825 * 86400 and cert.not_before <= time.time()
    assert "Tenpay.com" in cert.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cert.public_key.public_numbers() != sim_keys.platform_public_key.public_numbers()   # its own key
    assert "PRIVATE" not in repr(sim_keys) and cert.serial in repr(sim_keys)
    later = sim_keys.new_certificate(valid_days=30, not_before=1_800_000_000)
    assert (later.not_before, later.not_after) == (1_800_000_000, 1_800_000_000 + 30 * 86400)
    assert later.serial != cert.serial
    with pytest.raises(ValueError):
        sim_keys.new_certificate(valid_days=0)


def test_load_or_create_persists_the_certificate_and_gives_old_folders_one(tmp_path):
    folder = tmp_path / "keys"
    first = load_or_create(folder)
    path = folder / PLATFORM_CERT_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert SimCertificate.from_file_text(path.read_text()) == first.platform_certificate
    again = load_or_create(folder)
    assert again == first and again.platform_certificate.serial == first.platform_certificate.serial
    assert "platform_certificate" not in json.loads((folder / "sim_keys.json").read_text())

    path.unlink()                                            # a folder from before certificates
    upgraded = load_or_create(folder)
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600
    assert upgraded.platform_certificate.serial != first.platform_certificate.serial
    assert upgraded.merchant_private_pem == first.merchant_private_pem
    assert upgraded.platform_public_key_id == first.platform_public_key_id
    assert load_or_create(folder) == upgraded                # kept from then on

    # A simulator on those keys serves that certificate.
    with Simulator(upgraded) as sim:
        sim.set_key_mode("certificate")
        merchant = SimMerchant(upgraded, sim)
        certificates, response, _ = download_certificates(merchant)
        assert list(certificates) == [upgraded.platform_certificate.serial]
        assert signature_valid(certificates[upgraded.platform_certificate.serial].public_key(), response.headers,
                               response.content)


# --- GET /v3/certificates ---------------------------------------------------------------

def test_public_key_mode_has_no_certificates(sim_keys, sim_merchant):
    response = sim_merchant.call("GET", "/v3/certificates")
    assert response.status_code == 404 and response.json() == NO_CERTIFICATE
    assert response.headers["Wechatpay-Serial"] == sim_keys.platform_public_key_id
    assert signature_valid(sim_keys.platform_public_key, response.headers, response.content)
    state = sim_merchant.control("GET", "/_sim/keys").json()
    assert state == {"mode": "public_key", "rollout": 0.5, "public_key_id": sim_keys.platform_public_key_id,
                     "certificates": [{"serial": sim_keys.platform_certificate.serial,
                                       "not_before": sim_keys.platform_certificate.not_before,
                                       "not_after": sim_keys.platform_certificate.not_after, "signing": True}]}


def test_certificates_download_decrypts_and_verifies_its_own_signature(sim_keys, sim_merchant):
    assert set_mode(sim_merchant, "certificate")["mode"] == "certificate"
    certificates, response, answer = download_certificates(sim_merchant)
    [serial] = certificates
    assert serial == sim_keys.platform_certificate.serial and CERT_SERIAL_RE.match(serial)
    assert response.headers["Wechatpay-Serial"] == serial
    assert signature_valid(certificates[serial].public_key(), response.headers, response.content)
    assert not signature_valid(sim_keys.platform_public_key, response.headers, response.content)
    assert set(answer["data"][0]) == {"serial_no", "effective_time", "expire_time", "encrypt_certificate"}

    unsigned = sim_merchant.call("GET", "/v3/certificates", signed=False)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "SIGN_ERROR"
    assert signature_valid(certificates[serial].public_key(), unsigned.headers, unsigned.content)


def test_certificate_mode_signs_answers_and_notifications_with_the_certificate(sim_keys, sim_merchant,
                                                                             notify_receiver):
    set_mode(sim_merchant, "certificate")
    cert = sim_keys.platform_certificate
    prepay = sim_merchant.prepay("T20240601001", notify_url=notify_receiver.url)
    missing = sim_merchant.query("NOSUCH0001")
    assert missing.status_code == 404
    for response in (prepay, missing):
        assert response.headers["Wechatpay-Serial"] == cert.serial
        assert signature_valid(cert.public_key, response.headers, response.content)
        assert not signature_valid(sim_keys.platform_public_key, response.headers, response.content)

    pay(sim_merchant, "T20240601001", duplicates=1)
    assert sim_merchant.control("GET", "/_sim/idle?timeout=5").json() == {"idle": True}
    assert len(notify_receiver.requests) == 2
    for received in notify_receiver.requests:
        assert received.headers["Wechatpay-Serial"] == cert.serial
        assert signature_valid(cert.public_key, received.headers, received.body)
        assert decrypt_notification(sim_keys, received.body)["trade_state"] == "SUCCESS"
    deliveries = sim_merchant.control("GET", "/_sim/deliveries").json()
    assert [(d["serial"], d["sent_serial"]) for d in deliveries] == [(cert.serial, cert.serial)] * 2

    # Tampering keeps working: an unknown serial of the certificate kind, validly signed.
    tampered = sim_merchant.control("POST", "/_sim/notify", {"out_trade_no": "T20240601001", "tamper": "serial"})
    [delivery] = tampered.json()["deliveries"]
    received = notify_receiver.requests[-1]
    sent = received.headers["Wechatpay-Serial"]
    assert CERT_SERIAL_RE.match(sent) and sent != cert.serial and delivery["sent_serial"] == sent
    assert delivery["serial"] == cert.serial and signature_valid(cert.public_key, received.headers, received.body)
    sim_merchant.control("POST", "/_sim/notify", {"out_trade_no": "T20240601001", "tamper": "signature"})
    assert not signature_valid(cert.public_key, notify_receiver.requests[-1].headers, notify_receiver.requests[-1].body)

    # An injected bad signature, too.
    sim_merchant.control("POST", "/_sim/faults", {"path": "/v3/pay/transactions/out-trade-no/*",
                                                  "bad_signature": True})
    broken = sim_merchant.query("T20240601001")
    assert broken.status_code == 200 and broken.headers["Wechatpay-Serial"] == cert.serial
    assert not signature_valid(cert.public_key, broken.headers, broken.content)


def test_wechatpayv3_in_certificate_mode_accepts_the_simulator(sim_keys, simulator, sim_merchant, notify_receiver):
    """An independent client: wechatpayv3 downloads the certificates, then verifies with them."""
    set_mode(sim_merchant, "certificate")
    wx = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=sim_keys.mchid,
                   private_key=sim_keys.merchant_private_pem, cert_serial_no=sim_keys.merchant_serial,
                   appid=sim_keys.appid, apiv3_key=sim_keys.apiv3_key, notify_url=notify_receiver.url,
                   public_key=sim_keys.platform_public_pem, public_key_id=sim_keys.platform_public_key_id, timeout=5)
    core = wx._core
    core._gate_way = simulator.url
    core._public_key = core._public_key_id = None            # certificates only, from the simulator
    core._update_certificates()
    assert [f"{c.serial_number:X}" for c in core._certificates] == [sim_keys.platform_certificate.serial]
    code, text = wx.pay(description="tea", out_trade_no="T20240601002", amount={"total": 100},
                        payer={"openid": SimMerchant.OPENID})
    assert code == 200, text
    pay(sim_merchant, "T20240601002")
    assert simulator.wait_idle(5)
    [received] = notify_receiver.requests
    assert wx.callback(received.headers, received.body)["resource"]["out_trade_no"] == "T20240601002"


# --- the switch -------------------------------------------------------------------------

@pytest.mark.parametrize(("rollout", "expected"), [(0.0, "certificate"), (1.0, "public_key")])
def test_switch_rollout_extremes(sim_keys, sim_merchant, notify_receiver, rollout, expected):
    state = set_mode(sim_merchant, "switch", rollout)
    assert (state["mode"], state["rollout"]) == ("switch", rollout)
    cert = sim_keys.platform_certificate
    key, serial = ((sim_keys.platform_public_key, sim_keys.platform_public_key_id) if expected == "public_key"
                   else (cert.public_key, cert.serial))
    sim_merchant.prepay("T20240601003")
    for _ in range(10):
        response = sim_merchant.query("T20240601003")
        assert response.headers["Wechatpay-Serial"] == serial
        assert signature_valid(key, response.headers, response.content)
    result = sim_merchant.control("POST", "/_sim/notify", {"url": notify_receiver.url, "resource": {"n": 1},
                                                           "duplicates": 19}).json()
    assert [d["status"] for d in result["deliveries"]] == [204] * 20
    assert {r.headers["Wechatpay-Serial"] for r in notify_receiver.requests} == {serial}
    assert all(signature_valid(key, r.headers, r.body) for r in notify_receiver.requests)
    # The certificate download is signed by a certificate whatever the rollout.
    certificates, response, _ = download_certificates(sim_merchant)
    assert response.headers["Wechatpay-Serial"] == cert.serial and list(certificates) == [cert.serial]
    assert signature_valid(cert.public_key, response.headers, response.content)


def test_switch_half_rollout_mixes_both_keys(sim_keys, sim_merchant, notify_receiver):
    set_mode(sim_merchant, "switch")                          # rollout 0.5 by default
    assert sim_merchant.control("GET", "/_sim/keys").json()["rollout"] == 0.5
    cert = sim_keys.platform_certificate
    keys_by_serial = {sim_keys.platform_public_key_id: sim_keys.platform_public_key, cert.serial: cert.public_key}
    for _ in range(2):
        sim_merchant.control("POST", "/_sim/notify", {"url": notify_receiver.url, "resource": {"n": 2},
                                                      "duplicates": 99})
    assert len(notify_receiver.requests) == 200
    serials = [r.headers["Wechatpay-Serial"] for r in notify_receiver.requests]
    assert set(serials) == set(keys_by_serial)
    public_share = serials.count(sim_keys.platform_public_key_id)
    assert 60 <= public_share <= 140, public_share            # 100 expected, sd 7
    for received in notify_receiver.requests:
        assert signature_valid(keys_by_serial[received.headers["Wechatpay-Serial"]], received.headers, received.body)
    logged = [d["serial"] for d in sim_merchant.control("GET", "/_sim/deliveries").json()]
    assert sorted(logged) == sorted(serials)

    sim_merchant.prepay("T20240601004")
    answers = [sim_merchant.query("T20240601004") for _ in range(60)]
    answer_serials = {r.headers["Wechatpay-Serial"] for r in answers}
    assert answer_serials == set(keys_by_serial)              # both, with probability 1 - 2**-59
    assert all(signature_valid(keys_by_serial[r.headers["Wechatpay-Serial"]], r.headers, r.content) for r in answers)


def test_wechatpayv3_with_both_keys_accepts_the_switch(sim_keys, simulator, sim_merchant):
    set_mode(sim_merchant, "switch", 0.5)
    wx = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=sim_keys.mchid,
                   private_key=sim_keys.merchant_private_pem, cert_serial_no=sim_keys.merchant_serial,
                   appid=sim_keys.appid, apiv3_key=sim_keys.apiv3_key, notify_url="http://127.0.0.1:9/notify",
                   public_key=sim_keys.platform_public_pem, public_key_id=sim_keys.platform_public_key_id, timeout=5)
    wx._core._gate_way = simulator.url
    sim_merchant.prepay("T20240601005")
    for _ in range(20):   # wechatpayv3 raises on a signature it cannot verify
        assert wx.query(out_trade_no="T20240601005")[0] == 200


def test_key_mode_validation(sim_merchant):
    for body in ({}, {"mode": "both"}, {"mode": "switch", "rollout": 1.5}, {"mode": "switch", "rollout": -0.1},
                 {"mode": "switch", "rollout": "0.5"}, {"mode": "switch", "rollout": True},
                 {"mode": "certificate", "rollout": 0.5}, {"mode": "switch", "bogus": 1}):
        response = sim_merchant.control("POST", "/_sim/keys", body)
        assert response.status_code == 400, body
    assert sim_merchant.control("GET", "/_sim/keys").json()["mode"] == "public_key"
    assert set_mode(sim_merchant, "switch", 1)["rollout"] == 1.0
    assert set_mode(sim_merchant, "public_key")["mode"] == "public_key"


# --- rotation ---------------------------------------------------------------------------

def test_rotation_lists_both_moves_signing_and_retires(sim_keys, sim_merchant, notify_receiver):
    old = sim_keys.platform_certificate
    set_mode(sim_merchant, "certificate")
    rotated = sim_merchant.control("POST", "/_sim/keys/rotate", {"valid_days": 30})
    assert rotated.status_code == 200, rotated.text
    new_serial = rotated.json()["serial"]
    assert CERT_SERIAL_RE.match(new_serial) and new_serial != old.serial
    state = rotated.json()["keys"]
    assert [(c["serial"], c["signing"]) for c in state["certificates"]] == [(old.serial, False), (new_serial, True)]
    assert state["certificates"][1]["not_after"] - state["certificates"][1]["not_before"] == 30 * 86400

    certificates, response, _ = download_certificates(sim_merchant)
    assert set(certificates) == {old.serial, new_serial}       # both valid, both listed
    assert response.headers["Wechatpay-Serial"] == new_serial
    new_key = certificates[new_serial].public_key()
    assert signature_valid(new_key, response.headers, response.content)
    sim_merchant.prepay("T20240601006")
    answer = sim_merchant.query("T20240601006")
    assert answer.headers["Wechatpay-Serial"] == new_serial and signature_valid(new_key, answer.headers,
                                                                               answer.content)
    sim_merchant.control("POST", "/_sim/notify", {"url": notify_receiver.url, "resource": {"n": 3}})
    [received] = notify_receiver.requests
    assert received.headers["Wechatpay-Serial"] == new_serial
    assert signature_valid(new_key, received.headers, received.body)

    retired = sim_merchant.control("POST", "/_sim/keys/retire", {"serial": old.serial})
    assert retired.status_code == 200 and [c["serial"] for c in retired.json()["certificates"]] == [new_serial]
    assert set(download_certificates(sim_merchant)[0]) == {new_serial}
    last = sim_merchant.control("POST", "/_sim/keys/retire", {"serial": new_serial})
    assert last.status_code == 409 and last.json()["code"] == "LAST_CERTIFICATE"
    unknown = sim_merchant.control("POST", "/_sim/keys/retire", {"serial": old.serial})
    assert unknown.status_code == 404
    for body in ({"valid_days": 0}, {"valid_days": "30"}, {"valid_days": 30.0}, {"days": 30}):
        assert sim_merchant.control("POST", "/_sim/keys/rotate", body).status_code == 400, body
    assert sim_merchant.control("POST", "/_sim/keys/retire", {}).status_code == 400

    # Retiring the signing certificate moves signing back to the newest one left.
    third = sim_merchant.control("POST", "/_sim/keys/rotate", {}).json()["serial"]
    state = sim_merchant.control("POST", "/_sim/keys/retire", {"serial": third}).json()
    assert [(c["serial"], c["signing"]) for c in state["certificates"]] == [(new_serial, True)]

    assert sim_merchant.control("POST", "/_sim/reset").json() == {"reset": True}
    state = sim_merchant.control("GET", "/_sim/keys").json()
    assert state["mode"] == "public_key" and [c["serial"] for c in state["certificates"]] == [old.serial]


def test_rotation_in_switch_mode_signs_with_the_new_certificate(sim_keys, simulator, sim_merchant):
    set_mode(sim_merchant, "switch", 0.0)
    new_serial = simulator.rotate_certificate()
    state = simulator.keys_state()
    assert [(c["serial"], c["signing"]) for c in state["certificates"]] == \
        [(sim_keys.platform_certificate.serial, False), (new_serial, True)]
    certificates, _, _ = download_certificates(sim_merchant)
    sim_merchant.prepay("T20240601007")
    answer = sim_merchant.query("T20240601007")
    assert answer.headers["Wechatpay-Serial"] == new_serial
    assert signature_valid(certificates[new_serial].public_key(), answer.headers, answer.content)


# --- rate limits and shares -------------------------------------------------------------

def test_rate_limited_fault_answers_429_frequency_limited_signed(sim_keys, sim_merchant):
    added = sim_merchant.control("POST", "/_sim/faults", {"path": JSAPI, "rate_limited": True})
    assert added.status_code == 200 and added.json()["status"] == 429
    body = {"appid": sim_keys.appid, "mchid": sim_keys.mchid, "description": "tea", "out_trade_no": "T20240601008",
            "notify_url": "https://merchant.example.com/notify", "amount": {"total": 1}, "payer": {"openid": "o1"}}
    limited = sim_merchant.call("POST", JSAPI, body)
    assert limited.status_code == 429 and limited.json() == RATE_LIMITED
    assert limited.headers["Content-Type"].startswith("application/json")
    assert limited.headers["Wechatpay-Serial"] == sim_keys.platform_public_key_id
    assert signature_valid(sim_keys.platform_public_key, limited.headers, limited.content)
    assert sim_merchant.call("POST", JSAPI, body).status_code == 200     # count 1: spent

    set_mode(sim_merchant, "certificate")                   # signed by the key mode's key like any answer
    sim_merchant.control("POST", "/_sim/faults", {"rate_limited": True, "status": 429})
    limited = sim_merchant.query("T20240601008")
    assert limited.status_code == 429 and limited.json() == RATE_LIMITED
    assert signature_valid(sim_keys.platform_certificate.public_key, limited.headers, limited.content)


def test_fault_share_is_roughly_honoured_and_spends_count_only_on_hits(simulator, sim_merchant):
    path = "/v3/pay/transactions/out-trade-no/*"
    sim_merchant.control("POST", "/_sim/faults", {"path": path, "rate_limited": True, "share": 0.3, "count": 1000})
    statuses = [sim_merchant.query("NOSUCH0001").status_code for _ in range(200)]
    hits = statuses.count(429)
    assert set(statuses) == {404, 429}
    assert 30 <= hits <= 95, hits                               # 60 expected, sd 6.5
    [fault] = sim_merchant.control("GET", "/_sim/faults").json()
    assert fault["count"] == 1000 - hits and fault["share"] == 0.3
    assert simulator.counters()["faults_triggered"] == hits

    sim_merchant.control("DELETE", "/_sim/faults")
    sim_merchant.control("POST", "/_sim/faults", {"path": path, "status": 503, "share": 0.5, "count": 5})
    statuses = [sim_merchant.query("NOSUCH0001").status_code for _ in range(100)]
    assert statuses.count(503) == 5                             # all five spent, then gone
    assert sim_merchant.control("GET", "/_sim/faults").json() == []


def test_share_and_rate_limited_are_validated(sim_merchant):
    for spec in ({"status": 500, "share": 0}, {"status": 500, "share": 1.5}, {"status": 500, "share": "0.5"},
                 {"status": 500, "share": True}, {"status": 500, "share": -0.2}, {"rate_limited": "yes"},
                 {"rate_limited": True, "status": 500}, {"rate_limited": True, "body": {"code": "X"}},
                 {"rate_limited": False}):
        response = sim_merchant.control("POST", "/_sim/faults", spec)
        assert response.status_code == 400, spec
    assert sim_merchant.control("POST", "/_sim/faults", {"status": 500, "share": 1}).status_code == 200
    assert sim_merchant.control("POST", "/_sim/faults", {"rate_limited": True, "share": 0.01}).status_code == 200


# --- coupons ----------------------------------------------------------------------------

COUPONS = [{"type": "CASH", "amount": 100, "name": "满10减1"}, {"type": "NOCASH", "amount": 250}]


def test_coupon_payment_shows_payer_total_and_promotion_detail(sim_keys, sim_merchant, notify_receiver):
    sim_merchant.prepay("T20240601010", total=1000, notify_url=notify_receiver.url)
    paid = pay(sim_merchant, "T20240601010", coupons=COUPONS)
    assert paid["order"]["amount"]["payer_total"] == 650
    transaction = sim_merchant.query("T20240601010").json()
    assert transaction["amount"] == {"total": 1000, "payer_total": 650, "currency": "CNY", "payer_currency": "CNY"}
    cash, nocash = transaction["promotion_detail"]
    for coupon, given in zip((cash, nocash), COUPONS, strict=True):
        assert set(coupon) == {"coupon_id", "name", "scope", "type", "amount", "stock_id", "wechatpay_contribute",
                               "merchant_contribute", "other_contribute", "currency"}
        assert (coupon["type"], coupon["amount"], coupon["scope"], coupon["currency"]) == \
            (given["type"], given["amount"], "GLOBAL", "CNY")
        assert coupon["merchant_contribute"] == coupon["amount"]
        assert coupon["wechatpay_contribute"] + coupon["merchant_contribute"] + coupon["other_contribute"] == \
            coupon["amount"]
        assert coupon["coupon_id"] and coupon["stock_id"] and coupon["name"]
    assert cash["name"] == "满10减1" and cash["coupon_id"] != nocash["coupon_id"]
    assert sim_merchant.control("GET", "/_sim/idle?timeout=5").json() == {"idle": True}
    [received] = notify_receiver.requests
    assert decrypt_notification(sim_keys, received.body) == transaction

    # Refunds of a coupon order give the payer back their share, as before.
    refund = sim_merchant.call("POST", "/v3/refund/domestic/refunds", {
        "out_refund_no": "R20240601010", "out_trade_no": "T20240601010",
        "amount": {"refund": 1000, "total": 1000, "currency": "CNY"}}).json()
    assert refund["amount"]["payer_total"] == 650 and refund["amount"]["payer_refund"] == 650


def test_coupon_payments_are_validated(sim_merchant):
    sim_merchant.prepay("T20240601011", total=300)
    for body in ({"coupons": [{"type": "NOCASH", "amount": 200}, {"type": "CASH", "amount": 101}]},
                 {"coupons": [{"type": "CASH", "amount": 10}], "payer_total": 290},
                 {"coupons": [{"type": "GIFT", "amount": 10}]}, {"coupons": [{"type": "CASH", "amount": 0}]},
                 {"coupons": [{"type": "CASH", "amount": 1.5}]}, {"coupons": [{"type": "CASH", "amount": "10"}]},
                 {"coupons": [{"type": "CASH", "amount": 10, "bogus": 1}]}, {"coupons": [{"type": "CASH"}]},
                 {"coupons": {"type": "CASH", "amount": 10}}, {"coupons": ["CASH"]},
                 {"coupons": [{"type": "CASH", "amount": 10, "name": ""}]}):
        response = sim_merchant.control("POST", "/_sim/orders/T20240601011/pay", {"notify": "drop", **body})
        assert response.status_code == 400, body
    assert sim_merchant.query("T20240601011").json()["trade_state"] == "NOTPAY"
    paid = pay(sim_merchant, "T20240601011", notify="drop", coupons=[{"type": "NOCASH", "amount": 300}])
    assert paid["order"]["amount"]["payer_total"] == 0                       # the whole order by coupon
    sim_merchant.prepay("T20240601012", total=300)
    legacy = pay(sim_merchant, "T20240601012", notify="drop", payer_total=280)   # the older way still works
    assert legacy["order"]["amount"]["payer_total"] == 280 and "promotion_detail" not in legacy["order"]


def test_coupon_bill_columns_and_summary(sim_keys, sim_merchant):
    day = yesterday_cst()
    orders = {  # out_trade_no: (total, coupons or payer_total) -> (应结订单金额, 代金券金额, 订单金额) in fen
        "T20240601021": (1000, {"coupons": [{"type": "NOCASH", "amount": 200}, {"type": "CASH", "amount": 100}]},
                         (800, 300, 1000)),   # 代金券金额 holds every coupon, 应结 lacks the NOCASH ones
        "T20240601022": (500, {"coupons": [{"type": "CASH", "amount": 50}]}, (500, 50, 500)),
        "T20240601023": (300, {"coupons": [{"type": "NOCASH", "amount": 30}, {"type": "NOCASH", "amount": 20}]},
                         (250, 50, 300)),
        "T20240601024": (700, {}, (700, 0, 700)),
        "T20240601025": (400, {"payer_total": 350}, (400, 50, 400)),   # no coupon kind: pre-funded
    }
    for number, (otn, (total, extra, _)) in enumerate(orders.items()):
        sim_merchant.prepay(otn, total=total)
        pay(sim_merchant, otn, notify="drop", success_time=f"{day}T10:00:0{number}+08:00", **extra)
    served = sim_merchant.control("GET", f"/_sim/bill?bill_date={day}")
    assert served.status_code == 200
    lines = served.content.decode("utf-8").split("\r\n")
    assert lines[0].split(",") == list(DETAIL_HEADER) and "应结订单金额" in lines[0]
    assert "应结订单总金额" not in lines[0]
    assert lines[len(orders) + 1] == ",".join(SUMMARY_HEADER) and "应结订单总金额" in lines[len(orders) + 1]

    bill = parse_trade_bill(served.content)
    assert [row["商户订单号"] for row in bill.rows] == list(orders)
    for row in bill.rows:
        settled, coupon, order_amount = orders[row["商户订单号"]][2]
        assert (yuan_to_fen(row["应结订单金额"]), yuan_to_fen(row["代金券金额"]), yuan_to_fen(row["订单金额"])) == \
            (settled, coupon, order_amount), row
    assert bill.rows[0]["手续费"] == "0.05000"                   # 0.60% of the settled 8.00
    summary = bill.summary
    assert summary["总交易单数"] == "5"
    assert yuan_to_fen(summary["应结订单总金额"]) == sum(yuan_to_fen(r["应结订单金额"]) for r in bill.rows) == 2650
    assert yuan_to_fen(summary["订单总金额"]) == sum(yuan_to_fen(r["订单金额"]) for r in bill.rows) == 2900
    fees = sum(int(r["手续费"].replace(".", "")) for r in bill.rows)    # 1e-5 yuan units, exact
    assert int(summary["手续费总金额"].replace(".", "")) == fees

    # The merchant's download is the same bill, its hash over it.
    download = sim_merchant.call("GET", f"/v3/bill/tradebill?bill_date={day}").json()
    file = sim_merchant.call("GET", download["download_url"].removeprefix(sim_merchant.sim.url))
    assert file.status_code == 200 and file.content == served.content
    assert hashlib.sha1(file.content, usedforsecurity=False).hexdigest() == download["hash_value"]


def test_coupon_refund_lines_are_as_before(sim_keys):
    # A clock one day ahead makes "today's" refund yesterday's (as in test_simulator).
    offset = [0.0]
    sim = Simulator(sim_keys, clock=lambda: time.time() + offset[0])
    sim.ledger.prepay({"appid": sim_keys.appid, "mchid": sim_keys.mchid, "description": "tea",
                       "out_trade_no": "T20240601030", "notify_url": "https://merchant.example.com/notify",
                       "amount": {"total": 2000}, "payer": {"openid": "o1"}}, auth_mchid=sim_keys.mchid)
    sim.pay("T20240601030", notify="drop", coupons=[{"type": "NOCASH", "amount": 500}])
    sim.ledger.create_refund({"out_refund_no": "R1", "out_trade_no": "T20240601030",
                              "amount": {"refund": 1000, "total": 2000, "currency": "CNY"}})
    sim.complete_refund("R1", notify="drop")
    day = datetime.now(CST).strftime("%Y-%m-%d")
    offset[0] = 86400.0
    payment, refund = parse_trade_bill(sim.trade_bill(day)).rows
    assert (payment["应结订单金额"], payment["代金券金额"], payment["订单金额"]) == ("15.00", "5.00", "20.00")
    assert (refund["应结订单金额"], refund["代金券金额"], refund["订单金额"]) == ("0.00", "0.00", "0.00")
    assert refund["退款金额"] == "10.00" and refund["申请退款金额"] == "10.00"


# --- command line -----------------------------------------------------------------------

def test_cli_keys_commands(simulator, capsys):
    url = simulator.url
    assert main(["keys", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "public_key"
    assert main(["keys", "--mode", "switch", "--rollout", "0.25", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["rollout"] == 0.25
    assert main(["rotate-cert", "--valid-days", "10", "--url", url]) == 0
    serial = json.loads(capsys.readouterr().out)["serial"]
    assert main(["retire-cert", serial, "--url", url]) == 0
    assert [c["serial"] for c in json.loads(capsys.readouterr().out)["certificates"]] == \
        [simulator.keys.platform_certificate.serial]
    with pytest.raises(SystemExit, match="409"):
        main(["retire-cert", simulator.keys.platform_certificate.serial, "--url", url])


def test_ephemeral_keys_each_have_their_own_certificate():
    first, second = ephemeral(), ephemeral()
    assert first.platform_certificate.serial != second.platform_certificate.serial
