"""examples/miniprogram is a mini-program project that opens in WeChat DevTools.

Static checks (JSON, pages, project settings, one place for the base URL, ES5-only JS,
integer money, WXML handlers that exist) and, where node is installed, `node --check`
plus the checkout page driven in node with a fake `wx`: a cancelled payment keeps
polling in the background, wx.requestPayment's success is not taken as payment, server
errors show their message. Each static check is a function returning the problems it
finds; `test_each_check_catches_its_breakage` breaks a copy of the project once per
check and expects that check, and no other failure mode, to notice.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "examples" / "miniprogram"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed: `node --check` and the page run need it")

# The public Function URL format Tencent Cloud documents (函数 URL 概述).
FUNCTION_URL_DOC = "https://cloud.tencent.com/document/product/583/96099"
FUNCTION_URL_FORMAT = "https://<app-id>-<url-id>.<region>.tencentscf.com"
BASE_URL_MARKERS = ("tencentscf.com", "tencentcs.com")


def project_files(root: Path, *suffixes: str) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes))


def js_code(source: str) -> str:
    """The source with comments removed and string/template/regex literals emptied, so
    that checks look at code only."""
    out: list[str] = []
    i, n = 0, len(source)
    last = ""  # the last significant code character, to tell a regex from a division
    while i < n:
        c = source[i]
        nxt = source[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            while i < n and source[i] != "\n":
                i += 1
            continue
        if c == "/" and nxt == "*":
            end = source.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
            continue
        if c in "'\"`" or (c == "/" and (last == "" or last in "(,=:[!&|?{};+-*%<>~^")):
            quote, j, in_class = c, i + 1, False
            while j < n:
                if source[j] == "\\":
                    j += 2
                    continue
                if quote == "/" and source[j] == "[":
                    in_class = True
                elif quote == "/" and source[j] == "]":
                    in_class = False
                elif source[j] == quote and not in_class:
                    break
                j += 1
            out.append(quote + quote)
            i = j + 1
            last = "a"
            continue
        out.append(c)
        if not c.isspace():
            last = c
        i += 1
    return "".join(out)


# --- the checks: each returns a list of problems --------------------------------------------

def check_json_parses(root: Path) -> list[str]:
    problems = []
    for path in project_files(root, ".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            problems.append(f"{path.relative_to(root)}: {error}")
    if not project_files(root, ".json"):
        problems.append("no .json files")
    return problems


def check_pages_exist(root: Path) -> list[str]:
    app = json.loads((root / "app.json").read_text(encoding="utf-8"))
    pages = app.get("pages")
    if not isinstance(pages, list) or not pages:
        return ["app.json: no pages registered"]
    problems = []
    if "pages/checkout/checkout" not in pages:
        problems.append("app.json: pages/checkout/checkout is not registered")
    for page in pages:
        for suffix in (".js", ".json", ".wxml", ".wxss"):
            if not (root / (page + suffix)).is_file():
                problems.append(f"app.json page {page}: {page + suffix} is missing")
    if not isinstance(app.get("window"), dict) or not app["window"]:
        problems.append("app.json: no window settings")
    if not (root / "app.js").is_file() or "App(" not in (root / "app.js").read_text(encoding="utf-8"):
        problems.append("app.js with App({...}) is missing")
    return problems


def check_project_config(root: Path) -> list[str]:
    config = json.loads((root / "project.config.json").read_text(encoding="utf-8"))
    problems = []
    appid = config.get("appid")
    if not isinstance(appid, str) or not (appid == "touristappid" or re.fullmatch(r"wx[0-9a-f]{16}", appid)):
        problems.append(f"project.config.json: appid {appid!r} is neither touristappid nor wx + 16 hex digits")
    if config.get("compileType") != "miniprogram":
        problems.append(f"project.config.json: compileType is {config.get('compileType')!r}, not 'miniprogram'")
    if not isinstance(config.get("libVersion"), str) or not re.fullmatch(r"\d+\.\d+\.\d+", config["libVersion"]):
        problems.append("project.config.json: libVersion must be a base library version like 3.3.4")
    setting = config.get("setting")
    if not isinstance(setting, dict):
        return problems + ["project.config.json: no setting block"]
    for key in ("es6", "enhance", "minified", "urlCheck"):
        if not isinstance(setting.get(key), bool):
            problems.append(f"project.config.json: setting.{key} must be true or false")
    return problems


def check_sitemap(root: Path) -> list[str]:
    app = json.loads((root / "app.json").read_text(encoding="utf-8"))
    location = app.get("sitemapLocation")
    if location != "sitemap.json":
        return [f"app.json: sitemapLocation is {location!r}, not 'sitemap.json'"]
    if not (root / location).is_file():
        return ["sitemap.json is missing"]
    rules = json.loads((root / location).read_text(encoding="utf-8")).get("rules")
    if rules != [{"action": "allow", "page": "*"}]:
        return [f"sitemap.json: rules are {rules!r}, not the standard allow-all"]
    return []


def _api_base(root: Path) -> str | None:
    match = re.search(r"""^\s*(?:var|const|let)\s+API_BASE\s*=\s*['"]([^'"]+)['"]""",
                      (root / "config.js").read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else None


def _requires(path: Path) -> set[Path]:
    code = path.read_text(encoding="utf-8")
    return {(path.parent / m).resolve() for m in re.findall(r"""require\(\s*['"]([^'"]+)['"]\s*\)""", code)}


def check_base_url_in_config_only(root: Path) -> list[str]:
    config_js = root / "config.js"
    if not config_js.is_file():
        return ["config.js is missing"]
    base = _api_base(root)
    if base is None:
        return ["config.js: no API_BASE = '...' string"]
    problems = []
    text = config_js.read_text(encoding="utf-8")
    if not re.fullmatch(r"https://[^/\s]+(/[^/\s]+)*", base):
        problems.append(f"config.js: API_BASE {base!r} is not an https URL without a trailing slash")
    if FUNCTION_URL_FORMAT not in text or FUNCTION_URL_DOC not in text:
        problems.append("config.js: the documented Function URL format and its doc page must be cited")
    for path in project_files(root):
        if path == config_js or path.name == "README.md":
            continue
        text = path.read_text(encoding="utf-8")
        for marker in (base, *BASE_URL_MARKERS):
            if marker in text:
                problems.append(f"{path.relative_to(root)} contains {marker!r}: the base URL belongs in config.js")
    for user in ("api.js", "pages/checkout/checkout.js"):
        if config_js.resolve() not in _requires(root / user):
            problems.append(f"{user} does not require config.js")
    api = js_code((root / "api.js").read_text(encoding="utf-8"))
    if "config.API_BASE + path" not in api:
        problems.append("api.js does not build its URLs as config.API_BASE + path")
    raw_api = (root / "api.js").read_text(encoding="utf-8")
    if "'/orders'" not in raw_api or "'/orders/' + encodeURIComponent(" not in raw_api:
        problems.append("api.js does not call /orders and /orders/{outTradeNo}")
    if "'X-Order-Token': orderToken" not in raw_api:
        problems.append("api.js does not send the X-Order-Token header")
    return problems


# ES5 plus Promise: nothing that needs DevTools' 将 JS 编译成 ES5 / 增强编译.
NOT_ES5 = {
    "async": r"\basync\b", "await": r"\bawait\b", "arrow function": r"=>", "template literal": r"``",
    "optional chaining": r"\?\.(?!\d)", "nullish coalescing": r"\?\?", "spread": r"\.\.\.",
    "let": r"\blet\b", "const": r"\bconst\b", "class": r"\bclass\b",
}


def check_es5_only(root: Path) -> list[str]:
    problems = []
    for path in project_files(root, ".js"):
        code = js_code(path.read_text(encoding="utf-8"))
        for name, pattern in NOT_ES5.items():
            if re.search(pattern, code):
                problems.append(f"{path.relative_to(root)}: uses {name}")
    return problems


def check_integer_money(root: Path) -> list[str]:
    problems = []
    for path in project_files(root, ".js", ".wxml"):
        raw = path.read_text(encoding="utf-8")
        code = js_code(raw) if path.suffix == ".js" else " ; ".join(re.findall(r"\{\{(.*?)\}\}", raw, re.S))
        for banned in ("toFixed", "parseFloat", "toLocaleString", "0.01"):
            if banned in code:
                problems.append(f"{path.relative_to(root)}: {banned} (money is integer fen)")
        for match in re.finditer(r"/\s*100\b", code):
            if not re.search(r"Math\.floor\(\s*[\w.]+\s*$", code[max(0, match.start() - 60):match.start()]):
                problems.append(f"{path.relative_to(root)}: '/ 100' outside Math.floor(...) makes a float")
    return problems


def _page_methods(js: str) -> set[str]:
    code = js_code(js)
    start = code.find("Page({")
    if start < 0:
        return set()
    top, depth = [], 0  # the Page object's own text, nested bodies removed
    for c in code[start + len("Page("):]:
        if c in "{([":
            depth += 1
            if depth == 1:
                continue
        elif c in "})]":
            depth -= 1
            if depth == 0:
                break
            continue
        if depth == 1:
            top.append(c)
    text = "".join(top)
    names = set(re.findall(r"([A-Za-z_$][\w$]*)\s*:\s*function\b", text))
    names |= set(re.findall(r"([A-Za-z_$][\w$]*)\s*(?=\s*(?:,|$))", re.sub(r"[A-Za-z_$][\w$]*\s*:[^,]*", "", text)))
    return names - {"function"}


EVENT_ATTRIBUTE = re.compile(
    r"""\b(?:capture-bind|capture-catch|mut-bind|bind|catch):?([A-Za-z]+)\s*=\s*["']([^"']*)["']""")


def check_wxml_handlers(root: Path) -> list[str]:
    app = json.loads((root / "app.json").read_text(encoding="utf-8"))
    problems = []
    for page in app.get("pages", []):
        wxml = (root / (page + ".wxml")).read_text(encoding="utf-8")
        methods = _page_methods((root / (page + ".js")).read_text(encoding="utf-8"))
        handlers = EVENT_ATTRIBUTE.findall(wxml)
        if not handlers:
            problems.append(f"{page}.wxml: no event handlers found")
        for event, handler in handlers:
            if handler not in methods:
                problems.append(f"{page}.wxml: {event} -> {handler!r} is not a method of its Page({{...}})")
    return problems


def check_node_syntax(root: Path) -> list[str]:
    problems = []
    for path in project_files(root, ".js"):
        result = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            problems.append(f"{path.relative_to(root)}: {result.stderr.strip().splitlines()[-1:]}")
    return problems


STATIC_CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "json_parses": check_json_parses,
    "pages_exist": check_pages_exist,
    "project_config": check_project_config,
    "sitemap": check_sitemap,
    "base_url_in_config_only": check_base_url_in_config_only,
    "es5_only": check_es5_only,
    "integer_money": check_integer_money,
    "wxml_handlers": check_wxml_handlers,
}


@pytest.mark.parametrize("name", list(STATIC_CHECKS))
def test_static_check(name):
    assert STATIC_CHECKS[name](ROOT) == []


@needs_node
def test_node_check_every_js():
    assert project_files(ROOT, ".js")
    assert check_node_syntax(ROOT) == []


def _replace(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        text = path.read_text(encoding="utf-8")
        assert old in text, f"mutation target {old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return mutate


def _delete(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


CHK = "pages/checkout/checkout"
BREAKAGES = [
    ("json_parses", _replace(CHK + ".json", '"Checkout",', '"Checkout",,')),
    ("json_parses", _replace("sitemap.json", '"rules"', '// comment\n"rules"')),
    ("pages_exist", _delete(CHK + ".wxss")),
    ("pages_exist", _replace("app.json", '"pages/checkout/checkout"', '"pages/checkout/checkout", "pages/gone/gone"')),
    ("project_config", _replace("project.config.json", '"touristappid"', '""')),
    ("project_config", _replace("project.config.json", '"compileType": "miniprogram"', '"compileType": "plugin"')),
    ("project_config", _replace("project.config.json", '"enhance": true', '"enhance": "yes"')),
    ("sitemap", _replace("app.json", '"sitemapLocation": "sitemap.json"', '"sitemapLocation": "site.json"')),
    ("sitemap", _delete("sitemap.json")),
    ("base_url_in_config_only", _replace("api.js", "url: config.API_BASE + path",
                                         "url: 'https://1250000000-abc.ap-guangzhou.tencentscf.com' + path")),
    ("base_url_in_config_only", _replace(CHK + ".js", "require('../../config.js')", "require('../../api.js')")),
    ("base_url_in_config_only", _replace("api.js", "'X-Order-Token': orderToken", "'X-Token': orderToken")),
    ("base_url_in_config_only", _replace("config.js", "tencentscf.com'", "tencentscf.com/'")),
    ("es5_only", _replace("api.js", "function login() {", "async function login() {")),
    ("es5_only", _replace(CHK + ".js", "if (this.pollTimer)", "if (this?.pollTimer)")),
    ("es5_only", _replace("money.js", "var sum = 0", "let sum = 0")),
    ("es5_only", _replace(CHK + ".js", "var sent = CART.map(function (line) {", "var sent = CART.map((line) => {")),
    ("integer_money", _replace("money.js", "return Math.floor(fen / 100) + '.'", "return (fen / 100).toFixed(2) + ''")),
    ("integer_money", _replace("money.js", "return Math.floor(fen / 100) + '.'", "return fen / 100 + '.'")),
    ("integer_money", _replace(CHK + ".wxml", "{{order.totalText}}", "{{order.totalFee / 100}}")),
    ("wxml_handlers", _replace(CHK + ".wxml", 'bindtap="onPayAgain"', 'bindtap="onPayAgian"')),
    ("wxml_handlers", _replace(CHK + ".wxml", 'bind:tap="onCheckAgain"', 'bind:tap="update2"')),
    ("wxml_handlers", _replace(CHK + ".js", "  onCheckAgain: function () {", "  onCheckAgainX: function () {")),
    ("node_syntax", _replace("api.js", "function request(method, path, data, headers) {",
                             "function request(method, path, data, headers) {{")),
]


@pytest.mark.parametrize(("name", "mutate"), BREAKAGES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BREAKAGES)])
def test_each_check_catches_its_breakage(tmp_path, name, mutate):
    if name == "node_syntax" and NODE is None:
        pytest.skip("node is not installed")
    copy = tmp_path / "miniprogram"
    shutil.copytree(ROOT, copy)
    check = check_node_syntax if name == "node_syntax" else STATIC_CHECKS[name]
    assert check(copy) == []
    mutate(copy)
    try:
        problems = check(copy)
    except (OSError, ValueError) as error:  # a missing or unparsable file is a finding too
        problems = [repr(error)]
    assert problems


# --- the page, run in node with a fake wx -----------------------------------------------------

HARNESS = r"""
const path = require('path')
const root = process.argv[2], scenario = JSON.parse(process.argv[3])
const config = require(path.join(root, 'config.js'))
if (scenario.configured !== false) {
  config.API_BASE = 'https://1250000000-test.ap-guangzhou.tencentscf.com'
  config.configured = true
}

