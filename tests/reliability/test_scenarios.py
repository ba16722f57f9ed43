"""Reliability scenarios: the whole stack under load and faults, each ending in one summary line.

Real parts only: the SCF handlers (loaded as SCF loads them) behind the local gateway,
the WeChat Pay simulator over HTTP (it signs, notifies and retries like WeChat Pay),
and nx-27017 over TCP; the store is killed by stopping its server process.  Nothing of
ours is mocked.  Random choices come from seeded generators (the seed is in the summary
line); thread interleavings are whatever the machine makes of them, which is the point.

Each scenario counts what matters to a merchant: `lost` (money WeChat Pay took that
the store does not show) and `doubled` (a fact recorded twice: two `order.paid` for one
order, a refund counted twice, two payable orders for one cart, ...).  Both must be 0.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
import requests

from shared import order_states as st
from shared import runtime
from shared.store.mongo import MongoOrderStore
from tests.functions import load_function

CHINA = timezone(timedelta(hours=8))
CATALOG = (("A1", "Oolong tea", 1990), ("B2", "Moon cake", 1288), ("C3", "Green tea", 333),
           ("D4", "Gift box", 8800), ("E5", "Tea cup", 1))
TIMER = {"Type": "Timer", "TriggerName": "reconcile-every-5-minutes", "Time": "2026-11-26T02:00:00Z",
         "Message": ""}
CONTEXT = {"time_limit_in_ms": 60_000, "request_id": "reliability-sweep"}
MINUTE_MS = 60_000
# What a client may be told when something is down (README, "Errors").  Anything else
# in a 5xx (INTERNAL_ERROR above all) is a defect.
ALLOWED_5XX = {502: {"WECHATPAY_SYSTEM_ERROR", "WECHATPAY_UNREACHABLE"}, 503: {"STORE_UNAVAILABLE"}}
PAYMENT_FIELDS = {"timeStamp", "nonceStr", "package", "signType", "paySign"}


# --- the stack --------------------------------------------------------------------------

class Client:
    """The mini-program's side: HTTP to `prepare` through the local gateway."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def create(self, code: str, items, key: str | None = None) -> Reply:
        body = {"code": code, "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items]}
        if key is not None:
            body["idempotencyKey"] = key
        return Reply.of(self._session().post(f"{self.base}/prepare/orders", json=body, timeout=30))

    def status(self, out_trade_no: str, token: str) -> Reply:
        return Reply.of(self._session().get(f"{self.base}/prepare/orders/{out_trade_no}",
                                            headers={"X-Order-Token": token}, timeout=30))


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    body: object

    @classmethod
    def of(cls, response: requests.Response) -> Reply:
        try:
            body = response.json()
        except ValueError:
            body = None
        return cls(response.status_code, response.text, body)

    def error_code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


@dataclass
class Stack:
    simulator: object
    store: MongoOrderStore
    client: Client
    reconcile: object
    callback_url: str
    mongo: object = None   # the MongoServer the functions use, when the test may stop it

    def create_orders(self, carts, workers: int = 8) -> list[dict]:
        """POST /orders for each (code, items); every one must succeed (no faults yet)."""
        def one(cart):
            reply = self.client.create(*cart)
            assert reply.status == 200, reply.text
            return reply.body

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, carts))

    def sweep(self) -> dict:
        result = self.reconcile(TIMER, CONTEXT)
        assert result["ok"] is True, result
        return result["sweep"]

    def age(self, out_trade_no: str, *, created_ms_ago: int, expired_ms_ago: int | None = None) -> None:
        """Time passes for one order (the sweep looks at createTime and expireTime)."""
        now = self.store.clock()
        fields = {"createTime": now - created_ms_ago}
        if expired_ms_ago is not None:
            fields["expireTime"] = now - expired_ms_ago
        assert self.store.update_order_fields(out_trade_no, fields) is not None


def _products(store) -> None:
    for sku, name, price in CATALOG:
        store.upsert_product(sku, name, price)


@pytest.fixture
def stack(live_stack, env_store):
    """prepare + callback behind the gateway, reconcile, the simulator, the shared nx-27017."""
    _products(env_store)
    return Stack(live_stack.simulator, env_store, Client(live_stack.gateway.url), load_function("reconcile"),
                 f"{live_stack.gateway.url}/callback")


@pytest.fixture
def outage_stack(live_stack, private_mongo, function_env, db_name):
    """The same stack on a MongoDB of the test's own, which the test stops and restarts.

    Short server-selection timeouts, so that while it is down every operation fails fast
    with STORE_UNAVAILABLE (503) instead of holding a request for 3 s.
    """
    uri = f"{private_mongo.uri}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500"
    function_env(MONGODB_URI=uri)
    store = MongoOrderStore(uri, db_name)
    _products(store)
    yield Stack(live_stack.simulator, store, Client(live_stack.gateway.url), load_function("reconcile"),
                f"{live_stack.gateway.url}/callback", mongo=private_mongo)
    store.close()


