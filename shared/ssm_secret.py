"""Build the SSM secret's JSON from the merchant's key files: `python -m shared.admin ssm-secret`.

The SecretString `shared.ssm` reads is a JSON object of contract variable names to
strings.  This gathers them: the private key from its PEM file, the other values from an
env file (the deploy `.env`) or the environment, each checked by the same parser the
functions use, so a malformed key fails here and not at the first payment.  The result
goes to a new file with mode 0600 or to stdout, never to a log; only the names and the
size are reported.

Create the secret with it in the SSM console (凭据管理系统, 用户自定义凭据), or with the
CreateSecret API (SecretName, VersionId, SecretString; Tencent Cloud API docs 1078/38656).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from shared.config import OPTIONAL_BY_ROLE, REQUIRED_BY_ROLE, parse_variable
from shared.env_file import read_env_file
from shared.errors import ConfigError

# The secret values of the configuration contract (shared.config.SECRET_FIELDS).
SECRET_VARIABLES = ("MONGODB_URI", "WECHAT_APPSECRET", "WECHATPAY_PRIVATE_KEY", "WECHATPAY_APIV3_KEY",
                    "ORDER_TOKEN_SECRET", "FULFILMENT_WEBHOOK_SECRET")
# Without these no function starts; the webhook secret only comes with a webhook URL.
ESSENTIAL = ("MONGODB_URI", "WECHAT_APPSECRET", "WECHATPAY_PRIVATE_KEY", "WECHATPAY_APIV3_KEY",
             "ORDER_TOKEN_SECRET")
MAX_PRIVATE_KEY_BYTES = 16 * 1024


def _variables_of(function: str | None) -> tuple[str, ...]:
    if function is None:
        return SECRET_VARIABLES
    used = set(REQUIRED_BY_ROLE[function]) | set(OPTIONAL_BY_ROLE[function])
    return tuple(name for name in SECRET_VARIABLES if name in used)


def build_secret(private_key_pem: str, source: Mapping[str, str], *, function: str | None = None,
                 generate_order_token_secret: bool = False) -> dict[str, str]:
    """The secret's JSON object.  Raises ConfigError naming what is missing or malformed
    (never a value)."""
    wanted = _variables_of(function)
    values = {name: source[name] for name in wanted if (source.get(name) or "").strip()}
    if "WECHATPAY_PRIVATE_KEY" in wanted:
        values["WECHATPAY_PRIVATE_KEY"] = private_key_pem
    if "ORDER_TOKEN_SECRET" in wanted and "ORDER_TOKEN_SECRET" not in values and generate_order_token_secret:
        values["ORDER_TOKEN_SECRET"] = secrets.token_urlsafe(32)
    if (source.get("FULFILMENT_WEBHOOK_URL") or "").strip() == "":
        values.pop("FULFILMENT_WEBHOOK_SECRET", None)
    missing = [name for name in ESSENTIAL if name in wanted and name not in values]
    if missing:
        raise ConfigError(missing[0], "is not set in the env file or the environment"
                          + (f" (nor are {', '.join(missing[1:])})" if missing[1:] else ""))
    _check(values)
    return values


def _check(values: dict[str, str]) -> None:
    for name, value in values.items():
        parse_variable(name, value, full_key_check=True)


def write_secret(values: dict[str, str], out: str) -> str:
    """Write the JSON to `out` (a new file, mode 0600) or to stdout for "-"; returns it."""
    text = json.dumps(values, ensure_ascii=False, indent=2) + "\n"
    if out == "-":
        return text
    # O_EXCL: never overwrite (or follow a link to) an existing file; 0600 from the start.
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return text


def load_private_key(path: Path) -> str:
    if not path.is_file():
        raise ConfigError("WECHATPAY_PRIVATE_KEY", f"file {path} does not exist")
    if path.stat().st_size > MAX_PRIVATE_KEY_BYTES:
        raise ConfigError("WECHATPAY_PRIVATE_KEY", f"file {path} is too large for a PEM private key")
    return path.read_text(encoding="utf-8")


# --- the command (python -m shared.admin ssm-secret) ------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--private-key", required=True, type=Path, help="the merchant's apiclient_key.pem")
    parser.add_argument("--env-file", type=Path, help="where the other secrets are (e.g. .env); else the environment")
    parser.add_argument("--out", required=True, help="a new file (written with mode 0600), or - for stdout")
    parser.add_argument("--function", choices=("prepare", "callback", "reconcile"),
                        help="only what this function reads (one secret per function)")
    parser.add_argument("--generate-order-token-secret", action="store_true",
                        help="make a random ORDER_TOKEN_SECRET if none is set")


def run(args, *, environ: Mapping[str, str] | None = None, out=None, err=None) -> int:
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    source = dict(os.environ if environ is None else environ)
    try:
        if args.env_file is not None:
            if not args.env_file.is_file():
                raise ConfigError("--env-file", f"{args.env_file} does not exist")
            source.update(read_env_file(args.env_file))
        values = build_secret(load_private_key(args.private_key), source, function=args.function,
                              generate_order_token_secret=args.generate_order_token_secret)
        text = write_secret(values, args.out)
    except ConfigError as error:
        print(f"ssm-secret: {error.message}", file=err)
        return 2
    except FileExistsError:
        print(f"ssm-secret: {args.out} exists; it is never overwritten (remove it, or choose another name)",
              file=err)
        return 2
    if args.out == "-":
        out.write(text)
    where = "stdout" if args.out == "-" else f"{args.out} (mode 0600)"
    print(f"ssm-secret: {len(values)} values, {len(text.encode())} bytes, to {where}: {', '.join(sorted(values))}",
          file=err)
    return 0
