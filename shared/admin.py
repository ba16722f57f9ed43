"""Manual operations, shared by the `reconcile` function's invocation events and the CLI.

Event / command                                   result
{"action": "refund", "outTradeNo", "amount",      the refund record (status PROCESSING or
 "reason"?, "outRefundNo"?}                        SUCCESS), idempotent on outRefundNo
{"action": "reconcile", "billDate": "YYYY-MM-DD"} the bill comparison counts
{"action": "sweep"}                               one sweep now (what the timer does)
{"action": "setup"}                               every MongoDB index created now
{"action": "redeliver", "eventId"}                deliver a fact to the shop again, now
{"action": "ship", "outTradeNo", "logisticsType", the shipping upload (SHIPPING_MODE virtual
 "shipping": [{"trackingNo", "expressCompany",     or manual), see shared/shipping.py
 "itemDesc", "receiverContact"?}], "update"?}
{"action": "doctor"}                              the deployment check: {"ok", "checks": [{"item",
                                                  "status": ok|warn|fail|skip, "message"}]},
                                                  see shared/doctor.py

CLI: python -m shared.admin refund OUT_TRADE_NO AMOUNT_FEN [--reason R] [--out-refund-no N]
     python -m shared.admin reconcile YYYY-MM-DD [--force]
     python -m shared.admin sweep
     python -m shared.admin setup
     python -m shared.admin redeliver EVENT_ID
     python -m shared.admin ship OUT_TRADE_NO --logistics-type N --item-desc TEXT
                            [--tracking-no T --express-company C [--receiver-contact 189****1234]] [--update]
     python -m shared.admin doctor      (every role; one line per check; exit 1 if one failed)
     python -m shared.admin ssm-secret --private-key apiclient_key.pem [--env-file .env] --out FILE|-
     python -m shared.admin products load FILE.json|FILE.csv   (integer fen prices; all or nothing)
It reads the same environment variables as the function (see README), or the file named
by CLOUDPAY_ENV_FILE; without MONGODB_URI it uses the running `make run` stack's
(.local/stack.env).  ssm-secret only reads files and writes the secret's JSON.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date
from pathlib import Path

from shared.errors import BadRequest, CloudPayError
from shared.log import flush as flush_logs
from shared.log import log, where
from shared.store.port import INDEXES

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _bill_date(value) -> str:
    """A real calendar date written YYYY-MM-DD (2026-13-45 is refused, not sent on)."""
    if isinstance(value, str) and _DATE_RE.match(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise BadRequest("billDate must be a calendar date YYYY-MM-DD", code="INVALID_BILL_DATE")


def handle_event(instance, event, context=None) -> dict:
    """The `reconcile` function: a timer event sweeps, an action event runs the action.

    Always answers `{"ok": ...}`: errors are results, never exceptions, so SCF never
    shows a traceback and a timer that fires during an outage simply reports it."""
    try:
        return _handle_event(instance, event, context)
    finally:
        flush_logs()


def _handle_event(instance, event, context) -> dict:
    if not isinstance(event, dict):
        return error_result(CloudPayError("the event must be a JSON object", code="BAD_EVENT"))
    try:
        if event.get("action") == "doctor":
            # Before anything is built: the doctor reports a configuration that does not load.
            unknown = set(event) - {"action"}
            if unknown:
                raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
            from shared.doctor import for_function

            return for_function(instance, context)
        reconciler = instance.reconciler
        if event.get("Type") == "Timer":
            return {"ok": True, "sweep": reconciler.sweep(context)}  # it delivers what it wrote
        # The facts an action writes (a refund, a shipment) are delivered before it answers.
        return instance.delivering(lambda: run_action(reconciler, event, context))
    except CloudPayError as error:
        log("reconcile.failed", level="error", code=error.code, error=error.message)
        return error_result(error)
    except Exception as exc:  # the last line of defence, as in shared.http_event.serve
        log("reconcile.crash", level="error", error=type(exc).__name__, where=where(exc))
        return error_result(CloudPayError("internal error; it has been logged"))


def run_action(reconciler, event: dict, context=None) -> dict:
    action = event.get("action")
    if action == "refund":
        unknown = set(event) - {"action", "outTradeNo", "amount", "reason", "outRefundNo"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        out_trade_no = event.get("outTradeNo")
        if not isinstance(out_trade_no, str) or not out_trade_no:
            raise BadRequest("outTradeNo is required", code="INVALID_ORDER_NO")
        refund = reconciler.refunds.request_refund(out_trade_no, event.get("amount"), event.get("reason"),
                                                   event.get("outRefundNo"))
        return {"ok": True, "refund": refund}
    if action == "reconcile":
        bill_date = _bill_date(event.get("billDate"))
        return {"ok": True, **reconciler.reconcile_bill(bill_date, force=event.get("force") is True)}
    if action == "sweep":
        return {"ok": True, "sweep": reconciler.sweep(context)}
    if action == "setup":
        # Every index at once (deployment set-up); the functions also create each
        # collection's indexes at first use, so this is a convenience, not a requirement.
        reconciler.store.ensure_indexes()
        return {"ok": True, "indexes": {name: [index.name for index in indexes] for name, indexes in INDEXES.items()}}
    if action == "redeliver":
        unknown = set(event) - {"action", "eventId"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="UNKNOWN_FIELD")
        if reconciler.relay is None:
            raise BadRequest("no outbox relay is configured", code="FULFILMENT_NOT_CONFIGURED")
        return {"ok": True, "delivery": reconciler.relay.redeliver(event.get("eventId"))}
    if action == "ship":
        if reconciler.shipping is None:
            raise BadRequest("SHIPPING_MODE is off: set it to manual (or virtual) to upload shipping information",
                             code="SHIPPING_OFF")
        return {"ok": True, "shipment": reconciler.shipping.ship(event)}
    raise BadRequest("action must be refund, reconcile, sweep, setup, redeliver, ship or doctor",
                     code="UNKNOWN_ACTION")


def error_result(error: CloudPayError) -> dict:
    return {"ok": False, "error": {"code": error.code, "message": error.message}}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shared.admin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    refund = sub.add_parser("refund", help="refund part or all of a paid order")
    refund.add_argument("out_trade_no")
    refund.add_argument("amount", type=int, help="amount in fen (integer)")
    refund.add_argument("--reason")
    refund.add_argument("--out-refund-no", help="your refund number (idempotency key)")
    reconcile = sub.add_parser("reconcile", help="compare a day's WeChat Pay bill with the store")
    reconcile.add_argument("bill_date", help="YYYY-MM-DD")
    reconcile.add_argument("--force", action="store_true", help="redo a day already reconciled")
    sub.add_parser("sweep", help="run one sweep now")
    sub.add_parser("setup", help="create every MongoDB index now (also done lazily at first use)")
    redeliver = sub.add_parser("redeliver", help="deliver a fact to the shop's webhook again")
    redeliver.add_argument("event_id", help="the fact's id, e.g. order.paid:<outTradeNo>")
    ship = sub.add_parser("ship", help="upload an order's shipping information to WeChat")
    ship.add_argument("out_trade_no")
    ship.add_argument("--logistics-type", type=int, required=True,
                      help="1 express, 2 same-city, 3 virtual, 4 self-pickup")
    ship.add_argument("--item-desc", required=True, help="what was shipped (up to 120 characters)")
    ship.add_argument("--tracking-no")
    ship.add_argument("--express-company", help="WeChat's delivery company code, e.g. SF, ZTO, YTO")
    ship.add_argument("--receiver-contact", help="masked phone, e.g. 189****1234 (SF needs it)")
    ship.add_argument("--update", action="store_true", help="the one correction WeChat allows")
    from shared import ssm_secret

    ssm_secret.add_arguments(sub.add_parser("ssm-secret", help="build the SSM secret's JSON from your key files"))
    sub.add_parser("doctor", help="check the deployment: every configuration item of every function, "
                                  "one line each (exit 1 if one failed)")
    products = sub.add_parser("products", help="the catalog").add_subparsers(dest="products", required=True)
    products.add_parser("load", help="load a JSON or CSV catalog (integer fen prices)").add_argument("file")
    args = parser.parse_args(argv)
    from shared import log as log_module

    log_module.set_sink(sys.stderr)   # stdout holds the command's answer alone
    if args.command == "ssm-secret":   # local only: no store, no WeChat Pay
        return ssm_secret.run(args)
    _use_local_stack_environ()
    if args.command == "doctor":        # its own report, one line per check
        from shared.doctor import cli

        return cli()
    if args.command == "products":
        return _load_products(args.file)

    event: dict = {"action": args.command}
    if args.command == "refund":
        event.update(outTradeNo=args.out_trade_no, amount=args.amount)
        if args.reason:
            event["reason"] = args.reason
        if args.out_refund_no:
            event["outRefundNo"] = args.out_refund_no
    elif args.command == "reconcile":
        event.update(billDate=args.bill_date, force=args.force)
    elif args.command == "redeliver":
        event["eventId"] = args.event_id
    elif args.command == "ship":
        parcel = {"itemDesc": args.item_desc}
        for field, value in (("trackingNo", args.tracking_no), ("expressCompany", args.express_company),
                             ("receiverContact", args.receiver_contact)):
            if value is not None:
                parcel[field] = value
        event.update(outTradeNo=args.out_trade_no, logisticsType=args.logistics_type, shipping=[parcel],
                     update=args.update)
    from shared import runtime

    result = handle_event(runtime.instance("reconcile"), event)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0 if result.get("ok") else 1


# `make run` writes the local stack's environment here (devtools/local_stack.py).
LOCAL_STACK_ENV = Path(".local") / "stack.env"
ENV_FILE_VAR = "CLOUDPAY_ENV_FILE"


def _use_local_stack_environ() -> None:
    """The environment to run against: CLOUDPAY_ENV_FILE when set; else, with no
    MONGODB_URI in the environment, the running local stack's (.local/stack.env);
    else the environment itself."""
    import os

    named = os.environ.get(ENV_FILE_VAR)
    path = Path(named) if named else LOCAL_STACK_ENV
    if not named and (os.environ.get("MONGODB_URI") or not path.is_file()):
        return
    if not path.is_file():
        raise SystemExit(f"{ENV_FILE_VAR}={named}: no such file")
    from shared import runtime
    from shared.env_file import read_env_file

    print(f"using the environment in {path}", file=sys.stderr)
    runtime.configure({**os.environ, **read_env_file(path)})


def _load_products(file: str) -> int:
    from shared import runtime
    from shared.catalog import CatalogInvalid, load_catalog, read_catalog

    try:
        products = read_catalog(Path(file))
        result = load_catalog(runtime.instance("store").store, products)
    except CatalogInvalid as error:
        print(error.message, file=sys.stderr)
        return 1
    except CloudPayError as error:
        print(json.dumps(error_result(error), ensure_ascii=False, indent=2))
        return 1
    print(json.dumps({"ok": True, **result}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