def _cart(rng: random.Random) -> list[tuple[str, int]]:
    skus = rng.sample([sku for sku, _, _ in CATALOG], rng.randint(1, 3))
    return [(sku, rng.randint(1, 4)) for sku in skus]


def _facts(store, out_trade_no: str) -> Counter:
    """How many times each once-only fact of an order was written (by key), and by type."""
    counts: Counter = Counter()
    for event in store.events_of(out_trade_no):
        counts[("key", event["key"])] += 1
        counts[event["type"]] += 1
    return counts


def _duplicate_keys(facts: Counter) -> int:
    return sum(n - 1 for name, n in facts.items() if isinstance(name, tuple) and n > 1)


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Bounded wait: True as soon as `predicate()` holds, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _forged_success(sim_order: dict, rng: random.Random) -> dict:
    """The resource a forger would like us to believe: "this order was paid"."""
    amount = dict(sim_order["amount"], payer_total=sim_order["amount"]["total"])
    return {"appid": sim_order["appid"], "mchid": sim_order["mchid"], "out_trade_no": sim_order["out_trade_no"],
            "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
            "transaction_id": "4200000" + "".join(rng.choice("0123456789") for _ in range(21)),
            "bank_type": "OTHERS", "attach": "", "payer": dict(sim_order["payer"]), "amount": amount,
            "success_time": datetime.now(CHINA).isoformat(timespec="seconds")}


# --- 1. notification storm ------------------------------------------------------------

FORGERIES = {"body": 401, "signature": 401, "serial": 401, "timestamp_old": 401, "timestamp_future": 401,
             "probe": 401, "ciphertext": 400}


