"""`python -m shared.admin ssm-secret`: the SSM secret's JSON from the merchant's files (issue 14)."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared import ssm_secret
from shared.config import load_config
from shared.env_file import format_env_line, read_env_file
from tests import keys

ROOT = Path(__file__).resolve().parent.parent
APPSECRET = "0123456789abcdef0123456789abcdef"
TOKEN_SECRET = "order-token-secret-0123456789abcdef-xyz"
URI = "mongodb://mongouser:s3cr3t-pa55@10.0.0.10:27017/?authSource=admin"


@pytest.fixture
def files(tmp_path):
    key = tmp_path / "apiclient_key.pem"
    key.write_text(keys.merchant_keys().private_pem)
    env = tmp_path / ".env"
    env.write_text(f'# deploy variables\nMONGODB_URI={URI}\nWECHAT_APPSECRET="{APPSECRET}"\n'
                   f"WECHATPAY_APIV3_KEY='{keys.APIV3_KEY}'\nORDER_TOKEN_SECRET={TOKEN_SECRET}\n"
                   "FULFILMENT_WEBHOOK_URL=\nFULFILMENT_WEBHOOK_SECRET=unused-because-no-url-0123456789abcdef\n"
                   f"WECHAT_APPID={keys.APPID}\n")
    return key, env, tmp_path


def _run(*argv, environ=None):
    """The command in this process, with an empty environment unless given one."""
    parser = argparse.ArgumentParser()
    ssm_secret.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = ssm_secret.run(parser.parse_args(list(argv)), environ=environ or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_the_secret_holds_every_secret_checked_and_is_written_0600(files):
    key, env, folder = files
    target = folder / "ssm-secret.json"
    code, out, err = _run("--private-key", str(key), "--env-file", str(env), "--out", str(target))
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    values = json.loads(target.read_text())
    assert values == {"MONGODB_URI": URI, "WECHAT_APPSECRET": APPSECRET, "WECHATPAY_PRIVATE_KEY":
                      keys.merchant_keys().private_pem, "WECHATPAY_APIV3_KEY": keys.APIV3_KEY,
                      "ORDER_TOKEN_SECRET": TOKEN_SECRET}   # no webhook secret without a webhook URL
    # Laid over the rest of the configuration, every function starts.
    rest = keys.make_environ()
    for name in values:
        rest.pop(name, None)
    for role in ("prepare", "callback", "reconcile"):
        load_config(role, {**rest, **values})
    for secret in (URI, APPSECRET, keys.APIV3_KEY, TOKEN_SECRET, "PRIVATE KEY"):
        assert secret not in out + err                      # names and a size, never a value
    assert "5 values" in err and "WECHATPAY_PRIVATE_KEY" in err


def test_an_existing_file_is_never_overwritten(files):
    key, env, folder = files
    target = folder / "ssm-secret.json"
    target.write_text("keep me")
    code, _, err = _run("--private-key", str(key), "--env-file", str(env), "--out", str(target))
    assert code == 2 and "never overwritten" in err
    assert target.read_text() == "keep me"


def test_stdout_and_one_function_only(files):
    key, env, _ = files
    code, out, err = _run("--private-key", str(key), "--env-file", str(env), "--out", "-", "--function", "callback")
    assert code == 0, err
    assert json.loads(out) == {"MONGODB_URI": URI, "WECHATPAY_APIV3_KEY": keys.APIV3_KEY}   # callback reads no more


@pytest.mark.parametrize(("line", "variable"), [
    ("WECHATPAY_APIV3_KEY=too-short", "WECHATPAY_APIV3_KEY"),
    ("MONGODB_URI=http://not-mongo", "MONGODB_URI"),
    ("WECHAT_APPSECRET=", "WECHAT_APPSECRET"),
])
def test_a_missing_or_malformed_value_is_named_and_nothing_is_written(files, line, variable):
    key, env, folder = files
    name = line.split("=", 1)[0]
    kept = [existing for existing in env.read_text().splitlines() if not existing.startswith(name + "=")]
    env.write_text("\n".join(kept + [line]) + "\n")
    target = folder / "out.json"
    code, out, err = _run("--private-key", str(key), "--env-file", str(env), "--out", str(target))
    assert code == 2 and variable in err, err
    assert not target.exists()
    assert "too-short" not in err


def test_a_broken_private_key_is_refused(files):
    key, env, folder = files
    key.write_text(keys.merchant_keys().private_pem.replace("A", "B", 40))
    code, _, err = _run("--private-key", str(key), "--env-file", str(env), "--out", str(folder / "x.json"))
    assert code == 2 and "WECHATPAY_PRIVATE_KEY" in err


def test_an_order_token_secret_can_be_generated(files):
    key, env, _ = files
    env.write_text("\n".join(line for line in env.read_text().splitlines()
                             if not line.startswith("ORDER_TOKEN_SECRET")) + "\n")
    assert _run("--private-key", str(key), "--env-file", str(env), "--out", "-")[0] == 2
    code, out, _ = _run("--private-key", str(key), "--env-file", str(env), "--out", "-",
                        "--generate-order-token-secret")
    assert code == 0 and len(json.loads(out)["ORDER_TOKEN_SECRET"]) >= 32


def test_the_admin_command_writes_the_file_and_logs_nothing(files):
    key, env, folder = files
    target = folder / "cli.json"
    done = subprocess.run([sys.executable, "-m", "shared.admin", "ssm-secret", "--private-key", str(key),
                           "--env-file", str(env), "--out", str(target)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""                                       # nothing but the file holds values
    assert json.loads(target.read_text())["WECHATPAY_APIV3_KEY"] == keys.APIV3_KEY
    assert keys.APIV3_KEY not in done.stderr and URI not in done.stderr


def test_the_env_file_reader_matches_dotenv_quoting(tmp_path):
    path = tmp_path / "e"
    path.write_text('A="x\\ny"\nB=\'x\\ny\'\nC=plain # note\n# D=commented\nexport E=1\nF=\n')
    assert read_env_file(path) == {"A": "x\ny", "B": "x\\ny", "C": "plain", "E": "1", "F": ""}
    example = read_env_file(ROOT / ".env.example")
    assert example["WECHATPAY_PRIVATE_KEY"].startswith("-----BEGIN PRIVATE KEY-----\n")


def test_env_lines_read_back_as_written(tmp_path):
    values = {"WECHATPAY_PRIVATE_KEY": keys.merchant_keys().private_pem, "PLAIN": "a b", "EMPTY": ""}
    path = tmp_path / "round.env"
    path.write_text("".join(format_env_line(name, value) for name, value in values.items()))
    assert read_env_file(path) == values
    with pytest.raises(ValueError):
        format_env_line("X", 'has "quotes"')
