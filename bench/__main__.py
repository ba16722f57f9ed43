"""Benchmarks: ratios against a baseline, measured in one run (`make bench`).

1. Cold start: importing each handler (and loading its configuration, as SCF's init
   does) in a fresh interpreter, against a bare interpreter and against importing
   wechatpayv3 (what a typical handler would pull in).
2. Notification verification (signature + decryption) per call: ours against
   wechatpayv3's `callback`.
3. Creating and paying an order the way the store does it (insert, compare-and-set
   transition, once-only event) against the seed article's way (insert, unconditional
   update), both on the wire-protocol MongoDB.  nx-27017 evaluates queries in Python
   in the type-safe mode we run it in, so absolute numbers say little about MongoDB.
Absolute times vary with the machine; the ratios are what to compare between runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best_of(runs: int, fn) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return min(samples)


def _median_per_call(calls: int, fn, rounds: int = 5) -> float:
    per_call = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - started) / calls)
    return statistics.median(per_call)


def bench_cold_start(environ: dict) -> list[tuple[str, float]]:
    env = {**os.environ, **environ, "PYTHONPATH": str(ROOT)}

    def python(code: str):
        return lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      stdout=subprocess.DEVNULL)

    load = ("import importlib.util as u; s = u.spec_from_file_location('h', '{path}'); "
            "m = u.module_from_spec(s); s.loader.exec_module(m)")
    cases = [("bare interpreter", python("pass")),
             ("import wechatpayv3 (reference)", python("import wechatpayv3"))]
    for name in ("prepare", "callback", "reconcile"):
        cases.append((f"{name} handler + config", python(load.format(path=ROOT / f"functions/{name}/index.py"))))
    return [(label, _best_of(7, run)) for label, run in cases]


def bench_verify(environ: dict) -> list[tuple[str, float]]:
    from wechatpayv3 import WeChatPay, WeChatPayType

    from shared.config import load_config
    from shared.wechatpay.notification import verify_notification
    from tests.keys import make_notification, transaction

    config = load_config("callback", environ)
    headers, body = make_notification(transaction("T20261126BENCH00001"))
    theirs = WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid=environ["WECHATPAY_MCHID"],
                       private_key=environ["WECHATPAY_PRIVATE_KEY"],
                       cert_serial_no=environ["WECHATPAY_CERT_SERIAL_NO"], appid=environ["WECHAT_APPID"],
                       apiv3_key=environ["WECHATPAY_APIV3_KEY"], public_key=environ["WECHATPAY_PUBLIC_KEY"],
                       public_key_id=environ["WECHATPAY_PUBLIC_KEY_ID"])

    def ours():
        verify_notification(headers, body, public_key=config.wechatpay_public_key,
                            public_key_id=config.wechatpay_public_key_id, apiv3_key=config.wechatpay_apiv3_key)

    def reference():
        assert theirs.callback(headers, body) is not None

    return [("wechatpayv3 callback (reference)", _median_per_call(300, reference)),
            ("verify_notification (ours)", _median_per_call(300, ours))]


def bench_store() -> list[tuple[str, float]]:
    import pymongo

    from devtools.mongo_server import MongoServer
    from shared import order_states
    from shared.store.mongo import MongoOrderStore

    with tempfile.TemporaryDirectory() as folder, MongoServer(Path(folder) / "bench.db") as server:
        store = MongoOrderStore(server.uri, "bench")
        store.ensure_indexes()
        raw = pymongo.MongoClient(server.uri)["bench"]["orders"]
        counter = iter(range(10**9))

        def article_style():
            # The seed article: add the order, later update it with no condition.
            number = f"A{next(counter):012d}"
            raw.insert_one({"outTradeNo": number, "totalFee": 100, "idemKey": number})
            raw.update_one({"outTradeNo": number}, {"$set": {"payStatus": "success"}})

        def create_and_pay():
            number = f"P{next(counter):012d}"
            store.insert_order({"outTradeNo": number, "totalFee": 100, "expireTime": 0})
            store.transition(number, order_states.SUCCESS, fields={"transactionId": number})

        return [("article: insert + unconditional update", _median_per_call(100, article_style)),
                ("insert_order + CAS transition + event (ours)", _median_per_call(100, create_and_pay))]


def report(title: str, rows: list[tuple[str, float]]) -> None:
    baseline = rows[0][1]
    print(f"\n{title}")
    for label, seconds in rows:
        print(f"  {label:<42} {seconds * 1000:9.3f} ms   x{seconds / baseline:6.2f}")


def main() -> None:
    from tests.keys import make_environ

    environ = make_environ()
    report("Cold start (best of 7, fresh interpreter each)", bench_cold_start(environ))
    report("Notification verification (median per call)", bench_verify(environ))
    report("Store writes on nx-27017 (median per call)", bench_store())


if __name__ == "__main__":
    main()