def test_notification_storm(outage_stack, summary):
    """300 orders; 240 paid at WeChat Pay and notified with concurrent copies, delays that
    scramble the order, legitimate re-sends and forgeries, while the store is killed and
    restarted.  WeChat's retries (schedule x 0.002) must land every payment exactly once;
    no forgery may change anything, even while the store is down."""
    seed = 1126
    rng = random.Random(seed)
    sim, store = outage_stack.simulator, outage_stack.store
    sim.configure(retry_factor=0.002)  # 15 s -> 30 ms, 3 min -> 0.36 s, 30 min -> 3.6 s ...

    carts = [(f"test-storm{i % 60}", _cart(rng)) for i in range(300)]
    created = outage_stack.create_orders(carts)
    numbers = [order["outTradeNo"] for order in created]
    assert len(set(numbers)) == 300
    paid = set(rng.sample(numbers, 240))
    unpaid = [n for n in numbers if n not in paid]
    untouched_before = {n: store.get_order(n) for n in unpaid}

    # The plan: pays in a scrambled order, forgeries against paid and unpaid orders,
    # re-sends of paid orders' notifications (new ids, same transaction).
    pay_order = list(paid)
    rng.shuffle(pay_order)
    forged_targets = [rng.choice(unpaid if rng.random() < 0.6 else numbers) for _ in range(84)]
    forge_kinds = [kind for kind in FORGERIES for _ in range(12)]
    rng.shuffle(forge_kinds)
    plan: list[tuple] = [("pay", n) for n in pay_order]
    plan += [("forge", target, kind) for target, kind in zip(forged_targets, forge_kinds, strict=True)]
    rng.shuffle(plan)
    # Re-sends only make sense after the payment: each goes some steps after its pay.
    for number in rng.sample(pay_order, 60):
        plan.insert(plan.index(("pay", number)) + rng.randint(1, 40), ("resend", number))
    kill_at, restart_after = len(plan) // 2, len(plan) // 2 + 40

    notifications = copies = forged_results = 0
    forged: list[tuple[str, str, list[int]]] = []
    started = time.monotonic()
    for step, action in enumerate(plan):
        if step == kill_at:
            outage_stack.mongo.stop()
        if step == restart_after:
            # Keep it down until WeChat Pay has been told "503" at least once.
            assert _wait_for(lambda: any(d["status"] == 503 for d in sim.deliveries()), 30)
            outage_stack.mongo.start()
        kind, number = action[0], action[1]
        if kind == "pay":
            duplicates = rng.choice((0, 0, 0, 1, 1, 2, 3))
            sim.pay(number, duplicates=duplicates, delay_ms=rng.randint(0, 1500))
            notifications, copies = notifications + 1, copies + 1 + duplicates
        elif kind == "resend":
            duplicates = rng.randint(0, 1)
            sim.notify(out_trade_no=number, retry=True, duplicates=duplicates, delay_ms=rng.randint(0, 800))
            notifications, copies = notifications + 1, copies + 1 + duplicates
        else:
            tamper = action[2]
            resource = _forged_success(sim.order(number), rng)
            options = {"probe": True} if tamper == "probe" else {"tamper": tamper}
            result = sim.notify(url=outage_stack.callback_url, out_trade_no=number, resource=resource,
                                retry=False, duplicates=rng.randint(0, 2), **options)
            forged.append((number, tamper, [d["status"] for d in result["deliveries"]]))
            forged_results += len(result["deliveries"])
        time.sleep(0.015)  # a storm over seconds, not one burst no listen backlog could take
    assert sim.wait_idle(100), "notifications still pending after WeChat's compressed schedule"
    storm_s = time.monotonic() - started

    # --- what the merchant sees -----------------------------------------------------
    sim_orders = {o["out_trade_no"]: o for o in sim.orders()}
    lost = doubled = 0
    via: Counter = Counter()
    wrong = []   # anything else that is not as it must be, with the evidence
    for number in numbers:
        order, facts, at_wechat = store.get_order(number), _facts(store, number), sim_orders[number]
        doubled += max(facts["order.paid"] - 1, 0) + _duplicate_keys(facts)
        if number in paid:
            if order["payStatus"] != st.SUCCESS:
                lost += 1
                continue
            via[order["paidVia"]] += 1
            if not (at_wechat["trade_state"] == "SUCCESS" and facts["order.paid"] == 1
                    and order["transactionId"] == at_wechat["transaction_id"]
                    and order["refundableFee"] == order["totalFee"] == at_wechat["amount"]["total"]):
                wrong.append((number, order, dict(facts)))
        elif not (at_wechat["trade_state"] == "NOTPAY" and facts["order.paid"] == 0
                  and order == untouched_before[number]):
            wrong.append((number, order, dict(facts)))   # a forgery changed something

    deliveries = sim.deliveries()
    legit = [d for d in deliveries if not d["tamper"] and not d["probe"]]
    statuses = Counter(d["status"] for d in legit)
    last_attempt: dict[tuple, dict] = {}
    for d in legit:
        if (d["id"], d["copy"]) not in last_attempt or d["attempt"] > last_attempt[(d["id"], d["copy"])]["attempt"]:
            last_attempt[(d["id"], d["copy"])] = d
    unacknowledged = [d for d in last_attempt.values() if d["status"] != 204]
    forged_statuses = Counter(s for _, _, results in forged for s in results)
    line = summary(
        load=f"300 orders via POST /orders, 240 paid; {notifications} notifications ({copies} concurrent copies, "
             f"{len(legit)} deliveries) over {storm_s:.0f}s; seed {seed}",
        faults=f"{len(forged)} forgeries x {sorted(FORGERIES)} ({forged_results} deliveries); "
               f"1 store kill ({statuses[503]} answers 503); {statuses[None]} attempts unanswered in 5 s or reset; "
               "retry_factor=0.002",
        outcomes=f"{sum(via.values())} SUCCESS ({dict(via)}), {len(unpaid)} NOTPAY untouched; "
                 f"forged answered {dict(forged_statuses)}; anomalies {len(store.list_anomalies())}",
        lost=lost, doubled=doubled)
    print(line)
    assert lost == 0 and doubled == 0, line
    assert wrong == [], wrong[:3]
    assert unacknowledged == [], unacknowledged[:3]
    assert set(statuses) <= {204, 503, None}, statuses
    assert statuses[503] > 0  # the outage was real: WeChat Pay had to retry
    assert via == {"notification": 240}
    # Every forgery refused for what it is (or, under the storm, not answered within
    # WeChat's 5 s: no answer is no acknowledgement either); never a 2xx.
    for number, tamper, results in forged:
        assert results and set(results) <= {FORGERIES[tamper], None}, (number, tamper, results)
    answered = Counter(tamper for _, tamper, results in forged if FORGERIES[tamper] in results)
    assert set(answered) == set(FORGERIES), answered
    assert store.list_anomalies() == []
    assert store.count_events("order.paid") == 240


# --- 2. lost callbacks plus expiry --------------------------------------------------------

# What may have settled an order of each kind (`paidVia`).
SETTLED_BY = {"normal": {"notification", "query"}, "lost": {"query", "sweep"}, "young": {"query"},
              "late": {"query", "sweep"}}
AFTER = {st.NOTPAY: {st.NOTPAY, st.SUCCESS, st.CLOSED}, st.SUCCESS: {st.SUCCESS}, st.CLOSED: {st.CLOSED}}


