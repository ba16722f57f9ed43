"""The notification log (`notifications`, kept 7 days) and its replay (`devtools.replay`).

Against the real loop: the simulator pays and notifies, the callback runs behind the
local gateway, the store is nx-27017.  "Production" is a MongoDB server of its own
(`private_mongo`: nx does not isolate databases), holding notifications signed by a key
the local stack does not have, an hour old, as a replay from production finds them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools import replay
from devtools.sim_keys import save as save_sim_keys
from shared import order_states as st
from shared.errors import StoreUnavailable
from shared.store.mongo import MongoOrderStore
from shared.store.port import NOTIFICATION_HEADERS, notification_body
from shared.wechatpay import signing
from shared.wechatpay.notification import verify_signature
from tests.keys import key_pair, make_notification, transaction

ROOT = Path(__file__).resolve().parent.parent
KEPT_FIELDS = {"notificationId", "eventType", "outTradeNo", "outRefundNo", "status", "outcome", "headers", "body",
               "createTime", "receivedAt"}
PRODUCTION_SERIAL = "PUB_KEY_ID_0119000001092099010100000000000099"   # WeChat Pay's key in production


def _callback_url(stack) -> str:
    return f"{stack.gateway.url}/callback"


def _paid(stack) -> tuple[str, dict]:
    """An order paid through the simulator's notification: (outTradeNo, pay result)."""
    order = stack.create_order()
    result = stack.simulator.pay(order["outTradeNo"])
    assert stack.simulator.wait_idle(10)
    assert stack.store.get_order(order["outTradeNo"])["payStatus"] == st.SUCCESS
    return order["outTradeNo"], result


def _notify(stack, out_trade_no: str, **options) -> list[int]:
    results = stack.simulator.notify(url=_callback_url(stack), out_trade_no=out_trade_no, **options)
    return [d["status"] for d in results["deliveries"]]


# --- what the callback keeps ----------------------------------------------------------------

def test_a_paid_orders_notification_is_kept_raw_with_only_the_verifying_headers(live_stack, sim_keys):
    out_trade_no, result = _paid(live_stack)
    [kept] = live_stack.store.list_notifications(out_trade_no)
    assert set(kept) == KEPT_FIELDS
    # The simulator also sent User-Agent, the gateway added Host, Content-Length, x-scf-remote-addr ...
    assert tuple(kept["headers"]) == NOTIFICATION_HEADERS
    assert (kept["notificationId"], kept["eventType"], kept["outTradeNo"]) == (
        result["notification_id"], "TRANSACTION.SUCCESS", out_trade_no)
    assert (kept["status"], kept["outcome"]) == (204, "paid")
    assert abs(kept["receivedAt"].timestamp() - time.time()) < 30
    # The raw bytes: WeChat Pay's signature over them still holds (it covers every byte).
    body = notification_body(kept)
    verify_signature(kept["headers"], body, public_key=sim_keys.platform_public_key,
                     public_key_id=sim_keys.platform_public_key_id, now=int(kept["headers"]["Wechatpay-Timestamp"]))
    # ... with the resource still encrypted, and nothing decrypted kept beside it.
    resource = json.loads(body)["resource"]
    plaintext = json.loads(signing.aes_gcm_decrypt(sim_keys.apiv3_key.encode(), resource["nonce"],
                                                   resource["associated_data"], resource["ciphertext"]))
    assert plaintext["out_trade_no"] == out_trade_no
    order = live_stack.store.get_order(out_trade_no)
    text = json.dumps(kept, default=str, ensure_ascii=False)
    assert plaintext["payer"]["openid"] == order["payerOpenid"] and "bank_type" in plaintext
    for decrypted in (order["payerOpenid"], order["transactionId"], "bank_type", "trade_state", "payer", "amount"):
        assert decrypted not in text


