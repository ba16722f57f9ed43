"""`doctor` against the real simulator, nx-27017, moto's S3, a local SSM endpoint and a shop.

A healthy deployment gives every item OK (or an honest skip); then each item is broken
in turn and exactly that item fails (or warns, for the clock) while the others stay as
they were.  Where one mistake necessarily shows in more than one item (a malformed public
key id is also a key WeChat Pay's answers do not verify with; a notify URL with a query
also stops the configuration from loading) the test names every item it expects.  No
secret value ever appears in the CLI's output (stdout and stderr) or in the action's JSON.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared import doctor
from shared.admin import main as admin_main
from tests import keys as test_keys
from tests.functions import ROOT, load_function
from tests.shop_receiver import SECRET as SHOP_SECRET
from tests.ssm_fixtures import SECRET_ID, SECRET_KEY, TOKEN, FakeSsm

CONTEXT = {"time_limit_in_ms": 120_000, "request_id": "doctor"}
DOCTOR = {"action": "doctor"}
MONGO_PASSWORD = "pw-DOCTOR-never-shown-7f3a"
# The items that are honestly skipped in the healthy run (public-key mode, no SSM).
HEALTHY_SKIPS = {"apiv3_key", "ssm"}
ACTION_ITEMS = ["ssm", "config.reconcile", "public_key_id", "notify_url", "mongodb", "indexes", "merchant_key",
                "wechatpay_keys", "apiv3_key", "clock", "timeout", "cos", "fulfilment", "shipping"]


@pytest.fixture
def deployment(function_env, env_store, simulator, sim_keys, mongo_uri, db_name, shop, cos_environ):
    """Every feature on and healthy: the simulator (public-key mode), MongoDB with its
    indexes, a shop receiving facts, COS, virtual shipping.  Returns function_env."""
    environ = sim_keys.function_environ(simulator.url, "http://127.0.0.1:9/callback", mongo_uri)
    function_env(**environ, MONGODB_DB=db_name, FULFILMENT_WEBHOOK_URL=shop.url,
                 FULFILMENT_WEBHOOK_SECRET=SHOP_SECRET, SHIPPING_MODE="virtual", **cos_environ)
    env_store.ensure_indexes()
    return function_env


def _action(context=CONTEXT) -> dict:
    result = load_function("reconcile")(DOCTOR, context)
    json.dumps(result)   # the answer is JSON
    return result


def _statuses(result: dict) -> dict[str, str]:
    return {check["item"]: check["status"] for check in result["checks"]}


def _message(result: dict, item: str) -> str:
    [message] = [check["message"] for check in result["checks"] if check["item"] == item]
    return message


def _expect(result: dict, *, fail=(), warn=(), skip=HEALTHY_SKIPS) -> None:
    """Exactly `fail` fail and `warn` warn; `skip` are skipped; every other item is OK."""
    statuses = _statuses(result)
    expected = {item: ("fail" if item in fail else "warn" if item in warn else "skip" if item in skip else "ok")
                for item in statuses}
    assert statuses == expected, json.dumps(result, ensure_ascii=False, indent=1)
    assert result["ok"] is (not fail)


def _secrets(environ: dict, *extra: str) -> list[str]:
    """The secret values a test used: none may be shown."""
    values = [environ.get(name) for name in ("WECHATPAY_APIV3_KEY", "WECHAT_APPSECRET", "ORDER_TOKEN_SECRET",
                                             "FULFILMENT_WEBHOOK_SECRET", "TENCENTCLOUD_SECRETKEY",
                                             "TENCENTCLOUD_SESSIONTOKEN")]
    pem = environ.get("WECHATPAY_PRIVATE_KEY") or ""
    values += [line for line in pem.splitlines() if line and not line.startswith("-----")][:3]
    return [value for value in [*values, *extra] if value]


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    assert secrets
    for value in secrets:
        assert value not in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drop_index(mongo_client, db_name: str, collection: str, fields: list[str]) -> None:
    """Drop the index on `fields` by the name the server gave it."""
    target = mongo_client[db_name][collection]
    [name] = [info["name"] for info in target.list_indexes() if list(info["key"]) == fields]
    target.drop_index(name)


# --- healthy ------------------------------------------------------------------------------

def test_a_healthy_deployment_is_all_ok_or_honestly_skipped(deployment, shop, simulator):
    result = _action()
    assert [check["item"] for check in result["checks"]] == ACTION_ITEMS
    assert all(set(check) == {"item", "status", "message"} and check["message"] for check in result["checks"])
    _expect(result)
    assert "has the right form (32 bytes)" in _message(result, "apiv3_key")
    assert "CLOUDPAY_SSM_SECRET_NAME is not set" in _message(result, "ssm")
    # What the checks did: one ping to the shop, one probe object, is_trade_managed asked once.
    [ping] = shop.facts()
    assert ping["type"] == "cloudpay.ping" and ping["data"] == {}
    assert simulator.counters()["trade_managed_queries"] == 1
    assert simulator.orders() == []                         # the probe's order number does not exist


@pytest.mark.parametrize("mode", ["certificate", "switch"])
def test_healthy_in_the_platform_certificate_modes(deployment, simulator, mode):
    simulator.set_key_mode(mode)
    changes = {"WECHATPAY_PLATFORM_CERTS": "download"}
    if mode == "certificate":
        changes.update(WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None)
    deployment(**changes)
    result = _action()
    _expect(result, skip={"ssm", "public_key_id"} if mode == "certificate" else {"ssm"})
    serial = simulator.keys_state()["certificates"][0]["serial"]
    assert serial in _message(result, "apiv3_key")
    assert "platform certificates' download verified too" in _message(result, "wechatpay_keys")


def test_ssm_healthy_secrets_come_from_the_secret(deployment, fake_ssm, sim_keys):
    environ = deployment()
    moved = {name: environ[name] for name in ("WECHATPAY_PRIVATE_KEY", "WECHATPAY_APIV3_KEY", "WECHAT_APPSECRET")}
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps(moved)
    environ = deployment(**dict.fromkeys(moved), **_ssm_variables(fake_ssm))
    result = _action()
    _expect(result, skip={"apiv3_key"})
    assert "3 variable(s)" in _message(result, "ssm") and "WECHATPAY_PRIVATE_KEY" in _message(result, "ssm")
    _assert_no_secret(json.dumps(result, ensure_ascii=False),
                      _secrets(environ, *moved.values(), SECRET_ID, SECRET_KEY, TOKEN))


def _ssm_variables(server: FakeSsm, name: str = "cloudpay/prod") -> dict[str, str]:
    return {"CLOUDPAY_SSM_SECRET_NAME": name, "CLOUDPAY_SSM_VERSION_ID": "v1",
            "CLOUDPAY_SSM_ENDPOINT": server.endpoint, "TENCENTCLOUD_REGION": "ap-guangzhou",
            "TENCENTCLOUD_SECRETID": SECRET_ID, "TENCENTCLOUD_SECRETKEY": SECRET_KEY,
            "TENCENTCLOUD_SESSIONTOKEN": TOKEN}


# --- each item broken in turn (the action, in the reconcile function) ------------------------

def test_a_private_key_that_is_not_the_serials(deployment):
    deployment(WECHATPAY_PRIVATE_KEY=test_keys.key_pair("doctor-other").private_pem)
    result = _action()
    _expect(result, fail={"merchant_key"})
    message = _message(result, "merchant_key")
    assert "WECHATPAY_PRIVATE_KEY and WECHATPAY_CERT_SERIAL_NO" in message and "do not belong together" in message
    assert "could not be tried" in _message(result, "apiv3_key")


def test_a_wrong_serial(deployment):
    deployment(WECHATPAY_CERT_SERIAL_NO="5157F09EFDC096DE15EBE81A47057A7232F1B8E1")
    result = _action()
    _expect(result, fail={"merchant_key"})
    assert "5157F09EFDC096DE15EBE81A47057A7232F1B8E1" in _message(result, "merchant_key")


def test_a_wrong_merchant_id(deployment):
    deployment(WECHATPAY_MCHID="1900000999")
    result = _action()
    _expect(result, fail={"merchant_key"})
    assert "WECHATPAY_MCHID 1900000999 is not the merchant" in _message(result, "merchant_key")


def test_a_wrong_apiv3_key_in_certificate_mode(deployment, simulator):
    simulator.set_key_mode("certificate")
    deployment(WECHATPAY_PLATFORM_CERTS="download", WECHATPAY_PUBLIC_KEY=None, WECHATPAY_PUBLIC_KEY_ID=None,
               WECHATPAY_APIV3_KEY="0123456789abcdef0123456789abcdef")
    result = _action()
    # Nothing can verify WeChat Pay's answers without a certificate: that check says why it cannot.
    _expect(result, fail={"apiv3_key"}, skip={"ssm", "public_key_id", "wechatpay_keys"})
    assert "does not decrypt WeChat Pay's platform certificates" in _message(result, "apiv3_key")
    assert "see apiv3_key" in _message(result, "wechatpay_keys")


def test_an_apiv3_key_of_the_wrong_length(deployment):
    deployment(WECHATPAY_APIV3_KEY="too-short")
    result = _action()
    _expect(result, fail={"config.reconcile", "apiv3_key"}, skip={"ssm"})
    assert _message(result, "apiv3_key") == "WECHATPAY_APIV3_KEY must be exactly 32 bytes (got 9)"


def test_wechat_pay_signs_with_a_key_we_do_not_have(deployment, simulator):
    simulator.set_key_mode("certificate")   # a platform certificate; we hold only the public key
    result = _action()
    _expect(result, fail={"wechatpay_keys"}, skip={"ssm"})
    serial = simulator.keys_state()["certificates"][0]["serial"]
    message = _message(result, "wechatpay_keys")
    assert f"platform certificate {serial}, which is not configured" in message
    assert "WECHATPAY_PLATFORM_CERTS=download" in message


def test_a_public_key_that_is_not_wechat_pays(deployment, sim_keys):
    deployment(WECHATPAY_PUBLIC_KEY=test_keys.key_pair("doctor-not-wechat").public_pem)
    result = _action()
    _expect(result, fail={"wechatpay_keys"})
    assert f"WECHATPAY_PUBLIC_KEY does not verify the signature: it is not the public key of " \
           f"{sim_keys.platform_public_key_id}" in _message(result, "wechatpay_keys")


def test_a_malformed_public_key_id(deployment, sim_keys):
    deployment(WECHATPAY_PUBLIC_KEY_ID="PUB_KEY_ID_ABC")
    result = _action()
    _expect(result, fail={"public_key_id", "wechatpay_keys"})
    assert "PUB_KEY_ID_ followed by digits" in _message(result, "public_key_id")
    assert f"set WECHATPAY_PUBLIC_KEY_ID to {sim_keys.platform_public_key_id}" in _message(result, "wechatpay_keys")


@pytest.mark.parametrize("url, words", [
    ("https://pay.example.com/callback?from=wechat", "must not contain a query string"),
    ("http://pay.example.com/callback", "must use https"),
    ("https://pay.example.com/" + "c" * 240, "at most 256"),
])
def test_a_notify_url_wechat_pay_refuses(deployment, url, words):
    deployment(WECHATPAY_NOTIFY_URL=url)
    result = _action()
    # A query or plain http also stops the configuration from loading; the length does not.
    _expect(result, fail={"notify_url"} if "256" in words else {"config.reconcile", "notify_url"})
    assert words in _message(result, "notify_url")


def test_a_loopback_notify_url_inside_scf(deployment):
    deployment(TENCENTCLOUD_RUNENV="SCF")
    result = _action()
    _expect(result, fail={"notify_url"})
    assert "a loopback address, which WeChat Pay cannot reach" in _message(result, "notify_url")


def test_mongodb_unreachable(deployment):
    port = _free_port()   # nobody listens there
    environ = deployment(MONGODB_URI=f"mongodb://doctor:{MONGO_PASSWORD}@127.0.0.1:{port}/?authSource=admin")
    started = time.monotonic()
    result = _action()
    assert time.monotonic() - started < 10        # one selection timeout (3 s), not one per check
    _expect(result, fail={"mongodb"}, skip=HEALTHY_SKIPS | {"indexes"})
    assert f"MongoDB at 127.0.0.1:{port} did not answer (ServerSelectionTimeoutError)" in _message(result, "mongodb")
    assert _message(result, "indexes") == "MongoDB is not reachable (see mongodb)"
    _assert_no_secret(json.dumps(result, ensure_ascii=False), _secrets(environ, MONGO_PASSWORD))


def test_a_missing_index(deployment, mongo_client, db_name):
    _drop_index(mongo_client, db_name, "orders", ["payStatus", "expireTime"])
    result = _action()
    _expect(result, fail={"indexes"})
    assert "orders lacks index status_expire" in _message(result, "indexes")
    assert "python -m shared.admin setup" in _message(result, "indexes")


def test_a_notification_log_that_never_expires(deployment, mongo_client, db_name):
    _drop_index(mongo_client, db_name, "notifications", ["receivedAt"])
    mongo_client[db_name]["notifications"].create_index([("receivedAt", 1)])   # the same field, no TTL
    result = _action()
    _expect(result, fail={"indexes"})
    assert "notifications lacks the declared expiry (expireAfterSeconds) of receivedAt_ttl" in _message(
        result, "indexes")


def test_collections_not_made_yet_are_a_warning(deployment, mongo_client, db_name):
    mongo_client.drop_database(db_name)
    result = _action()
    _expect(result, warn={"indexes"})
    assert _message(result, "indexes").startswith("11 collection(s) do not exist yet (products, orders, ")
    assert "at first use" in _message(result, "indexes")


def test_an_ssm_secret_missing_a_variable(deployment, fake_ssm):
    environ = deployment()
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"WECHATPAY_APIV3_KEY": environ["WECHATPAY_APIV3_KEY"]})
    environ = deployment(WECHATPAY_NOTIFY_URL=None, WECHATPAY_APIV3_KEY=None, **_ssm_variables(fake_ssm))
    result = _action()
    assert "checks" in result     # a configuration that does not load still gets its report
    _expect(result, fail={"ssm", "config.reconcile", "notify_url"}, skip={"apiv3_key"})
    assert "lacks WECHATPAY_NOTIFY_URL (needed by reconcile)" in _message(result, "ssm")
    _assert_no_secret(json.dumps(result, ensure_ascii=False), _secrets(environ, SECRET_ID, SECRET_KEY, TOKEN))


def test_an_unreadable_ssm_secret(deployment, fake_ssm):
    deployment(**_ssm_variables(fake_ssm, name="cloudpay/nosuch"))
    result = _action()
    _expect(result, fail={"ssm"}, skip={"apiv3_key"})
    assert "cannot be read" in _message(result, "ssm") and "ResourceNotFound" in _message(result, "ssm")


def test_a_missing_cos_bucket(deployment):
    deployment(COS_BUCKET="bills-nosuchbucket-1250000000")
    result = _action()
    _expect(result, fail={"cos"})
    assert "bucket bills-nosuchbucket-1250000000 does not exist in ap-guangzhou" in _message(result, "cos")


def test_a_clock_120_s_off_is_a_warning(deployment, simulator):
    simulator.configure(clock_offset_s=120)
    result = _action()
    _expect(result, warn={"clock"})
    assert re.search(r"\b(119|120|121) s behind WeChat Pay's", _message(result, "clock"))
    simulator.configure(clock_offset_s=-400)
    result = _action()
    # Past 300 s WeChat Pay refuses the request, and its answer is refused here too.
    _expect(result, fail={"clock", "merchant_key", "wechatpay_keys"})
    assert "(see clock)" in _message(result, "wechatpay_keys")
    assert re.search(r"\b(399|400|401) s ahead of WeChat Pay's", _message(result, "clock"))
    assert re.search(r"clock is (399|400|401) s off", _message(result, "merchant_key"))


def test_a_timeout_too_short_for_reconcile(deployment):
    result = _action({"time_limit_in_ms": 10_000, "request_id": "doctor"})
    _expect(result, fail={"timeout"})
    assert "a timeout of 10 s; it needs at least 30 s" in _message(result, "timeout")
    _expect(_action({"request_id": "doctor"}), skip=HEALTHY_SKIPS | {"timeout"})


def test_the_shop_is_down(deployment, shop):
    shop.stop()
    result = _action()
    _expect(result, fail={"fulfilment"})
    assert "refused the connection" in _message(result, "fulfilment")


def test_the_shop_verifies_with_another_secret(deployment, shop):
    environ = deployment(FULFILMENT_WEBHOOK_SECRET="not-the-shops-secret-0123456789abcdef")
    result = _action()
    _expect(result, fail={"fulfilment"})
    assert "answered 400" in _message(result, "fulfilment") and "FULFILMENT_WEBHOOK_SECRET" in \
        _message(result, "fulfilment")
    assert [delivery.rejected for delivery in shop.deliveries] == ["WEBHOOK_SIGNATURE_INVALID"]
    _assert_no_secret(json.dumps(result), _secrets(environ))


def test_the_shop_redirects(deployment, shop):
    from tests.shop_receiver import Answer

    shop.answer(Answer(302, location="https://elsewhere.example/hooks"))
    result = _action()
    _expect(result, fail={"fulfilment"})
    assert "answered 302, a redirect" in _message(result, "fulfilment") and shop.redirect_hits == 0


def test_a_mini_program_not_trade_managed(deployment, simulator):
    simulator.configure(trade_managed=False)
    result = _action()
    _expect(result, fail={"shipping"})
    assert "not enrolled in WeChat's shipping management; uploads will be refused" in _message(result, "shipping")


def test_a_wrong_app_secret_for_shipping(deployment):
    deployment(WECHAT_APPSECRET="0123456789abcdef0123456789abcdef")
    result = _action()
    _expect(result, fail={"shipping"})
    assert "WECHAT_APPSECRET is not this mini-program's app secret" in _message(result, "shipping")


def test_features_that_are_off_are_skipped(deployment):
    deployment(FULFILMENT_WEBHOOK_URL=None, FULFILMENT_WEBHOOK_SECRET=None, SHIPPING_MODE=None, COS_BUCKET=None)
    _expect(_action(), skip=HEALTHY_SKIPS | {"fulfilment", "shipping", "cos"})


def test_the_action_refuses_unknown_fields(deployment):
    result = load_function("reconcile")({"action": "doctor", "verbose": True}, CONTEXT)
    assert result == {"ok": False, "error": {"code": "UNKNOWN_FIELD", "message": "unknown field(s): verbose"}}


def test_configuration_problems_never_carry_the_value():
    """Every variable set to a wrong value of its own: each is named, none is shown."""
    from shared.config import _VARIABLES, parse_config

    bad = {name: f"BAD-{name}-value-never-shown" for name in _VARIABLES}
    for role in doctor.ROLES:
        _, problems = parse_config(role, bad)
        assert {problem.variable for problem in problems} >= {"MONGODB_URI", "WECHAT_APPID", "WECHATPAY_MCHID"}
        for problem in problems:
            assert not any(value in str(problem) for value in bad.values()), problem


# --- the runner ------------------------------------------------------------------------------

def test_a_check_that_crashes_is_a_fail_and_the_others_still_run():
    def crash(checkup):
        raise RuntimeError("boom with details nobody should see")

    checks = (doctor.Check("first", crash), doctor.Check("second", lambda checkup: (doctor.OK, "fine")))
    result = doctor.run(doctor.Checkup({}), checks)
    assert result == {"ok": False, "checks": [
        {"item": "first", "status": "fail", "message": "the check itself failed (RuntimeError)"},
        {"item": "second", "status": "ok", "message": "fine"}]}


def test_a_message_that_would_carry_a_secret_is_scrubbed():
    pem = test_keys.key_pair("doctor-scrub").private_pem
    environ = {"WECHATPAY_APIV3_KEY": "apiv3-secret-value-0123456789ab", "WECHATPAY_PRIVATE_KEY": pem,
               "MONGODB_URI": f"mongodb://u:{MONGO_PASSWORD}@h/"}
    pem_line = pem.splitlines()[5]
    leaky = doctor.Check("leaky", lambda checkup: (doctor.WARN, f"key {environ['WECHATPAY_APIV3_KEY']} "
                                                                f"password {MONGO_PASSWORD} pem {pem_line}"))
    result = doctor.run(doctor.Checkup(environ), (leaky,))
    assert result["checks"][0]["message"] == "key *** password *** pem ***"


# --- the command line ---------------------------------------------------------------------------

def _serverless(root: Path, **timeouts: int) -> None:
    for function, timeout in timeouts.items():
        folder = root / f"scf-{function}"
        folder.mkdir(exist_ok=True)
        (folder / "serverless.yml").write_text(
            f"component: scf\nname: {function}\ninputs:\n  name: cloudpay-${{stage}}-{function}\n"
            f"  timeout: {timeout}\n  environment:\n    variables:\n      MONGODB_URI: ${{env:MONGODB_URI}}\n",
            encoding="utf-8")


def _cli(capsys) -> tuple[int, list[str], str]:
    code = admin_main(["doctor"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.out + captured.err


def _line_statuses(lines: list[str]) -> dict[str, str]:
    return {line[5:].split()[0]: line[:5].strip() for line in lines}


def test_the_cli_checks_every_role_and_exits_0_when_healthy(deployment, capsys, tmp_path, monkeypatch):
    environ = deployment()
    _serverless(tmp_path, prepare=10, callback=5, reconcile=120)
    monkeypatch.chdir(tmp_path)
    code, lines, shown = _cli(capsys)
    assert code == 0, "\n".join(lines)
    statuses = _line_statuses(lines)
    assert list(statuses) == ["ssm", "config.prepare", "config.callback", "config.reconcile", *ACTION_ITEMS[2:]]
    assert {item for item, status in statuses.items() if status != "OK"} == HEALTHY_SKIPS
    assert all(statuses[item] == "SKIP" for item in HEALTHY_SKIPS)
    [timeout] = [line for line in lines if line[5:].startswith("timeout")]
    assert "scf-prepare/serverless.yml, scf-callback/serverless.yml, scf-reconcile/serverless.yml agree" in timeout
    assert lines[0].startswith("SKIP ssm") and any(line.startswith("OK   config.prepare") for line in lines)
    _assert_no_secret(shown, _secrets(environ))


def test_the_cli_names_every_configuration_problem_and_exits_1(deployment, capsys, tmp_path, monkeypatch):
    environ = deployment(ORDER_TOKEN_SECRET=None, ORDER_TTL_SECONDS="5", WECHATPAY_APIV3_KEY="apiv3-BAD-x")
    monkeypatch.chdir(tmp_path)
    code, lines, shown = _cli(capsys)
    assert code == 1
    statuses = _line_statuses(lines)
    assert (statuses["config.prepare"], statuses["config.callback"], statuses["config.reconcile"]) == \
        ("FAIL", "FAIL", "FAIL")
    [prepare] = [line for line in lines if line[5:].startswith("config.prepare")]
    for words in ("WECHATPAY_APIV3_KEY: must be exactly 32 bytes (got 11)",
                  "ORDER_TOKEN_SECRET: is required but not set", "ORDER_TTL_SECONDS: must be between 60 and 7776000"):
        assert words in prepare
    assert statuses["merchant_key"] == "OK" and statuses["mongodb"] == "OK"   # the rest still checked
    _assert_no_secret(shown, _secrets(environ))


@pytest.mark.parametrize("timeouts, status, words", [
    ({"reconcile": 10}, "FAIL", "scf-reconcile/serverless.yml gives reconcile a timeout of 10 s; it needs at least 30"),
    ({"callback": 3, "prepare": 10}, "FAIL", "gives callback a timeout of 3 s; it needs at least 4"),
    ({"prepare": 15}, "WARN", "gives prepare 15 s, while the handlers assume 10 s"),
    ({}, "OK", "no scf-*/serverless.yml here to compare"),
])
def test_the_cli_compares_the_serverless_timeouts(deployment, capsys, tmp_path, monkeypatch, timeouts, status,
                                                  words):
    _serverless(tmp_path, **timeouts)
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _cli(capsys)
    [line] = [line for line in lines if line[5:].startswith("timeout")]
    assert line.startswith(status) and words in line, line
    assert code == (1 if status == "FAIL" else 0)


def test_the_cli_without_pyyaml_says_it_did_not_read_the_files(deployment, capsys, tmp_path, monkeypatch):
    _serverless(tmp_path, reconcile=10)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "yaml", None)    # import yaml fails, as where PyYAML is not installed
    code, lines, _ = _cli(capsys)
    [line] = [line for line in lines if line[5:].startswith("timeout")]
    assert line.startswith("WARN") and "PyYAML is not installed" in line and code == 0


def test_the_cli_as_a_process_exits_1_and_shows_no_secret(deployment, fake_ssm, tmp_path):
    """`python -m shared.admin doctor` in a process of its own, with the variables in its
    environment: a broken item is exit code 1; nothing secret on stdout or stderr."""
    app_secret = deployment()["WECHAT_APPSECRET"]
    fake_ssm.secrets[("cloudpay/prod", "v1")] = json.dumps({"WECHAT_APPSECRET": app_secret})
    environ = deployment(WECHAT_APPSECRET=None, COS_BUCKET="bills-nosuchbucket-1250000000",
                         **_ssm_variables(fake_ssm))
    inherited = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "TMPDIR")}
    done = subprocess.run([sys.executable, "-m", "shared.admin", "doctor"], cwd=tmp_path,
                          env={**inherited, **environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    statuses = _line_statuses(done.stdout.splitlines())
    assert statuses["cos"] == "FAIL" and statuses["ssm"] == "OK" and statuses["shipping"] == "OK"
    assert {item for item, status in statuses.items() if status != "OK"} == {"cos", "apiv3_key"}
    assert '"event"' in done.stderr and '"event"' not in done.stdout    # the log lines go to stderr
    _assert_no_secret(done.stdout + done.stderr, _secrets(environ, app_secret, SECRET_ID, SECRET_KEY, TOKEN))