def test_lost_callbacks_and_expiry(stack, summary):
    """Paid orders whose notification is lost (old enough for the sweep, or too young for
    it), orders that expire unpaid, orders paid just before their expiry with the
    notification lost, and orders paid normally; two sweeps race in every round while
    clients poll their orders.  Each order ends paid once or closed once, never both."""
    seed = 2611
    rng = random.Random(seed)
    sim, store = stack.simulator, stack.store
    kinds = ["normal"] * 12 + ["lost"] * 12 + ["young"] * 6 + ["expired"] * 12 + ["late"] * 8
    rng.shuffle(kinds)
    created = stack.create_orders([(f"test-exp{i}", _cart(rng)) for i in range(len(kinds))])
    kind_of = {order["outTradeNo"]: kind for kind, order in zip(kinds, created, strict=True)}
    tokens = {order["outTradeNo"]: order["orderToken"] for order in created}

    # What happens at WeChat Pay, and the time that passes (the store's clock fields).
    for number, kind in kind_of.items():
        if kind == "normal":
            sim.pay(number, delay_ms=rng.randint(0, 1500))
        elif kind in ("lost", "young", "late"):
            sim.pay(number, notify="drop")
        if kind == "lost":
            stack.age(number, created_ms_ago=rng.randint(4, 25) * MINUTE_MS)
        elif kind in ("expired", "late"):
            stack.age(number, created_ms_ago=(30 + rng.randint(1, 20)) * MINUTE_MS,
                      expired_ms_ago=rng.randint(1, 600) * 1000)
        if kind == "expired":
            sim.expire(number)  # WeChat Pay refuses to take the money from now on

    # Clients poll while the sweeps race: four pollers, each order polled by two of them.
    done = threading.Event()
    polls: dict[tuple[int, str], list[str]] = defaultdict(list)
    bad_polls: list[Reply] = []
    numbers = list(kind_of)

    def poller(index: int) -> None:
        mine = [n for i, n in enumerate(numbers) if i % 2 == index % 2]
        order = random.Random(seed + index)
        while True:
            final_pass = done.is_set()
            order.shuffle(mine)
            for number in mine:
                reply = stack.client.status(number, tokens[number])
                if reply.status != 200 or not isinstance(reply.body, dict) or reply.body.get("outTradeNo") != number:
                    bad_polls.append(reply)
                    continue
                polls[(index, number)].append(reply.body["payStatus"])
            if final_pass:
                return

    rounds, reports = 4, []
    with ThreadPoolExecutor(max_workers=4) as pollers:
        polling = [pollers.submit(poller, i) for i in range(4)]
        for _ in range(rounds):
            barrier = threading.Barrier(2)

            def racing_sweep(_, barrier=barrier):
                barrier.wait()
                return stack.sweep()

            with ThreadPoolExecutor(max_workers=2) as sweeps:
                reports.extend(sweeps.map(racing_sweep, range(2)))
        assert sim.wait_idle(30)
        done.set()
        for future in polling:
            future.result()
    last = stack.sweep()

    # --- what the merchant sees -----------------------------------------------------
    sim_orders = {o["out_trade_no"]: o for o in sim.orders()}
    lost = doubled = 0
    via: Counter = Counter()
    outcome: Counter = Counter()
    wrong = []   # anything else that is not as it must be, with the evidence
    for number, kind in kind_of.items():
        order, facts, at_wechat = store.get_order(number), _facts(store, number), sim_orders[number]
        doubled += (max(facts["order.paid"] - 1, 0) + max(facts["order.closed"] - 1, 0)
                    + (facts["order.paid"] > 0 and facts["order.closed"] > 0) + _duplicate_keys(facts))
        outcome[(kind, order["payStatus"])] += 1
        if kind == "expired":
            if not (order["payStatus"] == st.CLOSED and facts["order.closed"] == 1 and facts["order.paid"] == 0
                    and at_wechat["trade_state"] == "CLOSED"):
                wrong.append((kind, number, order["payStatus"], dict(facts), at_wechat["trade_state"]))
            continue
        if order["payStatus"] != st.SUCCESS:
            lost += 1
            continue
        via[order["paidVia"]] += 1
        if not (at_wechat["trade_state"] == "SUCCESS" and facts["order.paid"] == 1 and facts["order.closed"] == 0
                and order["transactionId"] == at_wechat["transaction_id"]
                and order["paidVia"] in SETTLED_BY[kind]):
            wrong.append((kind, number, order["paidVia"], dict(facts), at_wechat["trade_state"]))

    sweep_counts: Counter = Counter()
    for report in reports:
        for step in ("close_expired", "recover_lost"):
            for name, count in report[step].items():
                sweep_counts[(step, name)] += count
    errors = [r for r in reports + [last] for counts in r.values() for name in counts if name.startswith("error")]
    wrong_order = {key: seen for key, seen in polls.items()
                   if any(b not in AFTER[a] for a, b in zip(seen, seen[1:], strict=False))}
    final_differs = {key: seen[-1] for key, seen in polls.items()
                     if seen[-1] != store.get_order(key[1])["payStatus"]}
    line = summary(
        load=f"{len(kind_of)} orders via POST /orders ({dict(Counter(kinds))}); {rounds} rounds x 2 racing "
             f"sweeps; 4 clients polling, {sum(len(s) for s in polls.values())} GETs; seed {seed}",
        faults=f"{kinds.count('lost') + kinds.count('young') + kinds.count('late')} notifications dropped, "
               f"{kinds.count('expired')} orders expired unpaid, {kinds.count('late')} paid just before expiry",
        outcomes=f"{sum(via.values())} SUCCESS (paidVia {dict(via)}), {outcome[('expired', st.CLOSED)]} CLOSED; "
                 f"sweeps {dict(sorted((f'{s}.{n}', c) for (s, n), c in sweep_counts.items()))}",
        lost=lost, doubled=doubled)
    print(line)
    assert lost == 0 and doubled == 0, line
    assert wrong == [], wrong[:3]
    assert errors == [] and bad_polls == [], (errors, bad_polls[:3])
    assert wrong_order == {} and final_differs == {}, (wrong_order, final_differs)
    assert {n for (_, n) in polls} == set(kind_of)
    # Exactly one of the racing sweeps closed each expired order; every order the
    # sweeps reported paid is one whose paidVia says so.
    assert sweep_counts[("close_expired", "closed")] == kinds.count("expired"), sweep_counts
    assert sweep_counts[("close_expired", "paid")] + sweep_counts[("recover_lost", "paid")] == via["sweep"]
    assert last["close_expired"] == {} and last["recover_lost"] == {}, last