def test_unverified_deliveries_are_not_kept_verified_ones_always(live_stack):
    out_trade_no, _ = _paid(live_stack)
    for options in ({"tamper": "body"}, {"tamper": "signature"}, {"tamper": "serial"},
                    {"tamper": "timestamp_old"}, {"probe": True}):
        assert _notify(live_stack, out_trade_no, **options) == [401], options
    assert [doc["outcome"] for doc in live_stack.store.list_notifications()] == ["paid"]   # of any order
    # WeChat Pay's duplicate: kept again, with what we answered this time.
    assert _notify(live_stack, out_trade_no) == [204]
    first, again = live_stack.store.list_notifications(out_trade_no)
    assert (first["outcome"], again["outcome"], again["status"]) == ("paid", "already_paid", 204)
    assert again["createTime"] >= first["createTime"]
    assert again["headers"]["Wechatpay-Nonce"] != first["headers"]["Wechatpay-Nonce"]
    # Signed by WeChat Pay but encrypted with another APIv3 key: verified, so kept, with its 400
    # (the order number is inside the resource that did not decrypt: unknown).
    assert _notify(live_stack, out_trade_no, tamper="ciphertext") == [400]
    [undecrypted] = [doc for doc in live_stack.store.list_notifications() if doc["status"] == 400]
    assert (undecrypted["outcome"], undecrypted["eventType"], undecrypted["outTradeNo"]) == (
        "DECRYPT_FAILED", "TRANSACTION.SUCCESS", None)


@pytest.mark.parametrize("failure", [StoreUnavailable("the order store is unavailable, try again shortly"),
                                     RuntimeError("a bug")])
def test_a_failure_to_keep_changes_no_answer(live_stack, monkeypatch, logs, failure):
    def refuse(self, *args, **kwargs):
        raise failure

    monkeypatch.setattr(MongoOrderStore, "record_notification", refuse)
    out_trade_no, _ = _paid(live_stack)
    assert [d["status"] for d in live_stack.simulator.deliveries(out_trade_no)] == [204]
    assert live_stack.store.count_events("order.paid", out_trade_no) == 1
    monkeypatch.undo()
    assert live_stack.store.list_notifications(out_trade_no) == []
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    [warning] = [line for line in lines if line["event"] == "callback.notification_not_kept"]
    assert warning["level"] == "warning" and warning["status"] == 204
    assert warning["error"] == ("STORE_UNAVAILABLE" if isinstance(failure, StoreUnavailable) else "RuntimeError")


def test_after_a_store_outage_keeping_is_not_even_tried():
    """The 503 must not wait a second time for a store that just failed."""
    from shared.notifications import NotificationService
    from shared.store.memory import InMemoryOrderStore
    from tests.keys import make_config

    class Down(InMemoryOrderStore):
        tried = 0

        def record_notification(self, *args, **kwargs):
            Down.tried += 1
            return super().record_notification(*args, **kwargs)

    store = Down()
    service = NotificationService(make_config("callback"), store)
    headers, body = make_notification(transaction("T20261126000000000001"))
    store.available = False
    with pytest.raises(StoreUnavailable):
        service.handle(headers, body)
    assert Down.tried == 0
    store.available = True
    service.handle(headers, body)   # an unknown order: an anomaly, acknowledged, and kept
    assert Down.tried == 1 and store.list_notifications()[0]["outcome"] == "unknown_order"


# --- the replay tool ----------------------------------------------------------------------------

@pytest.fixture
def keys_dir(tmp_path, sim_keys):
    """The local stack's simulator keys in a folder, as `make run` leaves them in .local/keys."""
    folder = tmp_path / "keys"
    save_sim_keys(sim_keys, folder)
    return str(folder)


@pytest.fixture
def production(private_mongo):
    """Production's database (a server of its own) and what its callback kept."""
    store = MongoOrderStore(private_mongo.uri, "cloudpay")
    yield store
    store.close()


def _production_notification(stack, production, sim_keys, out_trade_no, *, apiv3_key=None, age_s=3600,
                             notification_id="EV-PROD-0001") -> None:
    """A notification production's callback kept an hour ago: signed by WeChat Pay's production
    key (unknown locally), its resource encrypted with `apiv3_key` (default: the local one)."""
    order = stack.store.get_order(out_trade_no)
    resource = transaction(out_trade_no, total=order["totalFee"], appid=sim_keys.appid, mchid=sim_keys.mchid,
                           transaction_id="4200000001202612010000000099")
    received = int(time.time()) - age_s
    headers, body = make_notification(resource, platform_key=key_pair("production").private_key,
                                      serial=PRODUCTION_SERIAL, apiv3_key=apiv3_key or sim_keys.apiv3_key,
                                      timestamp=received, notification_id=notification_id)
    production.clock = lambda: received * 1000
    production.record_notification({**headers, "Cookie": "x=1"}, body, status=204, outcome="paid",
                                   notification_id=notification_id, event_type="TRANSACTION.SUCCESS",
                                   out_trade_no=out_trade_no)