let now = 0, timers = [], trace = {requests: [], payments: [], delays: [], states: []}
global.setTimeout = (fn, ms) => { timers.push({at: now + ms, fn}); trace.delays.push(ms); return timers.length }
global.clearTimeout = () => {}
const answers = scenario.answers.slice()  // [{status, body}] for the wx.request calls in order
const payments = scenario.payments.slice() // ['success' | 'cancel' | 'fail'] for each requestPayment
global.wx = {
  login: (o) => o.success({code: 'test-alice'}),
  request: (o) => {
    trace.requests.push({url: o.url, method: o.method, data: o.data, header: o.header})
    const a = answers.length > 1 ? answers.shift() : answers[0]
    Promise.resolve().then(() => a.network ? o.fail({errMsg: 'request:fail timeout'})
                                            : o.success({statusCode: a.status, data: a.body}))
  },
  requestPayment: (o) => {
    trace.payments.push(o.paySign)
    const p = payments.shift()
    Promise.resolve().then(() => p === 'success' ? o.success({errMsg: 'requestPayment:ok'})
      : o.fail({errMsg: p === 'cancel' ? 'requestPayment:fail cancel' : 'requestPayment:fail (-1)'}))
  },
  stopPullDownRefresh: () => {},
}
let definition
global.Page = (d) => { definition = d }
require(path.join(root, 'pages/checkout/checkout.js'))
const page = Object.assign({}, definition, {data: JSON.parse(JSON.stringify(definition.data))})
page.setData = function (changes) {
  for (const key of Object.keys(changes)) {
    const parts = key.split('.'); let target = this.data
    for (const p of parts.slice(0, -1)) target = target[p]
    target[parts[parts.length - 1]] = changes[key]
  }
}
const snap = () => JSON.parse(JSON.stringify(page.data))
const flush = () => new Promise((r) => setImmediate(r))
async function runTimers(limit) {
  for (let i = 0; i < limit; i++) {
    await flush()
    if (!timers.length) return
    timers.sort((a, b) => a.at - b.at)
    const t = timers.shift(); now = t.at; t.fn()
    await flush()
    trace.states.push(snap())
  }
}
;(async () => {
  page.onLoad()
  for (const action of scenario.actions) {
    page[action]()
    await flush(); await flush()
    trace.states.push(snap())
    await runTimers(100)
  }
  trace.final = snap()
  trace.waited = now
  console.log(JSON.stringify(trace))
})()
"""

ORDER = {"outTradeNo": "261126120000a8Kx2LmQ9pZrT1", "totalFee": 5268, "payStatus": "NOTPAY",
         "orderToken": "tok-1", "expiresAt": 4102444800000,
         "payment": {"timeStamp": "1795721400", "nonceStr": "n", "package": "prepay_id=wx1", "signType": "RSA",
                     "paySign": "sig-1"}}


def status(pay_status: str) -> dict:
    return {"status": 200, "body": {"outTradeNo": ORDER["outTradeNo"], "payStatus": pay_status,
                                    "totalFee": 5268, "paidAt": None}}


def run_page(tmp_path, scenario: dict) -> dict:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS, encoding="utf-8")
    result = subprocess.run([NODE, str(harness), str(ROOT), json.dumps(scenario)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_node
def test_cancelled_payment_keeps_polling_in_the_background(tmp_path):
    trace = run_page(tmp_path, {
        "answers": [{"status": 200, "body": ORDER}, status("NOTPAY"), status("NOTPAY"), status("SUCCESS")],
        "payments": ["cancel"], "actions": ["onCheckout"]})
    create, *polls = trace["requests"]
    assert create["method"] == "POST" and create["url"] == "https://1250000000-test.ap-guangzhou.tencentscf.com/orders"
    assert re.fullmatch(r"ck-[0-9a-z]+-[0-9a-z]+", create["data"]["idempotencyKey"])
    assert create["data"]["items"] == [{"sku": "A1", "quantity": 2}, {"sku": "B2", "quantity": 1}]
    assert len(polls) == 3
    for poll in polls:
        assert poll["method"] == "GET" and poll["url"].endswith("/orders/" + ORDER["outTradeNo"])
        assert poll["header"]["X-Order-Token"] == "tok-1"
    after_cancel = trace["states"][0]
    assert after_cancel["state"] == "checking" and "cancelled" in after_cancel["note"]
    assert after_cancel["statusText"] == "Checking payment… (attempt 1)"
    assert after_cancel["showPayAgain"] and after_cancel["showCheckAgain"]  # not blocked
    assert trace["delays"] == [1000, 2000]
    final = trace["final"]
    assert final["state"] == "paid" and final["order"]["totalText"] == "52.68"
    assert [line["lineText"] for line in final["order"]["lines"]] == ["39.80", "12.88"]
    assert final["cartTotalText"] == "52.68" and not final["showPayAgain"]


@needs_node
def test_payment_success_is_not_proof_and_polling_is_bounded(tmp_path):
    trace = run_page(tmp_path, {
        "answers": [{"status": 200, "body": ORDER}, status("NOTPAY")],
        "payments": ["success", "cancel"], "actions": ["onCheckout", "onPayAgain"]})
    assert all(state["state"] != "paid" for state in trace["states"])
    assert trace["delays"][:10] == [1000 * n for n in range(1, 11)]  # 1 s, 2 s ... 10 s: 55 s in all
    assert trace["delays"][10] == 1000  # after "Pay again" the next round starts over
    first_round = [s for s in trace["states"] if s["state"] == "unconfirmed"]
    assert first_round and first_round[0]["attempt"] == 11 and first_round[0]["showPayAgain"]
    assert trace["payments"] == ["sig-1", "sig-1"]  # "Pay again" reuses the same order's parameters
    assert len([r for r in trace["requests"] if r["method"] == "POST"]) == 1
    assert trace["final"]["state"] == "unconfirmed" and trace["final"]["showCheckAgain"]


@needs_node
def test_server_errors_show_the_message_and_a_retry_keeps_the_key(tmp_path):
    error = {"status": 400, "body": {"error": {"code": "UNKNOWN_SKU", "message": "unknown sku A1"}}}
    trace = run_page(tmp_path, {
        "answers": [error, {"status": 502, "body": "<html>bad gateway</html>"}, {"network": True},
                    {"status": 200, "body": ORDER}, status("SUCCESS"), {"status": 200, "body": ORDER}],
        "payments": ["fail", "cancel"],
        "actions": ["onCheckout", "onCheckout", "onCheckout", "onCheckout", "onCheckout"]})
    shown = [s["errorText"] for s in trace["states"][:3]]
    assert shown[0] == "unknown sku A1" and "UNKNOWN_SKU" not in json.dumps(trace["states"][0])
    assert "HTTP 502" in shown[1] and "Could not reach the server" in shown[2]
    keys = [r["data"]["idempotencyKey"] for r in trace["requests"] if r["method"] == "POST"]
    assert len(set(keys[:4])) == 1  # retries of one checkout attempt reuse its key
    assert keys[4] != keys[3]  # "New order" after the paid one is a new attempt
    assert trace["states"][3]["state"] == "paid"


@needs_node
def test_unconfigured_base_url_is_refused_with_a_message(tmp_path):
    trace = run_page(tmp_path, {"configured": False, "answers": [{"status": 200, "body": ORDER}],
                                "payments": [], "actions": ["onCheckout"]})
    assert trace["requests"] == []
    assert trace["final"]["configured"] is False
    assert trace["final"]["errorText"] == "Set API_BASE in config.js to the Function URL of prepare."


@needs_node
def test_yuan_uses_integer_arithmetic():
    script = ("const m = require(process.argv[1]);"
              "console.log(JSON.stringify([1990, 5, 100, 0, 123456, 1.5, -1].map(m.yuan)))")
    result = subprocess.run([NODE, "-e", script, str(ROOT / "money.js")], capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout) == ["19.90", "0.05", "1.00", "0.00", "1234.56", "--", "--"]


@needs_node
def test_already_paid_answer_shows_that_order_from_the_server(tmp_path):
    paid = {"status": 409, "body": {"error": {"code": "ORDER_ALREADY_PAID", "message": "this order is already paid",
                                              "outTradeNo": ORDER["outTradeNo"], "orderToken": "tok-1"}}}
    trace = run_page(tmp_path, {"answers": [paid, status("SUCCESS")], "payments": [], "actions": ["onCheckout"]})
    assert trace["payments"] == []
    assert trace["requests"][1]["header"]["X-Order-Token"] == "tok-1"
    assert trace["final"]["state"] == "paid" and trace["final"]["order"]["outTradeNo"] == ORDER["outTradeNo"]
