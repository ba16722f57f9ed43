"""`make bench`: the functions measured as SCF runs them, as ratios against baselines in one run.

1. Cold start, spawn to first successful reply, each function package unpacked read-only
   and run by Python 3.10 with `-B -S` in a clean environment (bench/scf.py), against
   - the baseline: the article's two functions ported naively (bench/baseline/), packaged
     the naive way (pip install --target, no bytecode);
   - the floor: the same interpreter importing pymongo, cryptography's RSA and AES-GCM and
     http.client from a compiled tree, plus one MongoDB ping.
   Median of 15 runs each, the cases alternated.  Also the interpreter's own start, the
   share of the cold start spent importing, and the peak RSS after the first reply.
2. Warm latency per route over 2,000 requests (p50, p99), against the same store and
   simulator round trips done bare: the difference is our own overhead per request.
3. Callback throughput with 8 concurrent senders and 20% duplicate deliveries, against
   the bare work at the same concurrency.
4. Two micro-benchmarks: notification verification against wechatpayv3's, and the
   store's compare-and-set writes against the article's unconditional update.
5. Fulfilment deliveries per minute: one sweep's relay delivering pending facts to a
   local receiver, against the bare signed POSTs to the same receiver; then 2 and 4
   sweeps in parallel (the leases keep each fact to one of them), with a receiver that
   takes 20 ms per delivery as a shop's would.  Each sweep is its own process, as each
   SCF instance is.
The store is nx-27017 (a MongoDB wire server on SQLite) and WeChat Pay is the simulator,
both on loopback: absolute times say little about production, the ratios are the point.
Writes bench/results/latest.md and bench/results/chart.png.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scf  # noqa: E402
from devtools.package import PackageError, find_python310  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CHILDREN = ROOT / "bench" / "children"
COLD_RUNS = 15
WARM_REQUESTS = 2000
WARMUP = 50
SENDERS = 8
BURST = 800  # fresh orders in the throughput run (+ 1 duplicate per 4 = 1,000 deliveries)
GOALS = {"baseline": 0.45, "floor": 1.3, "overhead_ms": 1.0, "throughput": 0.8}
DELIVERIES = 400          # facts per delivery run
SHOP_DELAY_MS = 20        # the receiver's own work per delivery in the scaling runs


def child(name: str) -> str:
    return (CHILDREN / f"{name}.py").read_text()


# --- the stage: store, simulator, keys -------------------------------------------------------

class Stage:
    def __init__(self, folder: Path):
        from devtools.mongo_server import MongoServer
        from devtools.sim_keys import ephemeral
        from devtools.wechatpay_simulator import Simulator
        from shared.store.mongo import MongoOrderStore

        self.keys = ephemeral()
        self.mongo = MongoServer(folder / "bench.db", fast=True).start()
        self.simulator = Simulator(self.keys, retry_factor=0.001).start()
        self.environ = {**self.keys.function_environ(self.simulator.url, "https://example.com/callback",
                                                     self.mongo.uri), "MONGODB_DB": "bench"}
        self.store = MongoOrderStore(self.mongo.uri, "bench")
        self.store.upsert_product("A1", "Oolong tea", 1990)

    def configuration(self, role: str) -> dict[str, str]:
        """Only the variables the function reads, as a deployment gives them."""
        from shared.config import OPTIONAL_BY_ROLE, REQUIRED_BY_ROLE

        used = set(REQUIRED_BY_ROLE[role]) | set(OPTIONAL_BY_ROLE[role])
        return {name: value for name, value in self.environ.items() if name in used}

    def paid_order_notification(self) -> dict:
        """A valid notification for an existing paid order (a retry, as WeChat sends many)."""
        from devtools.simulator.notifier import Notifier

        number = f"P{time.time_ns()}"[:32]
        self.store.insert_order({"outTradeNo": number, "openid": "oBench", "appid": self.keys.appid,
                                 "mchid": self.keys.mchid, "items": [], "totalFee": 1990, "description": "tea",
                                 "expireTime": 4_102_444_800_000})
        transaction_id = f"4200{time.time_ns()}"[:28]
        self.store.transition(number, "SUCCESS", fields={"transactionId": transaction_id, "refundableFee": 1990})
        resource = {"appid": self.keys.appid, "mchid": self.keys.mchid, "out_trade_no": number,
                    "transaction_id": transaction_id, "trade_state": "SUCCESS", "trade_type": "JSAPI",
                    "success_time": "2026-11-26T12:00:00+08:00", "payer": {"openid": "oBench"},
                    "amount": {"total": 1990, "payer_total": 1990, "currency": "CNY"}}
        notifier = Notifier(self.keys, time.time, None)
        sent = notifier.build(url="http://127.0.0.1:9/", event_type="TRANSACTION.SUCCESS", resource=resource)
        headers = {name.lower(): value for name, value in notifier.headers(sent).items()}
        return {"httpMethod": "POST", "path": "/", "headers": headers, "body": sent.body.decode(), "queryString": {}}

    def close(self) -> None:
        self.store.close()
        self.simulator.stop()
        self.mongo.stop()


# --- the packages -----------------------------------------------------------------------------

def naive_package(name: str, work: Path) -> Path:
    """bench/baseline/<name>: pip install --target, no bytecode, as a first port does."""
    folder = work / f"baseline-{name}"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-compile", "--target", str(folder), "--platform", "manylinux2014_x86_64",
                           "--python-version", "3.10", "--implementation", "cp", "--abi", "cp310",
                           "--only-binary=:all:", "-r", str(ROOT / "bench" / "baseline" / "requirements.txt")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"installing the baseline failed:\n{done.stderr[-3000:]}")
    (folder / "index.py").write_text((ROOT / "bench" / "baseline" / name / "index.py").read_text())
    return scf.copy_tree(folder)


def our_package(function: str) -> Path:
    zip_path = ROOT / "dist" / f"{function}.zip"
    if not zip_path.exists():
        raise SystemExit(f"{zip_path} is missing: run `make package` first (make bench does)")
    return scf.unpack(zip_path)


# --- 1. cold start ------------------------------------------------------------------------------

def _succeeded(run):
    def checked():
        seconds, data = run()
        if data.get("status") not in (200, 204):
            raise RuntimeError(f"the first reply was not a success: {data}")
        return seconds, data
    return checked


def bench_cold(stage: Stage, python310: str, work: Path) -> dict:
    trees = {"prepare": our_package("prepare"), "callback": our_package("callback"),
             "wxpay": naive_package("wxpay", work), "paycallback": naive_package("paycallback", work)}
    create = {"httpMethod": "POST", "path": "/orders", "queryString": {},
              "headers": {"content-type": "application/json"},
              "body": json.dumps({"code": "test-bench", "items": [{"sku": "A1", "quantity": 1}]})}
    naive_create = {**create, "body": json.dumps({"code": "test-bench", "totalFee": 1990, "body": "Oolong tea"})}
    prepare_env = scf.clean_environ(stage.configuration("prepare"))
    callback_env = scf.clean_environ(stage.configuration("callback"))
    naive_env = scf.clean_environ(stage.environ)  # the naive port's SDK wants every key at construction
    cold, floor = child("cold"), child("floor")

    def run(tree: str, environ: dict, event_of):
        return _succeeded(lambda: scf.run_child(python310, trees[tree], cold, environ, json.dumps(event_of())))

    cases = {
        "interpreter": _succeeded(lambda: scf.run_child(python310, trees["prepare"],
                                                        'print(\'BENCH={"status": 200}\', flush=True)', {})),
        "floor": _succeeded(lambda: scf.run_child(python310, trees["prepare"], floor, {"LANG": "C.UTF-8"},
                                                  stage.mongo.uri)),
        "prepare": run("prepare", prepare_env, lambda: create),
        "prepare baseline": run("wxpay", naive_env, lambda: naive_create),
        "callback": run("callback", callback_env, stage.paid_order_notification),
        "callback baseline": run("paycallback", naive_env, stage.paid_order_notification),
    }
    samples: dict[str, list[tuple[float, dict]]] = {name: [] for name in cases}
    for _ in range(COLD_RUNS):
        for name, case in cases.items():  # alternated: drift hits every case alike
            samples[name].append(case())
    # Separate, untimed runs under -X importtime: every import until the first reply
    # (pymongo, for one, is imported only when the first request needs the store).
    imports = {"prepare": _import_ms(python310, trees["prepare"], cold, prepare_env, create),
               "callback": _import_ms(python310, trees["callback"], cold, callback_env,
                                      stage.paid_order_notification())}
    for tree in trees.values():
        scf.remove(tree)
    return {name: {"ms": statistics.median(seconds for seconds, _ in runs) * 1000,
                   "import_ms": imports.get(name, 0.0),
                   "rss_mb": max(data.get("rss_kb", 0) for _, data in runs) / 1024}
            for name, runs in samples.items()}


def _import_ms(python310: str, tree: Path, source: str, environ: dict, event: dict, runs: int = 5) -> float:
    """Median time spent importing, from spawn to the first reply (sum of the outermost
    imports that `-X importtime` reports)."""
    totals = []
    for _ in range(runs):
        done = subprocess.run([python310, "-B", "-S", "-X", "importtime", "-c", source, json.dumps(event)], cwd=tree,
                              env=environ, capture_output=True, text=True, timeout=120)
        total = 0
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit() \
                    and not parts[2][1:].startswith(" "):
                total += int(parts[1])
        totals.append(total / 1000)
    return statistics.median(totals)


# --- 2, 3. warm latency and throughput ------------------------------------------------------------

def _percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"p50": statistics.median(ordered) * 1000, "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000,
            "n": len(ordered)}


def bench_warm(stage: Stage, python310: str) -> dict:
    prepare, callback = our_package("prepare"), our_package("callback")
    try:
        spec = {"n": WARM_REQUESTS, "warmup": WARMUP}
        _, prepared = scf.run_child(python310, prepare, child("warm_prepare"),
                                    scf.clean_environ(stage.configuration("prepare")), json.dumps(spec))
        spec.update(threads=SENDERS, burst=BURST, run=str(time.time_ns())[-9:],
                    platform_private_pem=stage.keys.platform_private_pem)
        _, called = scf.run_child(python310, callback, child("warm_callback"),
                                  scf.clean_environ(stage.configuration("callback")), json.dumps(spec))
    finally:
        scf.remove(prepare)
        scf.remove(callback)
    routes = {"POST /orders": "create", "GET /orders/{n}": "status"}
    latency = {route: {"ours": _percentiles(prepared["ours"][key]), "bare": _percentiles(prepared["bare"][key])}
               for route, key in routes.items()}
    latency["callback POST"] = {"ours": _percentiles(called["ours"]["callback"]),
                                "bare": _percentiles(called["bare"]["callback"])}
    return {"latency": latency, "throughput": {"ours": called["ours_rate"], "floor": called["bare_rate"]}}


# --- 4. micro-benchmarks ---------------------------------------------------------------------------

def _median_per_call(calls: int, fn, rounds: int = 5) -> float:
    per_call = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - started) / calls)
    return statistics.median(per_call)


def bench_verify() -> dict:
    from wechatpayv3 import WeChatPay, WeChatPayType

    from shared.config import load_config
    from shared.wechatpay.notification import verify_notification
    from tests.keys import make_environ, make_notification, transaction

    environ = make_environ()
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

    return {"wechatpayv3 callback": _median_per_call(300, reference) * 1000,
            "verify_notification (ours)": _median_per_call(300, ours) * 1000}


def bench_store(stage: Stage) -> dict:
    import pymongo

    from shared import order_states

    raw = pymongo.MongoClient(stage.mongo.uri)["bench"]["article_order"]
    counter = iter(range(10**9))

    def article_style():
        number = f"A{next(counter):012d}"  # the article: add the order, later update it with no condition
        raw.insert_one({"outTradeNo": number, "totalFee": 100})
        raw.update_one({"outTradeNo": number}, {"$set": {"payStatus": "success"}})

    def create_and_pay():
        number = f"S{next(counter):012d}"
        stage.store.insert_order({"outTradeNo": number, "totalFee": 100, "expireTime": 0})
        stage.store.transition(number, order_states.SUCCESS, fields={"transactionId": number})

    return {"article: insert + unconditional update": _median_per_call(100, article_style) * 1000,
            "ours: insert + compare-and-set + once-only event": _median_per_call(100, create_and_pay) * 1000}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_sweeps(stage: Stage, environ: dict, sweeps: int, facts: int) -> float:
    """Deliveries per minute of `sweeps` relay processes started at once on `facts` due facts."""
    import pymongo

    # nx-27017 answers a query by scanning the collection: start each run from empty
    # outbox collections, so that every run measures the same work.
    raw = pymongo.MongoClient(stage.mongo.uri)["bench"]
    raw["events"].delete_many({})
    raw["deliveries"].delete_many({})
    batch = f"{sweeps}{time.time_ns()}"[-14:]
    for n in range(facts):
        stage.store.append_event("bench.fact", f"B{batch}{n:06d}", key=f"bench:{batch}:{n}", n=n)
    children = [subprocess.Popen([sys.executable, str(CHILDREN / "relay_sweep.py")], env=environ, cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(sweeps)]
    for process in children:
        assert process.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for process in children:
        process.stdin.write("go\n")
        process.stdin.flush()
    delivered = 0
    for process in children:
        delivered += json.loads(process.stdout.readline())["delivered"]
        process.wait(60)
    seconds = time.perf_counter() - started
    assert delivered == facts, (delivered, facts)   # each fact once, by one of the sweeps
    return delivered / seconds * 60


def bench_deliveries(stage: Stage) -> dict:
    """Each sweep is its own process (an SCF instance); so is the shop's receiver."""
    import secrets

    from shared.http import HttpClient
    from shared.outbox import fact_body
    from shared.webhook import sign_webhook

    secret = secrets.token_urlsafe(32)
    results = {}
    for delay_ms in (0, SHOP_DELAY_MS):
        port = _free_port()
        shop = subprocess.Popen([sys.executable, "-m", "devtools.webhook_receiver", "--port", str(port), "--secret",
                                 secret, "--delay-ms", str(delay_ms), "--quiet"], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
        try:
            shop.stderr.readline()  # "receiving at ..."
            url = f"http://127.0.0.1:{port}/hooks/cloudpay"
            environ = {**scf.clean_environ(stage.configuration("reconcile")), "PYTHONPATH": str(ROOT),
                       "FULFILMENT_WEBHOOK_URL": url, "FULFILMENT_WEBHOOK_SECRET": secret}
            runs = {sweeps: _run_sweeps(stage, environ, sweeps, DELIVERIES)
                    for sweeps in ((1, 2, 4) if delay_ms else (1,))}
            http = HttpClient()   # the bare work: the same signed POSTs one after another, no store
            bodies = [fact_body({"key": f"bare:{n}", "type": "bench.fact", "createTime": n, "n": n})
                      for n in range(DELIVERIES)]
            started = time.perf_counter()
            for body in bodies:
                http.request("POST", url, body=body, headers={"Content-Type": "application/json",
                                                              **sign_webhook(secret, body)})
            bare = DELIVERIES / (time.perf_counter() - started) * 60
        finally:
            shop.terminate()
            shop.wait(10)
        results[f"{delay_ms} ms"] = {"sweeps": runs, "bare": bare}
    return results


# --- report ----------------------------------------------------------------------------------------

def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def report(cold: dict, warm: dict, verify: dict, store: dict, python310: str, deliveries: dict) -> str:
    version = subprocess.run([python310, "-V"], capture_output=True, text=True).stdout.strip()
    lines = ["# make bench: latest results", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine ({version}); "
             "store nx-27017 and the WeChat Pay simulator on loopback.", "",
             f"## Cold start: spawn to first successful reply (median of {COLD_RUNS})", "",
             "Each package unpacked read-only and run by Python 3.10 `-B -S` in a clean environment holding the "
             "function's configuration. prepare: `POST /orders` (login, catalog, insert, prepay); callback: a valid "
             "notification for an existing paid order. Importing: separate runs under `-X importtime`, which slows "
             "imports itself (an upper bound).", "",
             "| function | ours | baseline (naive port) | floor | ours / baseline (goal <= 0.45) "
             "| ours / floor (goal <= 1.3) | importing (share) | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for function in ("prepare", "callback"):
        ours, baseline, floor = cold[function], cold[f"{function} baseline"], cold["floor"]
        to_base, to_floor = ours["ms"] / baseline["ms"], ours["ms"] / floor["ms"]
        lines.append(f"| {function} | {ours['ms']:.0f} ms | {baseline['ms']:.0f} ms | {floor['ms']:.0f} ms "
                     f"| {to_base:.2f} ({_verdict(to_base <= GOALS['baseline'])}) "
                     f"| {to_floor:.2f} ({_verdict(to_floor <= GOALS['floor'])}) "
                     f"| {ours['import_ms']:.0f} ms ({ours['import_ms'] / ours['ms']:.0%}) | {ours['rss_mb']:.0f} MB |")
    lines += ["", f"Interpreter start alone (`-B -S`, print one line): {cold['interpreter']['ms']:.0f} ms. "
              f"Baseline peak RSS: prepare {cold['prepare baseline']['rss_mb']:.0f} MB, callback "
              f"{cold['callback baseline']['rss_mb']:.0f} MB; floor {cold['floor']['rss_mb']:.0f} MB.", "",
              f"## Warm latency ({WARM_REQUESTS:,} requests per route, after {WARMUP} warm-up)", "",
              "Bare: the same store and simulator round trips (and the same signatures) with none of our code.", "",
              "| route | ours p50 | ours p99 | bare p50 | bare p99 | our overhead p50 (goal <= 1 ms) |",
              "|---|---|---|---|---|---|"]
    for route, numbers in warm["latency"].items():
        overhead = numbers["ours"]["p50"] - numbers["bare"]["p50"]
        lines.append(f"| {route} | {numbers['ours']['p50']:.2f} ms | {numbers['ours']['p99']:.2f} ms "
                     f"| {numbers['bare']['p50']:.2f} ms | {numbers['bare']['p99']:.2f} ms "
                     f"| {overhead:.2f} ms ({_verdict(overhead <= GOALS['overhead_ms'])}) |")
    rate = warm["throughput"]
    ratio = rate["ours"] / rate["floor"]
    lines += ["", f"## Callback throughput ({SENDERS} concurrent senders, 20% duplicate deliveries)", "",
              "| ours | floor (bare work) | ours / floor (goal >= 0.8) |", "|---|---|---|",
              f"| {rate['ours']:.0f} /s | {rate['floor']:.0f} /s "
              f"| {ratio:.2f} ({_verdict(ratio >= GOALS['throughput'])}) |",
              "", "## Micro-benchmarks (median per call)", "", "| case | ms | ratio |", "|---|---|---|"]
    for group in (verify, store):
        first = next(iter(group.values()))
        lines += [f"| {name} | {ms:.3f} | x{ms / first:.2f} |" for name, ms in group.items()]
    instant, slow = deliveries["0 ms"], deliveries[f"{SHOP_DELAY_MS} ms"]
    one = slow["sweeps"][1]
    lines += ["", f"## Fulfilment deliveries ({DELIVERIES} facts per run, signed POSTs to a local receiver)", "",
              "Bare: the same signed POSTs one after another, with no store work. Each sweep is its own process; "
              "parallel sweeps share the work through the delivery leases, and every fact is delivered once. "
              "The store work per delivery (find the order's deliveries, claim, read the fact, settle) is what "
              "a receiver answering at once measures; nx-27017 scans a collection per query and this machine "
              "has 2 cores, which caps the parallel runs.", "",
              "| receiver | sweeps | deliveries / min | vs bare | vs 1 sweep |", "|---|---|---|---|---|",
              f"| answers at once | 1 | {instant['sweeps'][1]:,.0f} "
              f"| {instant['sweeps'][1] / instant['bare']:.2f} | 1.00 |"]
    for sweeps, rate in slow["sweeps"].items():
        lines.append(f"| takes {SHOP_DELAY_MS} ms | {sweeps} | {rate:,.0f} | {rate / slow['bare']:.2f} "
                     f"| {rate / one:.2f} |")
    return "\n".join(lines) + "\n"


def chart(cold: dict, warm: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    functions = ["prepare", "callback"]
    width = 0.26
    for offset, (label, key) in enumerate((("ours", ""), ("baseline", " baseline"))):
        left.bar([i + (offset - 1) * width for i in range(2)], [cold[f + key]["ms"] for f in functions], width,
                 label=label)
    left.bar([i + width for i in range(2)], [cold["floor"]["ms"]] * 2, width, label="floor")
    left.set_xticks(range(2), functions)
    left.set_ylabel("ms, spawn to first reply")
    left.set_title("Cold start (Python 3.10 -B -S)")
    left.legend()
    routes = list(warm["latency"])
    right.bar([i - 0.2 for i in range(len(routes))], [warm["latency"][r]["ours"]["p50"] for r in routes], 0.4,
              label="ours p50")
    right.bar([i + 0.2 for i in range(len(routes))], [warm["latency"][r]["bare"]["p50"] for r in routes], 0.4,
              label="bare p50")
    right.set_xticks(range(len(routes)), routes)
    right.set_ylabel("ms per request")
    right.set_title("Warm latency")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    try:
        python310 = find_python310()
    except PackageError as error:
        print(f"make bench: {error}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        stage = Stage(Path(folder))
        try:
            print("cold start ...", flush=True)
            cold = bench_cold(stage, python310, Path(folder))
            print("warm latency and throughput ...", flush=True)
            warm = bench_warm(stage, python310)
            print("micro-benchmarks ...", flush=True)
            verify, store = bench_verify(), bench_store(stage)
            print("fulfilment deliveries ...", flush=True)
            deliveries = bench_deliveries(stage)
        finally:
            stage.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = report(cold, warm, verify, store, python310, deliveries)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps({"cold": cold, "warm": warm, "verify": verify,
                                                     "store": store, "deliveries": deliveries}, indent=2))
    chart(cold, warm, RESULTS / "chart.png")
    print(text)
    print(f"written: {RESULTS / 'latest.md'}, {RESULTS / 'chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
