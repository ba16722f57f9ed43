"""`python -m devtools.replay`: send kept WeChat Pay notifications to a callback again.

`callback` keeps every delivery whose signature verified for 7 days (the store's
`notifications`: the verifying headers, the raw body, our answer).  This reads them from
any MongoDB through the store port, and POSTs each stored body with its stored headers to
`--to`, one line per notification with the answer:

    python -m devtools.replay --from-uri mongodb://... [--db cloudpay] \\
        [--out-trade-no N] [--since 2026-12-01T00:00:00+08:00] [--last N] \\
        --to http://127.0.0.1:8080/callback [--dry-run] [--resign [--re-encrypt --apiv3-key-file FILE]]

Selection: the `--last` newest (default 20, at most 1000) of those kept, of one order
and/or received since a time, sent oldest first.  `--dry-run` lists them and sends nothing.
The URI (it may hold a password) is never printed; `REPLAY_FROM_URI` may give it instead
of the command line.  Nothing is written to that database (no indexes either): a read-only
user suffices.

A notification from production is signed with WeChat Pay's key, which a local stack does
not hold, and is older than the callback's 5 minutes, so the local callback refuses it
(401).  `--resign` signs it again with the local simulator's platform key (`--keys-dir`,
default .local/keys/, made by `make run`) and a fresh timestamp and nonce; the body is
sent as stored.  Its resource is still encrypted with production's APIv3 key, so the local
callback decrypts it only when the local stack has the same APIv3 key (else 400
DECRYPT_FAILED).  `--re-encrypt --apiv3-key-file FILE` decrypts it with production's APIv3
key (read from FILE, never a flag value, never printed) and encrypts it again with the
local one: only the resource's ciphertext and nonce change, and the plaintext (payer
openid, amounts) stays in memory.  Even then a production order is unknown locally (or
has another appid / mchid), so expect the callback's anomaly for it, not a payment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAST = 20
MAX_LAST = 1000
DEFAULT_TIMEOUT_S = 5.0      # WeChat Pay waits 5 s for an answer
MAX_TIMEOUT_S = 30.0
CHINA = timezone(timedelta(hours=8))
_ANSWER_SHOWN = 200          # characters of a refusal's message printed


class ReplayError(Exception):
    """Something the user must fix (printed, exit status 2)."""


def parse_since(text: str) -> int:
    """An ISO 8601 time with its offset (or Z) as epoch milliseconds."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ReplayError(f"--since {text!r} is not an ISO 8601 time such as 2026-12-01T00:00:00+08:00") from None
    if moment.tzinfo is None:
        raise ReplayError(f"--since {text!r} needs its offset (+08:00, or Z): a bare time is ambiguous")
    return int(moment.timestamp() * 1000)


def _bounded(kind, low, high):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.replay",
                                     description="Send kept WeChat Pay notifications to a callback again.")
    parser.add_argument("--from-uri", default=os.environ.get("REPLAY_FROM_URI"),
                        help="the MongoDB holding the notifications (default: $REPLAY_FROM_URI)")
    parser.add_argument("--db", default="cloudpay", help="its database (default cloudpay)")
    parser.add_argument("--out-trade-no", help="only this order's notifications")
    parser.add_argument("--since", help="only those received at or after this ISO 8601 time (with its offset)")
    parser.add_argument("--last", type=_bounded(int, 1, MAX_LAST), default=DEFAULT_LAST,
                        help=f"the newest N (default {DEFAULT_LAST}, at most {MAX_LAST})")
    parser.add_argument("--to", help="the callback URL to POST them to, e.g. http://127.0.0.1:8080/callback")
    parser.add_argument("--dry-run", action="store_true", help="list them; send nothing")
    parser.add_argument("--resign", action="store_true",
                        help="sign again with the local simulator's key, fresh timestamp and nonce")
    parser.add_argument("--keys-dir", default=str(ROOT / ".local" / "keys"),
                        help="the local stack's simulator keys (default .local/keys)")
    parser.add_argument("--re-encrypt", action="store_true",
                        help="decrypt with production's APIv3 key and encrypt with the local one (implies --resign)")
    parser.add_argument("--apiv3-key-file", help="production's APIv3 key, in a file (for --re-encrypt)")
    parser.add_argument("--timeout", type=_bounded(float, 0.1, MAX_TIMEOUT_S), default=DEFAULT_TIMEOUT_S,
                        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})")
    return parser