# --- 3. prepare under WeChat Pay and store faults -------------------------------------------

JSAPI = "/v3/pay/transactions/jsapi"
DELAY_MS = 1500        # a prepay WeChat Pay answers too late ...
READ_TIMEOUT_S = 1.0   # ... for prepare's client, which gives up after this long


@dataclass
class Intent:
    """One cart a user wants to pay for; `taps` clients send it at once (a double tap)."""

    code: str
    items: list
    key: str | None
    taps: int = 1
    replies: list = field(default_factory=list)


def test_prepare_under_faults(outage_stack, summary):
    """Many carts (with and without idempotencyKey, some sent twice at once, retried after
    a failure) while WeChat Pay's prepay fails at random (500 SYSTEM_ERROR, dropped
    connections, answers after the client's read timeout) and the store is killed twice.
    Nothing may be payable at WeChat Pay without a record here; every 200 is a payable
    order; the sweep closes every failed prepay at WeChat Pay (or settles it if paid)."""
    seed = 3303
    rng = random.Random(seed)
    sim, store, mongo = outage_stack.simulator, outage_stack.store, outage_stack.mongo
    # prepare's WeChat Pay client, as built for this instance, with a 1 s read timeout
    # (the constructor's read_timeout; the default 8 s would make the delay faults slow).
    wechatpay = runtime.instance("prepare").wechatpay
    wechatpay.read_timeout = READ_TIMEOUT_S

    intents = ([Intent(f"test-f{i % 25}", _cart(rng), None) for i in range(60)]
               + [Intent(f"test-f{i % 25}", _cart(rng), f"cart-{i}") for i in range(50)]
               + [Intent(f"test-f{i % 25}", _cart(rng), f"tap-{i}", taps=2) for i in range(25)])
    rng.shuffle(intents)
    attempts = Counter()
    lock = threading.Lock()

    def send(intent: Intent) -> None:
        """A client: on 409 CREATE_CONTENDED, 502 or 503 it tries again (same key), 4 times at most."""
        for _ in range(4):
            with lock:
                attempts["sent"] += 1
            reply = outage_stack.client.create(intent.code, intent.items, intent.key)
            with lock:
                intent.replies.append(reply)
            if reply.status not in (409, 502, 503):
                return
            time.sleep(0.02)

    def client(intent: Intent) -> None:
        if intent.taps == 1:
            send(intent)
            return
        taps = [threading.Thread(target=send, args=(intent,)) for _ in range(intent.taps)]
        for tap in taps:
            tap.start()
        for tap in taps:
            tap.join()

    stop = threading.Event()
    injected: Counter = Counter()

    def inject_faults() -> None:
        """A fault every 2..8 requests sent (by count, not time: the same mix on any machine)."""
        faults = random.Random(seed + 1)
        mark = 0
        while True:
            mark += faults.randint(2, 8)
            while attempts["sent"] < mark:
                if stop.wait(0.005):
                    return
            pick = faults.random()
            if pick < 0.5:
                sim.inject_fault(path=JSAPI, status=500, body={"code": "SYSTEM_ERROR", "message": "系统繁忙"},
                                 count=faults.randint(1, 2))
                injected["500"] += 1
            elif pick < 0.85:
                sim.inject_fault(path=JSAPI, disconnect=True, count=faults.randint(1, 2))
                injected["disconnect"] += 1
            else:
                sim.inject_fault(path=JSAPI, delay_ms=DELAY_MS, count=1)
                injected["delay"] += 1

    kills: list[float] = []

    def kill_store() -> None:
        """Two kills, at random points of the load (counted in requests sent)."""
        killer = random.Random(seed + 2)
        for low, high in ((20, 60), (90, 140)):
            threshold = killer.randint(low, high)
            while attempts["sent"] < threshold:
                if stop.wait(0.01):
                    return
            mongo.stop()
            kills.append(killer.uniform(0.7, 1.5))
            time.sleep(kills[-1])
            mongo.start()

    background = [threading.Thread(target=inject_faults), threading.Thread(target=kill_store)]
    for thread in background:
        thread.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(client, intents))
    finally:
        stop.set()
        for thread in background:
            thread.join()
        mongo.start()  # (no-op when it is running)
    sim.clear_faults()
    # The double tap against a slow WeChat Pay, made certain: one tap's prepay is answered
    # after its read timeout (502 UNREACHABLE), the other's promptly (200).  The order
    # the 200 names must stay payable; the slow tap's retry must get that same order.
    slow_taps = [Intent(f"test-slow{i}", _cart(rng), f"slow-{i}", taps=2) for i in range(4)]
    for intent in slow_taps:
        sim.inject_fault(path=JSAPI, delay_ms=DELAY_MS, count=1)
        injected["delay (double tap)"] += 1
        client(intent)
    sim.clear_faults()
    intents += slow_taps
    load_s = time.monotonic() - started
    # A delayed prepay is still asleep in the simulator for up to DELAY_MS after its
    # client gave up; let it land before looking (it may create the order at WeChat Pay).
    time.sleep(DELAY_MS / 1000 + 0.5)

    replies = [reply for intent in intents for reply in intent.replies]
    ok = [reply for reply in replies if reply.status == 200]
    answers = Counter(reply.status if reply.status == 200 else f"{reply.status} {reply.error_code()}"
                      for reply in replies)
    # No client saw a stack trace, or an error the README does not promise.
    unexpected = [r for r in replies if "Traceback" in r.text or 'File "' in r.text
                  or r.status not in (200, 409, 502, 503)
                  or (r.status >= 500 and r.error_code() not in ALLOWED_5XX[r.status])
                  or (r.status == 409 and r.error_code() != "CREATE_CONTENDED")]
    # Every 200 carries the wx.requestPayment parameters of a NOTPAY order.
    bad_ok = [r.body for r in ok if r.body["payStatus"] != st.NOTPAY or not isinstance(r.body["payment"], dict)
              or set(r.body["payment"]) != PAYMENT_FIELDS
              or not r.body["payment"]["package"].startswith("prepay_id=")]
    sim_orders = {o["out_trade_no"]: o for o in sim.orders()}
    unrecorded = [n for n in sim_orders if store.find_order(n) is None]

    # The money side: a few answered orders are paid (notified), and so are a few failed
    # prepays that did land at WeChat Pay (notification lost: only the sweep can tell).
    before = {o["outTradeNo"]: o for o in store.list_orders(limit=10_000)}
    failed = [n for n, o in before.items() if o["payStatus"] == st.PAYERROR]
    landed = [n for n in failed if n in sim_orders]
    answered = sorted({r.body["outTradeNo"] for r in ok})
    for number in rng.sample(answered, min(4, len(answered))):
        sim.pay(number)
    for number in landed[:3]:
        sim.pay(number, notify="drop")
    assert sim.wait_idle(30)
    # The final sweep.  It closes at most 100 failed prepays per run (README), so it runs
    # again while it still finds some.
    reports = [outage_stack.sweep()]
    while reports[-1]["close_failed"] and len(reports) < 5:
        reports.append(outage_stack.sweep())
    closed_by_sweep = Counter()
    for report in reports:
        closed_by_sweep.update(report["close_failed"])
    errors = [counts for report in reports for counts in report.values() if any(k.startswith("error") for k in counts)]

    after = {o["outTradeNo"]: o for o in store.list_orders(limit=10_000)}
    sim_orders = {o["out_trade_no"]: o for o in sim.orders()}

    def at_wechat(number):
        return sim_orders[number]["trade_state"] if number in sim_orders else None

    lost = doubled = 0
    for number, order in after.items():
        facts = _facts(store, number)
        doubled += (max(facts["order.paid"] - 1, 0) + max(facts["order.closed"] - 1, 0)
                    + (facts["order.paid"] > 0 and facts["order.closed"] > 0) + _duplicate_keys(facts))
        lost += at_wechat(number) == "SUCCESS" and order["payStatus"] != st.SUCCESS
    # One cart, one payable order: every 200 for the same user and key is the same order.
    by_key = defaultdict(set)
    for intent in intents:
        if intent.key is not None:
            by_key[(intent.code, intent.key)].update(r.body["outTradeNo"] for r in intent.replies if r.status == 200)
    doubled += sum(max(len(numbers) - 1, 0) for numbers in by_key.values())

    # Each failed prepay is closed here and at WeChat Pay (or never reached it), or it
    # was paid there after all and is settled.
    not_closed = [(n, after[n]["payStatus"], at_wechat(n)) for n in failed
                  if (after[n]["payStatus"], at_wechat(n)) not in ((st.CLOSED, "CLOSED"), (st.CLOSED, None),
                                                                   (st.SUCCESS, "SUCCESS"))]
    # Whatever WeChat Pay would still take money for is an unpaid order here.
    payable_elsewhere = [(n, after[n]["payStatus"]) for n, o in sim_orders.items()
                         if o["trade_state"] == "NOTPAY" and after[n]["payStatus"] != st.NOTPAY]
    # Each answered order is still payable (or paid), with the prepay id its client got.
    answered_unpayable = [(r.body["outTradeNo"], after[r.body["outTradeNo"]]["payStatus"]) for r in ok
                          if after[r.body["outTradeNo"]]["payStatus"] not in (st.NOTPAY, st.SUCCESS)
                          or r.body["payment"]["package"].removeprefix("prepay_id=")
                          not in sim_orders[r.body["outTradeNo"]]["prepay_ids"]]
    line = summary(
        load=f"{len(intents)} carts ({sum(i.key is None for i in intents)} without key, "
             f"{sum(i.taps == 2 for i in intents)} double-tapped), {len(replies)} POST /orders in {load_s:.0f}s; "
             f"{len(after)} orders stored, {len(sim_orders)} at WeChat Pay; seed {seed}",
        faults=f"prepay faults {dict(injected)} (delay {DELAY_MS} ms > read timeout {READ_TIMEOUT_S:g} s); "
               f"store killed {len(kills)}x ({', '.join(f'{k:.1f}s' for k in kills)})",
        outcomes=f"answers {dict(sorted(answers.items(), key=str))}; {len(failed)} PAYERROR, {len(landed)} of "
                 f"them at WeChat Pay ({min(3, len(landed))} paid there); {len(reports)} sweeps: "
                 f"{dict(closed_by_sweep)}",
        lost=lost, doubled=doubled)
    print(line)
    assert lost == 0 and doubled == 0, line
    assert unexpected == [] and bad_ok == [], (unexpected[:3], bad_ok[:3])
    assert unrecorded == [], unrecorded
    assert not_closed == [] and payable_elsewhere == [], (not_closed, payable_elsewhere)
    assert answered_unpayable == [], answered_unpayable
    assert errors == [], errors
    assert [n for n, o in after.items() if o["payStatus"] == st.PAYERROR] == []


