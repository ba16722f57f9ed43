"""The WeChat Pay simulator: import point and command line.

    from devtools.wechatpay_simulator import Simulator        # see devtools/simulator/

    python -m devtools.wechatpay_simulator serve --host 127.0.0.1 --port 8090 \\
        --keys-dir .local/keys --retry-factor 0.01 [--key-mode public_key|certificate|switch]
        prints `export NAME='value'` lines for the functions, then serves until Ctrl-C
        (--key-mode: how it signs, and the matching variables; default public_key)
    python -m devtools.wechatpay_simulator pay OTN [--drop] [--duplicates N] [--delay-ms MS]
    python -m devtools.wechatpay_simulator fail OTN
    python -m devtools.wechatpay_simulator expire OTN [--close]
    python -m devtools.wechatpay_simulator refund-complete OUT_REFUND_NO [--status SUCCESS|ABNORMAL|CLOSED] [--drop]
    python -m devtools.wechatpay_simulator orders [OTN]
    python -m devtools.wechatpay_simulator deliveries [--out-trade-no OTN]
    python -m devtools.wechatpay_simulator counters | reset
    python -m devtools.wechatpay_simulator shipping [TRANSACTION_ID]   (order shipping records)
    python -m devtools.wechatpay_simulator keys [--mode public_key|certificate|switch] [--rollout 0.1]
    python -m devtools.wechatpay_simulator rotate-cert [--valid-days 1825]
    python -m devtools.wechatpay_simulator retire-cert SERIAL
The control commands talk to a running simulator: `--url` (default $SIM_URL, else
http://127.0.0.1:8090).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

from devtools.sim_keys import KEY_MODES
from devtools.simulator import (
    RETRY_SCHEDULE_S,
    SimError,
    Simulator,
    TradeBill,
    format_yuan,
    openid_for,
    parse_trade_bill,
    yuan_to_fen,
)

__all__ = ["RETRY_SCHEDULE_S", "SimError", "Simulator", "TradeBill", "format_yuan", "main", "openid_for",
           "parse_trade_bill", "shell_exports", "yuan_to_fen"]

DEFAULT_URL = "http://127.0.0.1:8090"
CONTROL_TIMEOUT_S = 130.0


def shell_exports(environ: dict[str, str]) -> str:
    """`export NAME='value'` lines; values single-quoted, so PEM newlines stay real newlines."""
    lines = []
    for name, value in environ.items():
        quoted = "'" + value.replace("'", "'\"'\"'") + "'"
        lines.append(f"export {name}={quoted}")
    return "\n".join(lines)


# --- serve ------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    from devtools.sim_keys import load_or_create

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    keys = load_or_create(Path(args.keys_dir))
    simulator = Simulator(keys, retry_factor=args.retry_factor, auto_refund_ms=args.auto_refund_ms)
    simulator.start(args.host, args.port)
    simulator.set_key_mode(args.key_mode)
    print(f"# WeChat Pay simulator on {simulator.url} (control API under {simulator.url}/_sim/)")
    print(f"# Key mode: {args.key_mode} (a reset goes back to public_key)")
    print("# Environment for the functions:")
    environ = keys.function_environ(simulator.url, args.notify_url, args.mongodb_uri, key_mode=args.key_mode)
    print(shell_exports(environ), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    simulator.stop()
    print("# simulator stopped", flush=True)
    return 0


# --- control commands -------------------------------------------------------------------

def _control(url: str, method: str, path: str, body: dict | None = None):
    if urlsplit(url).scheme not in ("http", "https"):
        raise SystemExit(f"--url must be http(s): {url}")
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,  # noqa: S310 - http(s) only
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT_S) as response:  # noqa: S310 - scheme checked
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{error.code}: {error.read().decode('utf-8', 'replace')}") from None
    except urllib.error.URLError as error:
        raise SystemExit(f"cannot reach the simulator at {url}: {error.reason}") from None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _run_control(args: argparse.Namespace):
    command = args.command
    if command == "pay":
        body = {"notify": "drop" if args.drop else "send", "duplicates": args.duplicates, "delay_ms": args.delay_ms}
        return _control(args.url, "POST", f"/_sim/orders/{_segment(args.out_trade_no)}/pay", body)
    if command == "fail":
        return _control(args.url, "POST", f"/_sim/orders/{_segment(args.out_trade_no)}/fail", {})
    if command == "expire":
        return _control(args.url, "POST", f"/_sim/orders/{_segment(args.out_trade_no)}/expire", {"close": args.close})
    if command == "refund-complete":
        body = {"status": args.status, "notify": "drop" if args.drop else "send"}
        return _control(args.url, "POST", f"/_sim/refunds/{_segment(args.out_refund_no)}/complete", body)
    if command == "orders":
        suffix = f"/{_segment(args.out_trade_no)}" if args.out_trade_no else ""
        return _control(args.url, "GET", f"/_sim/orders{suffix}")
    if command == "deliveries":
        query = f"?out_trade_no={quote(args.out_trade_no)}" if args.out_trade_no else ""
        return _control(args.url, "GET", f"/_sim/deliveries{query}")
    if command == "counters":
        return _control(args.url, "GET", "/_sim/counters")
    if command == "shipping":
        suffix = f"/{_segment(args.transaction_id)}" if args.transaction_id else ""
        return _control(args.url, "GET", f"/_sim/shipping{suffix}")
    if command == "reset":
        return _control(args.url, "POST", "/_sim/reset", {})
    if command == "keys":
        if args.mode is None:
            if args.rollout is not None:
                raise SystemExit("--rollout needs --mode switch")
            return _control(args.url, "GET", "/_sim/keys")
        body = {"mode": args.mode} if args.rollout is None else {"mode": args.mode, "rollout": args.rollout}
        return _control(args.url, "POST", "/_sim/keys", body)
    if command == "rotate-cert":
        return _control(args.url, "POST", "/_sim/keys/rotate", {"valid_days": args.valid_days})
    if command == "retire-cert":
        return _control(args.url, "POST", "/_sim/keys/retire", {"serial": args.serial})
    raise SystemExit(f"unknown command {command}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.wechatpay_simulator",
                                     description="Local WeChat Pay APIv3 simulator")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the simulator until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--keys-dir", default=".local/keys", help="key material, created on first run")
    serve.add_argument("--retry-factor", type=float, default=1.0,
                       help="multiplies WeChat's retry schedule (0.01: 15 s -> 0.15 s)")
    serve.add_argument("--auto-refund-ms", type=int, default=None,
                       help="complete refunds automatically after this many ms")
    serve.add_argument("--notify-url", default="http://127.0.0.1:8080/callback",
                       help="WECHATPAY_NOTIFY_URL printed for the functions")
    serve.add_argument("--mongodb-uri", default="mongodb://127.0.0.1:27017", help="MONGODB_URI printed")
    serve.add_argument("--key-mode", default="public_key", choices=list(KEY_MODES),
                       help="sign with the public key, a platform certificate, or both (the switch)")
    serve.add_argument("--verbose", action="store_true", help="log requests and deliveries")

    def control(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--url", default=os.environ.get("SIM_URL", DEFAULT_URL))
        return sub

    pay = control("pay", "the user pays the order")
    pay.add_argument("out_trade_no")
    pay.add_argument("--drop", action="store_true", help="lose the notification")
    pay.add_argument("--duplicates", type=int, default=0)
    pay.add_argument("--delay-ms", type=int, default=0)
    control("fail", "the payment fails (PAYERROR)").add_argument("out_trade_no")
    expire = control("expire", "time passes beyond time_expire")
    expire.add_argument("out_trade_no")
    expire.add_argument("--close", action="store_true", help="also mark it CLOSED")
    refund = control("refund-complete", "the refund finishes")
    refund.add_argument("out_refund_no")
    refund.add_argument("--status", default="SUCCESS", choices=["SUCCESS", "ABNORMAL", "CLOSED"])
    refund.add_argument("--drop", action="store_true", help="lose the notification")
    control("orders", "orders the simulator knows").add_argument("out_trade_no", nargs="?")
    control("deliveries", "notification attempts").add_argument("--out-trade-no")
    control("counters", "request counters")
    control("reset", "forget everything but the keys")
    control("shipping", "order shipping uploads and states").add_argument("transaction_id", nargs="?")
    keys = control("keys", "the key mode and platform certificates; --mode changes the mode")
    keys.add_argument("--mode", choices=list(KEY_MODES))
    keys.add_argument("--rollout", type=float, help="switch mode: the public key's share, 0.0..1.0")
    rotate = control("rotate-cert", "issue a new signing platform certificate")
    rotate.add_argument("--valid-days", type=int, default=1825)
    control("retire-cert", "remove a platform certificate").add_argument("serial")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    print(json.dumps(_run_control(args), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