def _check_args(args) -> None:
    if not args.from_uri:
        raise ReplayError("give --from-uri (or REPLAY_FROM_URI)")
    if not args.dry_run:
        parts = urlsplit(args.to or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReplayError("give --to, the callback's http(s) URL (or --dry-run)")
    if args.re_encrypt and not args.apiv3_key_file:
        raise ReplayError("--re-encrypt needs --apiv3-key-file FILE (production's APIv3 key)")
    if args.apiv3_key_file and not args.re_encrypt:
        raise ReplayError("--apiv3-key-file is for --re-encrypt")


def read_apiv3_key(path: str) -> bytes:
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ReplayError(f"cannot read --apiv3-key-file {path}: {type(exc).__name__}") from None
    if len(key) != 32 or not key.isascii():
        raise ReplayError(f"--apiv3-key-file {path} must hold the 32-character APIv3 key")
    return key


def load_local_keys(folder: str):
    from devtools.sim_keys import IDS_FILE, load_or_create

    if not (Path(folder) / IDS_FILE).is_file():   # never make keys here: they must be the stack's
        raise ReplayError(f"no simulator keys in {folder}: start the local stack once (make run), or give --keys-dir")
    return load_or_create(Path(folder))


def resigned(headers: dict, body: bytes, keys) -> dict:
    """The stored headers, signed again by the local simulator's platform key, now."""
    from shared.wechatpay import signing

    timestamp, nonce_str = str(int(time.time())), signing.nonce(32)
    signature = signing.rsa_sign(keys.platform_private_key, signing.response_message(timestamp, nonce_str, body))
    return {"Content-Type": headers.get("Content-Type", "application/json"), "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce_str, "Wechatpay-Signature": signature,
            "Wechatpay-Serial": keys.platform_public_key_id, "Wechatpay-Signature-Type": signing.SCHEMA}


def re_encrypted(body: bytes, production_key: bytes, local_key: bytes) -> bytes:
    """The notification with its resource decrypted with `production_key` and encrypted
    again with `local_key` (new nonce); everything else as it was.  ReplayError when it
    does not decrypt (the message names no key nor plaintext)."""
    from shared.strict_json import JsonRejected, loads_object
    from shared.wechatpay import signing

    try:
        envelope = loads_object(body, "the notification")
    except JsonRejected:
        raise ReplayError("the body is not a notification (JSON object)") from None
    resource = envelope.get("resource")
    if not isinstance(resource, dict) or not all(isinstance(resource.get(k), str) for k in ("ciphertext", "nonce")):
        raise ReplayError("the notification has no encrypted resource")
    associated_data = resource.get("associated_data") or ""
    try:
        plaintext = signing.aes_gcm_decrypt(production_key, resource["nonce"], associated_data,
                                            resource["ciphertext"])
    except ValueError:
        raise ReplayError("the resource does not decrypt with the key in --apiv3-key-file") from None
    nonce_str = signing.nonce(12)
    envelope["resource"] = {**resource, "nonce": nonce_str,
                            "ciphertext": signing.aes_gcm_encrypt(local_key, nonce_str, associated_data, plaintext)}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def post(url: str, headers: dict, body: bytes, timeout: float) -> tuple[int | None, str]:
    """(status, what the answer says) or (None, the connection error); the project's own
    client: bounded, no redirects followed."""
    from shared.http import HttpClient, HttpError

    try:
        response = HttpClient().request("POST", url, body=body, headers=headers, connect_timeout=timeout,
                                        read_timeout=timeout, deadline=time.monotonic() + 2 * timeout,
                                        max_body=16 * 1024)
    except HttpError as exc:
        return None, exc.kind
    try:
        message = json.loads(response.body).get("message", "")
    except (ValueError, AttributeError):
        message = response.body.decode("utf-8", "replace")
    return response.status, str(message)[:_ANSWER_SHOWN]


def describe(doc: dict) -> str:
    received = datetime.fromtimestamp(doc["createTime"] / 1000, CHINA).isoformat(timespec="milliseconds")
    return (f"{received} {doc.get('notificationId') or '-'} {doc.get('eventType') or '-'} "
            f"{doc.get('outTradeNo') or '-'} answered {doc.get('status')} {doc.get('outcome') or ''}".rstrip())


def run(args, out) -> int:
    from shared.errors import CloudPayError
    from shared.store.mongo import MongoOrderStore
    from shared.store.port import notification_body

    _check_args(args)
    since = parse_since(args.since) if args.since else None
    keys = load_local_keys(args.keys_dir) if (args.resign or args.re_encrypt) and not args.dry_run else None
    production_key = read_apiv3_key(args.apiv3_key_file) if args.re_encrypt else None

    store = MongoOrderStore(args.from_uri, args.db, create_indexes=False)
    try:
        kept = store.list_notifications(args.out_trade_no, since, limit=args.last)
    except CloudPayError as error:
        print(f"cannot read the notifications of database {args.db!r}: {error.message}", file=out)
        return 1
    finally:
        store.close()

    refused = 0
    for doc in kept:
        line = describe(doc)
        if args.dry_run:
            print(f"{line} | dry run: not sent", file=out, flush=True)
            continue
        body, headers = notification_body(doc), dict(doc.get("headers") or {})
        try:
            if args.re_encrypt:
                body = re_encrypted(body, production_key, keys.apiv3_key.encode("ascii"))
            if keys is not None:
                headers = resigned(headers, body, keys)
        except ReplayError as problem:
            refused += 1
            print(f"{line} | not sent: {problem}", file=out, flush=True)
            continue
        status, message = post(args.to, headers, body, args.timeout)
        if status is None or not 200 <= status < 300:
            refused += 1
        shown = f"-> {status}" if status is not None else f"-> no answer ({message})"
        print(f"{line} | {'re-signed ' if keys is not None else ''}replay {shown}"
              f"{' ' + message if status is not None and message else ''}", file=out, flush=True)

    selection = ", ".join(part for part in (
        f"order {args.out_trade_no}" if args.out_trade_no else "",
        f"since {args.since}" if args.since else "", f"the newest {args.last}") if part)
    if args.dry_run:
        print(f"{len(kept)} notification(s) ({selection}) listed; nothing sent", file=out)
    else:
        print(f"{len(kept)} notification(s) ({selection}) replayed to {args.to}: "
              f"{len(kept) - refused} answered 2xx, {refused} not", file=out)
    if len(kept) == args.last:
        print(f"(--last {args.last} reached: older ones may match too)", file=out)
    return 1 if refused else 0


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        return run(args, out)
    except ReplayError as problem:
        print(f"replay: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