# --- 4. refund race ------------------------------------------------------------------------

def test_refund_race(stack, summary):
    """Six paid orders; for each, eight concurrent refund requests (reconcile's refund
    action) asking together for more than was paid.  Reservations never exceed the
    total, WeChat Pay holds exactly the refunds we accepted, and once the bank finishes
    them (some CLOSED, notifications repeated) each success is counted once."""
    seed = 4404
    rng = random.Random(seed)
    sim, store = stack.simulator, stack.store
    created = stack.create_orders([(f"test-r{i}", _cart(rng)) for i in range(6)])
    numbers = [order["outTradeNo"] for order in created]
    totals = {order["outTradeNo"]: order["totalFee"] for order in created}
    for number in numbers:
        sim.pay(number)
    assert sim.wait_idle(30)
    assert all(store.get_order(n)["payStatus"] == st.SUCCESS for n in numbers)

    requests_by_order = {}
    for number in numbers:
        total = totals[number]
        # Eight amounts of total/6 .. total/2 (at least 1 fen): together more than the total.
        amounts = [rng.randint(max(total // 6, 1), max(total // 2, 1)) for _ in range(8)]
        amounts[0] = max(amounts[0], total - sum(amounts[1:]) + 1)  # (small totals round down)
        requests_by_order[number] = [(f"R{number[-10:]}{i}", amount) for i, amount in enumerate(amounts)]
    barrier = threading.Barrier(len(numbers) * 8)

    def refund(job):
        number, (out_refund_no, amount) = job
        barrier.wait()
        result = stack.reconcile({"action": "refund", "outTradeNo": number, "amount": amount,
                                  "outRefundNo": out_refund_no, "reason": "race"}, CONTEXT)
        return number, out_refund_no, amount, result

    jobs = [(number, request) for number, reqs in requests_by_order.items() for request in reqs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(refund, jobs))

    accepted = defaultdict(dict)
    refused = Counter()
    odd = []
    for number, out_refund_no, amount, result in results:
        if result["ok"]:
            accepted[number][out_refund_no] = amount
            if result["refund"]["status"] != "PROCESSING" or result["refund"]["amount"] != amount:
                odd.append(result)
        elif result["error"]["code"] == "REFUND_EXCEEDS_PAID":
            refused[number] += 1
        else:
            odd.append(result)
    # Repeating an accepted request is the same refund, never a second reservation.
    for number in numbers:
        for out_refund_no, amount in list(accepted[number].items())[:1]:
            again = stack.reconcile({"action": "refund", "outTradeNo": number, "amount": amount,
                                     "outRefundNo": out_refund_no, "reason": "race"}, CONTEXT)
            if not (again["ok"] and again["refund"]["outRefundNo"] == out_refund_no):
                odd.append(again)

    def sim_refunds(number):
        return {r["out_refund_no"]: r for r in sim.refunds() if r["out_trade_no"] == number}

    broken = []
    for number in numbers:
        order, total, at_wechat = store.get_order(number), totals[number], sim_refunds(number)
        ours = {r["outRefundNo"]: r["amount"] for r in store.refunds_of(number) if r["status"] in ("PROCESSING",
                                                                                                "SUCCESS")}
        if not (order["refundedFee"] + order["refundingFee"] <= total
                and order["refundableFee"] + order["refundingFee"] + order["refundedFee"] == total
                and order["refundingFee"] == sum(accepted[number].values())
                and sum(r["amount"]["refund"] for r in at_wechat.values()) <= total
                and {n: r["amount"]["refund"] for n, r in at_wechat.items()} == ours == accepted[number]
                and len(accepted[number]) + refused[number] == 8):
            broken.append((number, total, order["refundingFee"], order["refundableFee"], ours, at_wechat.keys()))

    # The bank finishes them: most succeed, one per order (when it has two or more) is
    # closed; every notification is then sent twice more, concurrently.
    succeeded = defaultdict(dict)
    for number in numbers:
        refunds = list(accepted[number].items())
        closing = {refunds[-1][0]} if len(refunds) > 1 else set()
        for out_refund_no, amount in refunds:
            status = "CLOSED" if out_refund_no in closing else "SUCCESS"
            sim.complete_refund(out_refund_no, status=status)
            sim.notify(out_refund_no=out_refund_no, duplicates=1, retry=True, delay_ms=rng.randint(0, 300))
            if status == "SUCCESS":
                succeeded[number][out_refund_no] = amount
    assert sim.wait_idle(30)

    lost = doubled = 0
    for number in numbers:
        order, total = store.get_order(number), totals[number]
        records = {r["outRefundNo"]: r for r in store.refunds_of(number)}
        events = Counter(e["outRefundNo"] for e in store.events_of(number) if e["type"] == "refund.succeeded")
        at_wechat = {n: r for n, r in sim_refunds(number).items() if r["status"] == "SUCCESS"}
        lost += sum(1 for n in at_wechat if records.get(n, {}).get("status") != "SUCCESS" or events[n] == 0)
        # A success counted twice, WeChat Pay refunding more than was paid, or more
        # refunded here than WeChat Pay paid back.
        doubled += sum(count - 1 for count in events.values() if count > 1)
        doubled += int(sum(r["amount"]["refund"] for r in sim_refunds(number).values()) > total)
        doubled += int(order["refundedFee"] > sum(r["amount"]["refund"] for r in at_wechat.values()))
        if not (order["refundedFee"] == sum(succeeded[number].values())
                == sum(r["amount"]["refund"] for r in at_wechat.values())
                and order["refundingFee"] == 0 and order["refundableFee"] == total - order["refundedFee"]
                and order["payStatus"] == st.REFUND
                and set(events) == set(succeeded[number]) == set(at_wechat)
                and all(records[n]["status"] == "CLOSED" for n in accepted[number] if n not in succeeded[number])
                and all(records[n]["status"] == "SUCCESS" for n in succeeded[number])):
            broken.append((number, "after", order["refundedFee"], order["refundingFee"], dict(events)))

    accepted_count = sum(len(a) for a in accepted.values())
    line = summary(
        load=f"{len(numbers)} paid orders (totals {sorted(totals.values())} fen) x 8 concurrent refund requests "
             f"asking {sum(a for reqs in requests_by_order.values() for _, a in reqs)} fen in all; seed {seed}",
        faults="requests over the total, racing; each refund notification sent 3 times (2 concurrent copies "
               "+ the completion)",
        outcomes=f"{accepted_count} accepted, {sum(refused.values())} REFUND_EXCEEDS_PAID; "
                 f"{sum(len(s) for s in succeeded.values())} SUCCESS, "
                 f"{accepted_count - sum(len(s) for s in succeeded.values())} CLOSED; refunded "
                 f"{sum(store.get_order(n)['refundedFee'] for n in numbers)} fen",
        lost=lost, doubled=doubled)
    print(line)
    assert lost == 0 and doubled == 0, line
    assert odd == [] and broken == [], (odd[:3], broken)
    assert store.list_anomalies() == []