def _replay(*argv) -> tuple[int, str]:
    out = io.StringIO()
    code = replay.main([str(arg) for arg in argv], out=out)
    return code, out.getvalue()


def test_replaying_the_kept_notifications_into_the_same_stack_is_idempotent(live_stack, mongo_uri, db_name,
                                                                             keys_dir):
    out_trade_no, result = _paid(live_stack)
    code, out = _replay("--from-uri", mongo_uri, "--db", db_name, "--out-trade-no", out_trade_no,
                        "--to", _callback_url(live_stack), "--resign", "--keys-dir", keys_dir)
    assert code == 0, out
    [line, summary] = out.splitlines()
    assert result["notification_id"] in line and out_trade_no in line
    assert line.endswith("answered 204 paid | re-signed replay -> 204")
    assert summary.startswith("1 notification(s) (order ") and "1 answered 2xx, 0 not" in summary
    assert live_stack.store.count_events("order.paid", out_trade_no) == 1
    original, replayed = live_stack.store.list_notifications(out_trade_no)
    assert (replayed["outcome"], replayed["status"], replayed["notificationId"]) == (
        "already_paid", 204, result["notification_id"])
    assert notification_body(replayed) == notification_body(original)                 # the body as stored
    assert replayed["headers"]["Wechatpay-Nonce"] != original["headers"]["Wechatpay-Nonce"]   # signed anew


def test_a_production_notification_needs_resigning_and_then_settles_once(live_stack, production, private_mongo,
                                                                         sim_keys, keys_dir, notify_receiver):
    out_trade_no = live_stack.create_order()["outTradeNo"]
    _production_notification(live_stack, production, sim_keys, out_trade_no)
    source = ["--from-uri", private_mongo.uri, "--db", "cloudpay", "--out-trade-no", out_trade_no]

    # --dry-run lists it and sends nothing (a receiver that records every request sees none).
    code, out = _replay(*source, "--to", notify_receiver.url, "--dry-run", "--resign", "--keys-dir", keys_dir)
    assert code == 0 and "EV-PROD-0001 TRANSACTION.SUCCESS" in out and "dry run: not sent" in out
    assert "listed; nothing sent" in out
    time.sleep(0.2)
    assert notify_receiver.requests == []

    # As stored: WeChat Pay's production signature, an hour old. Refused, and the order untouched.
    code, out = _replay(*source, "--to", _callback_url(live_stack))
    assert code == 1 and "replay -> 401" in out and "0 answered 2xx, 1 not" in out
    assert live_stack.store.get_order(out_trade_no)["payStatus"] == st.NOTPAY

    # Re-signed with the local simulator's key: verified, decrypted (same APIv3 key), paid.
    for outcome in ("paid", "already_paid"):
        code, out = _replay(*source, "--to", _callback_url(live_stack), "--resign", "--keys-dir", keys_dir)
        assert code == 0 and "re-signed replay -> 204" in out, out
        assert live_stack.store.list_notifications(out_trade_no)[-1]["outcome"] == outcome
    order = live_stack.store.get_order(out_trade_no)
    assert order["payStatus"] == st.SUCCESS and order["transactionId"] == "4200000001202612010000000099"
    assert live_stack.store.count_events("order.paid", out_trade_no) == 1
    # Production's database was only read.
    assert [doc["notificationId"] for doc in production.list_notifications()] == ["EV-PROD-0001"]


