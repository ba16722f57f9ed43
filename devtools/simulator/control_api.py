"""The control API under /_sim/: JSON in, JSON out, no merchant signature, loopback only.

Each route calls the `Simulator` method of the same meaning, so tests may use either.

    POST /_sim/orders/{otn}/pay         {"notify": "send"|"drop", "duplicates", "delay_ms",
                                         "payer_total", "success_time", "amount_override",
                                         "coupons": [{"type": "CASH"|"NOCASH", "amount": fen, "name"}]}
    POST /_sim/orders/{otn}/fail        PAYERROR, no notification
    POST /_sim/orders/{otn}/expire      {"close": false}: past time_expire, unpayable
    GET  /_sim/orders/{otn}             GET /_sim/orders
    GET  /_sim/refunds/{orn}            GET /_sim/refunds
    POST /_sim/refunds/{orn}/complete   {"status": "SUCCESS"|"ABNORMAL"|"CLOSED", "notify": "send"|"drop"}
    POST /_sim/notify                   custom notification (see Simulator.notify)
    POST /_sim/bill/overrides           {"out_trade_no", "hide", "amount", "clear"}
    GET  /_sim/bill?bill_date=&bill_type=   the CSV the bill download would serve
    POST /_sim/faults                   GET /_sim/faults    DELETE /_sim/faults   (see faults.py;
                                        "share": 0..1, "rate_limited": true -> 429 FREQUENCY_LIMITED)
    GET  /_sim/keys                     {"mode", "rollout", "public_key_id",
                                         "certificates": [{"serial", "not_before", "not_after", "signing"}]}
    POST /_sim/keys                     {"mode": "public_key"|"certificate"|"switch", "rollout": 0.0..1.0}
    POST /_sim/keys/rotate              {"valid_days": 1825}: a new signing certificate -> {"serial", "keys"}
    POST /_sim/keys/retire              {"serial"}: remove a certificate (never the last) -> keys state
    GET  /_sim/deliveries[?out_trade_no=]   GET /_sim/counters
    GET  /_sim/idle?timeout=            {"idle": bool}
    POST /_sim/config                   {"auto_refund_ms", "retry_factor", "token_ttl_s",
                                         "token_refresh_margin_s", "force_refresh_interval_s",
                                         "clock_offset_s": WeChat's clock minus ours (-86400..86400),
                                         "trade_managed": what is_trade_managed answers}
    GET  /_sim/tokens                   every access token issued (stable and /cgi-bin/token ones)
    GET  /_sim/shipping                 every payment with shipping uploads (or a state set)
    GET  /_sim/shipping/uploads         every upload_shipping_info request, refused ones included
    GET  /_sim/shipping/{transaction_id}    one paid payment: order_state, uploads [{received_at,
                                        body, errcode, errmsg}], finish_shipping_count, reship_used
    POST /_sim/shipping/{transaction_id}/state  {"order_state": 3|4|6, "in_complaint", "clear"}
    GET  /_sim/openid?code=test-alice   the openid that test code logs in as
    POST /_sim/reset                    forget everything but the keys (and back to public_key mode
                                        with the default certificate only)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from devtools.simulator.errors import SimError
from devtools.simulator.protocol import HttpRequest, Reply, Router, error_reply, json_reply

if TYPE_CHECKING:
    from devtools.simulator.app import Simulator

LOOPBACK_PREFIXES = ("127.", "::1", "::ffff:127.")
MAX_IDLE_WAIT_S = 120.0


def _body(request: HttpRequest) -> dict:
    body = request.json(empty_ok=True)
    if not isinstance(body, dict):
        raise SimError(400, "BAD_REQUEST", "the body must be a JSON object")
    return body


def _call(method: Callable, request: HttpRequest, *args):
    """`method(*args, **body)`, refusing body fields the method does not take."""
    body = _body(request)
    accepted = {name for name, p in inspect.signature(method).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = set(body) - accepted
    if unknown:
        raise SimError(400, "BAD_REQUEST", f"unknown fields {sorted(unknown)}; accepted: {sorted(accepted)}")
    return method(*args, **body)


def _pay(sim: Simulator, r: HttpRequest):
    return _call(sim.pay, r, r.params["otn"])


def _fail(sim: Simulator, r: HttpRequest):
    return sim.fail(r.params["otn"])


def _expire(sim: Simulator, r: HttpRequest):
    return _call(sim.expire, r, r.params["otn"])


def _order(sim: Simulator, r: HttpRequest):
    return sim.order(r.params["otn"])


def _orders(sim: Simulator, r: HttpRequest):
    return sim.orders()


def _refund(sim: Simulator, r: HttpRequest):
    return sim.refund(r.params["orn"])


def _refunds(sim: Simulator, r: HttpRequest):
    return sim.refunds()


def _complete_refund(sim: Simulator, r: HttpRequest):
    return _call(sim.complete_refund, r, r.params["orn"])


def _notify(sim: Simulator, r: HttpRequest):
    return _call(sim.notify, r)


def _bill_override(sim: Simulator, r: HttpRequest):
    body = _body(r)
    out_trade_no = body.pop("out_trade_no", None)
    if not isinstance(out_trade_no, str):
        raise SimError(400, "BAD_REQUEST", "out_trade_no is required")
    unknown = set(body) - {"hide", "amount", "clear"}
    if unknown:
        raise SimError(400, "BAD_REQUEST", f"unknown fields {sorted(unknown)}")
    return sim.set_bill_override(out_trade_no, **body)


def _bill(sim: Simulator, r: HttpRequest) -> Reply:
    csv = sim.trade_bill(r.query.get("bill_date", ""), r.query.get("bill_type", "ALL"))
    return Reply(200, csv, "text/csv; charset=utf-8")


def _add_fault(sim: Simulator, r: HttpRequest):
    return sim.inject_fault(**_body(r))


def _faults(sim: Simulator, r: HttpRequest):
    return sim.faults()


def _clear_faults(sim: Simulator, r: HttpRequest):
    sim.clear_faults()
    return {"faults": []}


def _deliveries(sim: Simulator, r: HttpRequest):
    return sim.deliveries(r.query.get("out_trade_no"))


def _counters(sim: Simulator, r: HttpRequest):
    return sim.counters()


def _idle(sim: Simulator, r: HttpRequest):
    try:
        timeout = float(r.query.get("timeout", "10"))
    except ValueError:
        raise SimError(400, "BAD_REQUEST", "timeout must be a number of seconds") from None
    return {"idle": sim.wait_idle(min(max(timeout, 0.0), MAX_IDLE_WAIT_S))}


def _config(sim: Simulator, r: HttpRequest):
    return _call(sim.configure, r)


def _tokens(sim: Simulator, r: HttpRequest):
    return sim.access_tokens_state()


def _shipping_all(sim: Simulator, r: HttpRequest):
    return sim.shipping()


def _shipping_uploads(sim: Simulator, r: HttpRequest):
    return sim.shipping_uploads()


def _shipping_one(sim: Simulator, r: HttpRequest):
    return sim.shipping(r.params["tid"])


def _shipping_state(sim: Simulator, r: HttpRequest):
    return _call(sim.set_shipping_state, r, r.params["tid"])


def _openid(sim: Simulator, r: HttpRequest):
    return {"openid": sim.openid_for(r.query.get("code", ""))}


def _fields(request: HttpRequest, accepted: set[str], required: tuple[str, ...] = ()) -> dict:
    body = _body(request)
    unknown = set(body) - accepted
    if unknown:
        raise SimError(400, "BAD_REQUEST", f"unknown fields {sorted(unknown)}; accepted: {sorted(accepted)}")
    missing = set(required) - set(body)
    if missing:
        raise SimError(400, "BAD_REQUEST", f"missing fields {sorted(missing)}")
    return body


def _keys(sim: Simulator, r: HttpRequest):
    return sim.keys_state()


def _set_keys(sim: Simulator, r: HttpRequest):
    body = _fields(r, {"mode", "rollout"}, ("mode",))
    return sim.set_key_mode(body["mode"], body.get("rollout"))


def _rotate(sim: Simulator, r: HttpRequest):
    body = _fields(r, {"valid_days"})
    serial = sim.rotate_certificate(**body)
    return {"serial": serial, "keys": sim.keys_state()}


def _retire(sim: Simulator, r: HttpRequest):
    return sim.retire_certificate(_fields(r, {"serial"}, ("serial",))["serial"])


def _reset(sim: Simulator, r: HttpRequest):
    sim.reset()
    return {"reset": True}


_control = Router()
_control.add("POST", "/_sim/orders/{otn}/pay", _pay)
_control.add("POST", "/_sim/orders/{otn}/fail", _fail)
_control.add("POST", "/_sim/orders/{otn}/expire", _expire)
_control.add("GET", "/_sim/orders/{otn}", _order)
_control.add("GET", "/_sim/orders", _orders)
_control.add("GET", "/_sim/refunds/{orn}", _refund)
_control.add("GET", "/_sim/refunds", _refunds)
_control.add("POST", "/_sim/refunds/{orn}/complete", _complete_refund)
_control.add("POST", "/_sim/notify", _notify)
_control.add("POST", "/_sim/bill/overrides", _bill_override)
_control.add("GET", "/_sim/bill", _bill)
_control.add("POST", "/_sim/faults", _add_fault)
_control.add("GET", "/_sim/faults", _faults)
_control.add("DELETE", "/_sim/faults", _clear_faults)
_control.add("GET", "/_sim/deliveries", _deliveries)
_control.add("GET", "/_sim/counters", _counters)
_control.add("GET", "/_sim/idle", _idle)
_control.add("POST", "/_sim/config", _config)
_control.add("GET", "/_sim/openid", _openid)
_control.add("GET", "/_sim/tokens", _tokens)
_control.add("GET", "/_sim/shipping", _shipping_all)
_control.add("GET", "/_sim/shipping/uploads", _shipping_uploads)
_control.add("GET", "/_sim/shipping/{tid}", _shipping_one)
_control.add("POST", "/_sim/shipping/{tid}/state", _shipping_state)
_control.add("GET", "/_sim/keys", _keys)
_control.add("POST", "/_sim/keys", _set_keys)
_control.add("POST", "/_sim/keys/rotate", _rotate)
_control.add("POST", "/_sim/keys/retire", _retire)
_control.add("POST", "/_sim/reset", _reset)


def handle(sim: Simulator, request: HttpRequest) -> Reply:
    if not request.client_ip.startswith(LOOPBACK_PREFIXES):
        return error_reply(SimError(403, "FORBIDDEN", "the control API answers loopback clients only"))
    handler = _control.find(request)
    if handler is None:
        return error_reply(SimError(404, "NOT_FOUND", f"no control route {request.method} {request.path}"))
    try:
        result = handler(sim, request)
    except SimError as error:
        return error_reply(error)
    return result if isinstance(result, Reply) else json_reply(200, result)