def test_re_encrypting_with_the_local_apiv3_key(live_stack, production, private_mongo, sim_keys, keys_dir,
                                                tmp_path):
    production_key = "Pr0ducti0nApiV3Key0123456789abcd"
    assert len(production_key) == 32 and production_key != sim_keys.apiv3_key
    out_trade_no = live_stack.create_order()["outTradeNo"]
    _production_notification(live_stack, production, sim_keys, out_trade_no, apiv3_key=production_key)
    key_file = tmp_path / "apiv3.key"
    key_file.write_text(production_key + "\n")
    source = ["--from-uri", private_mongo.uri, "--db", "cloudpay", "--to", _callback_url(live_stack),
              "--resign", "--keys-dir", keys_dir]

    code, out = _replay(*source)   # verified now, but the local APIv3 key cannot decrypt it
    assert code == 1 and "replay -> 400 resource does not decrypt with the APIv3 key" in out
    assert live_stack.store.get_order(out_trade_no)["payStatus"] == st.NOTPAY

    wrong = tmp_path / "wrong.key"
    wrong.write_text("W" * 32)
    code, out = _replay(*source, "--re-encrypt", "--apiv3-key-file", wrong)
    assert code == 1 and "not sent: the resource does not decrypt with the key in --apiv3-key-file" in out

    code, out = _replay(*source, "--re-encrypt", "--apiv3-key-file", key_file)
    assert code == 0 and "re-signed replay -> 204" in out, out
    assert live_stack.store.get_order(out_trade_no)["payStatus"] == st.SUCCESS
    for secret in (production_key, sim_keys.apiv3_key, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"):
        assert secret not in out
    kept = live_stack.store.list_notifications(out_trade_no)[-1]
    assert kept["outcome"] == "paid" and production_key not in json.dumps(kept, default=str)


def test_selection_since_and_last_newest_last(production, private_mongo):
    now = int(time.time())
    for age_s, number in ((300, "S1"), (200, "S2"), (100, "S3")):
        headers, body = make_notification(transaction(number), timestamp=now - age_s, notification_id=f"EV-{number}")
        production.clock = lambda age_s=age_s: (now - age_s) * 1000
        production.record_notification(headers, body, status=204, notification_id=f"EV-{number}",
                                       out_trade_no=number)
    source = ["--from-uri", private_mongo.uri, "--db", "cloudpay", "--dry-run"]

    def listed(*argv):
        code, out = _replay(*source, *argv)
        assert code == 0, out
        return [line.split()[1] for line in out.splitlines() if "dry run" in line]

    assert listed() == ["EV-S1", "EV-S2", "EV-S3"]
    assert listed("--last", 2) == ["EV-S2", "EV-S3"]
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 250))
    assert listed("--since", since) == ["EV-S2", "EV-S3"]
    assert listed("--since", since.replace("+00:00", "Z"), "--out-trade-no", "S3") == ["EV-S3"]
    code, out = _replay(*source, "--last", 3)
    assert "(--last 3 reached: older ones may match too)" in out


@pytest.mark.parametrize("argv, complaint", [
    (["--to", "http://127.0.0.1:9/callback", "--since", "2026-12-01T00:00:00"], "needs its offset"),
    (["--to", "http://127.0.0.1:9/callback", "--since", "yesterday"], "not an ISO 8601 time"),
    ([], "give --to"),
    (["--to", "http://127.0.0.1:9/callback", "--re-encrypt"], "needs --apiv3-key-file"),
    (["--to", "http://127.0.0.1:9/callback", "--resign", "--keys-dir", "/nonexistent/keys"], "no simulator keys"),
])
def test_what_the_user_must_fix_is_said_before_anything_is_read(capsys, argv, complaint):
    assert replay.main(["--from-uri", "mongodb://127.0.0.1:9", *argv]) == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("last", ["0", "1001", "many"])
def test_last_is_bounded(capsys, last):
    with pytest.raises(SystemExit) as exited:
        replay.main(["--from-uri", "mongodb://127.0.0.1:9", "--dry-run", "--last", last])
    assert exited.value.code == 2


def test_the_module_runs_from_a_shell_and_keeps_the_uri_to_itself(production, private_mongo):
    headers, body = make_notification(transaction("SH1"), notification_id="EV-SHELL")
    production.record_notification(headers, body, status=204, notification_id="EV-SHELL", out_trade_no="SH1")
    uri = f"{private_mongo.uri}/?appname=replay-secret-marker"
    done = subprocess.run([sys.executable, "-m", "devtools.replay", "--db", "cloudpay", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REPLAY_FROM_URI": uri})
    assert done.returncode == 0, done.stderr
    assert "EV-SHELL" in done.stdout and "replay-secret-marker" not in done.stdout + done.stderr


def test_the_source_database_is_only_read(private_mongo):
    """A read-only database user suffices: no collection, no index is made there."""
    import pymongo

    code, out = _replay("--from-uri", private_mongo.uri, "--db", "cloudpay", "--dry-run")
    assert code == 0 and out.startswith("0 notification(s) (the newest 20) listed; nothing sent")
    client = pymongo.MongoClient(private_mongo.uri)
    try:
        assert client["cloudpay"].list_collection_names() == []
    finally:
        client.close()
