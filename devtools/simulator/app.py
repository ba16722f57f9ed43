"""`Simulator`: WeChat Pay APIv3 (+ mini-program login, tokens, order shipping) on loopback,
with a control API.

    sim = Simulator(keys, retry_factor=0.001).start()   # port 0: a free port
    sim.url                                              # http://127.0.0.1:PORT
    sim.pay("T123")                                      # the user pays; notification sent
    sim.wait_idle(5)                                     # every delivery finished
    sim.stop()

    sim.set_key_mode("certificate")                      # sign with a platform certificate
    sim.set_key_mode("switch", rollout=0.1)              # 10% public key, 90% certificate
    serial = sim.rotate_certificate()                    # a new signing certificate
    sim.retire_certificate(old_serial); sim.keys_state()

    sim.configure(token_ttl_s=30)                        # short-lived access tokens (access_tokens.py)
    sim.configure(clock_offset_s=120)                    # WeChat's clock 2 minutes ahead of this machine
    sim.configure(trade_managed=False)                   # the mini-program is not in shipping management
    sim.access_tokens_state()                            # every token issued, valid or not
    sim.shipping(transaction_id)                         # uploads and state of a payment (shipping.py)
    sim.shipping(); sim.shipping_uploads()               # every payment shipped / every upload request
    sim.set_shipping_state(transaction_id, order_state=3)   # the user confirms receipt

The Python methods and the /_sim/ routes (control_api.py) are the same operations.
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from devtools.simulator import miniprogram
from devtools.simulator.access_tokens import TokenBook
from devtools.simulator.background import Background
from devtools.simulator.bill import render_trade_bill
from devtools.simulator.errors import SimError, param_error
from devtools.simulator.faults import FaultBook
from devtools.simulator.ledger import Ledger, Refund
from devtools.simulator.notifier import MAX_COPIES, RETRY_SCHEDULE_S, Notifier
from devtools.simulator.server import SimHTTPServer
from devtools.simulator.shipping import ShippingBook
from devtools.simulator.signer import Signer
from devtools.simulator.timeutil import cst_date, parse_date

BILL_TYPES = ("ALL", "SUCCESS", "REFUND")
BILL_URL_TTL_S = 300          # WeChat: the download URL is valid for 5 minutes
BILL_HISTORY_DAYS = 90        # WeChat: bills of the last three months only
MAX_DELAY_MS = 600_000
MAX_CLOCK_OFFSET_S = 86_400


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SimError(400, "BAD_REQUEST", f"{name} must be one of {', '.join(allowed)}")
    return value


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise SimError(400, "BAD_REQUEST", f"{name} must be an integer {low}..{high}")
    return value


class Simulator:
    def __init__(self, keys, *, retry_factor: float = 1.0, clock: Callable[[], float] = time.time,
                 max_retries: int = len(RETRY_SCHEDULE_S), auto_refund_ms: int | None = None,
                 attempt_timeout: float = 5.0):
        self.keys = keys
        self._base_clock = clock
        self.clock_offset_s = 0       # WeChat's clock minus this machine's (configure(clock_offset_s=...))
        clock = self.clock            # every part reads the simulator's time, offset included
        self.ledger = Ledger(keys.appid, keys.mchid, clock)
        self._background = Background()
        self.signer = Signer(keys, clock=clock)   # every response and notification signature goes through it
        self.notifier = Notifier(keys, clock, self._background, retry_factor=retry_factor,
                                 max_retries=max_retries, attempt_timeout=attempt_timeout, signer=self.signer)
        self._fault_book = FaultBook()
        self.access_tokens = TokenBook(clock)                       # /cgi-bin/token, /cgi-bin/stable_token
        self.shipping_book = ShippingBook(self.ledger, keys.mchid, clock)   # /wxa/sec/order/...
        self._defaults = {"auto_refund_ms": auto_refund_ms, "retry_factor": retry_factor}
        self.auto_refund_ms = auto_refund_ms
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._bill_files: dict[str, tuple[float, bytes, str]] = {}
        self._stopping = threading.Event()
        self._server: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def clock(self) -> float:
        """WeChat's time (epoch seconds): the machine's clock plus `clock_offset_s`."""
        return self._base_clock() + self.clock_offset_s

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Simulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already started")
        if self._stopping.is_set():
            raise RuntimeError("a stopped simulator cannot be restarted; make a new one")
        self._server = SimHTTPServer((host, port), self)
        bound_port = self._server.server_address[1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._url = f"http://[{shown}]:{bound_port}" if ":" in shown else f"http://{shown}:{bound_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="wechatpay-simulator", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    def stop(self) -> None:
        """Stop serving and end every pending delivery (idempotent)."""
        self._stopping.set()
        self._background.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def pause(self, seconds: float) -> None:
        """Sleep, but wake at stop()."""
        self._stopping.wait(seconds)

    # --- the user, the bank and time (control actions) ----------------------------------

    def pay(self, out_trade_no: str, *, notify: str = "send", duplicates: int = 0, delay_ms: int = 0,
            payer_total: int | None = None, success_time: str | None = None,
            amount_override: int | None = None, coupons: list[dict] | None = None) -> dict:
        """The user pays: SUCCESS, then TRANSACTION.SUCCESS to the order's notify_url.

        `notify="drop"` loses the notification (the merchant must query); `duplicates`
        extra copies are sent concurrently; `delay_ms` before the first attempt;
        `amount_override` puts another amount.total in the notification (mismatch tests).
        `coupons` (`[{"type": "CASH"|"NOCASH", "amount": fen, "name": "..."}]`) pay part of
        it: payer_total = total - their sum, and the transaction shows promotion_detail;
        `payer_total` alone (no coupons, no promotion_detail) is the older way, not both.
        """
        _choice("notify", notify, ("send", "drop"))
        _int_in("duplicates", duplicates, 0, MAX_COPIES - 1)
        _int_in("delay_ms", delay_ms, 0, MAX_DELAY_MS)
        if amount_override is not None:
            _int_in("amount_override", amount_override, 0, 10**12)
        order = self.ledger.pay(out_trade_no, payer_total=payer_total, success_time=success_time, coupons=coupons)
        result = {"order": self.ledger.order_state(out_trade_no), "notification_id": None}
        if notify == "send":
            resource = self.ledger.transaction_view(order, amount_override=amount_override)
            notification = self.notifier.build(url=order.notify_url, event_type="TRANSACTION.SUCCESS",
                                               resource=resource, out_trade_no=out_trade_no)
            self.notifier.deliver(notification, copies=1 + duplicates, delay_s=delay_ms / 1000)
            result["notification_id"] = notification.id
        return result

    def fail(self, out_trade_no: str) -> dict:
        """The payment fails (PAYERROR); WeChat sends no notification for it."""
        self.ledger.fail(out_trade_no)
        return self.ledger.order_state(out_trade_no)

    def expire(self, out_trade_no: str, *, close: bool = False) -> dict:
        """Time passes beyond time_expire: unpayable; still NOTPAY unless `close`."""
        if not isinstance(close, bool):
            raise SimError(400, "BAD_REQUEST", "close must be true or false")
        self.ledger.expire(out_trade_no, close=close)
        return self.ledger.order_state(out_trade_no)

    def complete_refund(self, out_refund_no: str, *, status: str = "SUCCESS", notify: str = "send") -> dict:
        """The bank finishes a refund: SUCCESS, ABNORMAL or CLOSED, and REFUND.<status> is sent."""
        _choice("notify", notify, ("send", "drop"))
        refund = self.ledger.complete_refund(out_refund_no, status)
        notification_id = self._send_refund_notification(refund) if notify == "send" else None
        return {"refund": self.ledger.refund(out_refund_no), "notification_id": notification_id}

    def refund_requested(self, out_refund_no: str) -> None:
        """Called by the refund API: with auto_refund_ms set, complete it after that delay."""
        delay_ms = self.auto_refund_ms
        if delay_ms is None:
            return

        def complete_later(cancelled: threading.Event) -> None:
            if cancelled.wait(delay_ms / 1000):
                return
            try:
                self.complete_refund(out_refund_no)
            except SimError:
                pass   # completed by hand in the meantime
        self._background.spawn(f"auto-refund-{out_refund_no}", complete_later)

    def _send_refund_notification(self, refund: Refund) -> str:
        order = self.ledger.order_record(refund.out_trade_no)
        notification = self.notifier.build(url=refund.notify_url or order.notify_url,
                                           event_type=f"REFUND.{refund.status}",
                                           resource=self.ledger.refund_resource(refund),
                                           out_trade_no=refund.out_trade_no, out_refund_no=refund.out_refund_no)
        self.notifier.deliver(notification)
        return notification.id

    def notify(self, *, url: str | None = None, out_trade_no: str | None = None, out_refund_no: str | None = None,
               resource: dict | None = None, raw_body: str | None = None, event_type: str | None = None,
               probe: bool = False, tamper: str | None = None, duplicates: int = 0, retry: bool = False,
               delay_ms: int = 0) -> dict:
        """Send a custom notification.

        What: `resource` (any dict, encrypted as given), or `raw_body` (sent and signed
        as is), or the current state of `out_refund_no` / `out_trade_no`.  Where: `url`,
        else the refund's or order's notify_url.  How: `probe` (a WECHATPAY/SIGNTEST/
        signature), `tamper` (body | signature | serial | timestamp_old | timestamp_future
        | ciphertext), `duplicates` concurrent copies.  Without `retry`, one attempt per
        copy and the results are returned; with it, the retry schedule runs in the
        background (see /_sim/deliveries).
        """
        for flag_name, flag in (("probe", probe), ("retry", retry)):
            if not isinstance(flag, bool):
                raise SimError(400, "BAD_REQUEST", f"{flag_name} must be true or false")
        _int_in("duplicates", duplicates, 0, MAX_COPIES - 1)
        _int_in("delay_ms", delay_ms, 0, MAX_DELAY_MS)
        default_event, default_url, resource = self._notification_subject(out_trade_no, out_refund_no, resource,
                                                                          raw_body)
        target = url or default_url
        if target is None:
            raise SimError(400, "BAD_REQUEST", "url is required when no order or refund names one")
        notification = self.notifier.build(url=target, event_type=event_type or default_event, resource=resource,
                                           raw_body=raw_body, out_trade_no=out_trade_no,
                                           out_refund_no=out_refund_no, probe=probe, tamper=tamper)
        if retry:
            self.notifier.deliver(notification, copies=1 + duplicates, delay_s=delay_ms / 1000)
            return {"id": notification.id, "queued": True, "deliveries": []}
        if delay_ms:
            self.pause(delay_ms / 1000)
        deliveries = self.notifier.deliver_now(notification, copies=1 + duplicates)
        return {"id": notification.id, "queued": False, "deliveries": deliveries}

    def _notification_subject(self, out_trade_no, out_refund_no, resource, raw_body) -> tuple[str, str | None, dict]:
        """(default event type, default url, resource) for a custom notification."""
        if resource is not None and not isinstance(resource, dict):
            raise SimError(400, "BAD_REQUEST", "resource must be a JSON object")
        if raw_body is not None and not isinstance(raw_body, str):
            raise SimError(400, "BAD_REQUEST", "raw_body must be a string")
        if out_refund_no is not None:
            refund = self.ledger.refund_record(out_refund_no)
            order = self.ledger.order_record(refund.out_trade_no)
            event = f"REFUND.{refund.status if refund.status != 'PROCESSING' else 'SUCCESS'}"
            return event, refund.notify_url or order.notify_url, resource or self.ledger.refund_resource(refund)
        if out_trade_no is not None:
            order = self.ledger.order_record(out_trade_no)
            return "TRANSACTION.SUCCESS", order.notify_url, resource or self.ledger.transaction_view(order)
        if resource is None and raw_body is None:
            raise SimError(400, "BAD_REQUEST", "give out_trade_no, out_refund_no, resource or raw_body")
        return "TRANSACTION.SUCCESS", None, resource or {}

    # --- state and configuration ------------------------------------------------------

    def order(self, out_trade_no: str) -> dict:
        return self.ledger.order_state(out_trade_no)

    def orders(self) -> list[dict]:
        return self.ledger.all_orders()

    def refund(self, out_refund_no: str) -> dict:
        return self.ledger.refund(out_refund_no)

    def refunds(self) -> list[dict]:
        return self.ledger.all_refunds()

    def set_bill_override(self, out_trade_no: str, *, hide: bool | None = None, amount: int | None = None,
                          clear: bool = False) -> dict:
        """Hide an order from the trade bill, or report `amount` (fen) for it."""
        return {"out_trade_no": out_trade_no,
                "override": self.ledger.set_bill_override(out_trade_no, hide=hide, amount=amount, clear=clear)}

    def inject_fault(self, **spec) -> dict:
        """Fail the next calls of an endpoint (see faults.py for the fields)."""
        return self._fault_book.add(spec)

    @property
    def fault_book(self) -> FaultBook:
        return self._fault_book

    def faults(self) -> list[dict]:
        """The faults still waiting to fire."""
        return self._fault_book.list()

    def clear_faults(self) -> None:
        self._fault_book.clear()

    # --- platform keys: public key, certificates, the switch ----------------------------

    def set_key_mode(self, mode: str, rollout: float | None = None) -> dict:
        """Sign with the public key ("public_key"), a platform certificate ("certificate"),
        or both ("switch": the public key with probability `rollout`, default 0.5)."""
        return self.signer.set_mode(mode, rollout)

    def rotate_certificate(self, valid_days: int = 1825) -> str:
        """Issue a new platform certificate; it signs from now on, the older stay valid and
        listed.  Returns its serial."""
        return self.signer.rotate(valid_days).serial

    def retire_certificate(self, serial: str) -> dict:
        """Remove a platform certificate (never the last one)."""
        self.signer.retire(serial)
        return self.keys_state()

    def keys_state(self) -> dict:
        """mode, rollout, public_key_id, certificates [{serial, not_before, not_after, signing}]."""
        return self.signer.state()

    def configure(self, *, auto_refund_ms: int | None = None, retry_factor: float | None = None,
                  token_ttl_s: int | None = None, token_refresh_margin_s: int | None = None,
                  force_refresh_interval_s: int | None = None, clock_offset_s: int | None = None,
                  trade_managed: bool | None = None) -> dict:
        """Complete refunds automatically after `auto_refund_ms`; compress the retry schedule;
        access tokens issued from now on live `token_ttl_s` (1..7200) and are renewed by
        stable_token's normal mode within `token_refresh_margin_s` of their end (default ttl/24:
        300 s of 7200 s; a new ttl without a margin goes back to that default); a forced refresh
        sooner than `force_refresh_interval_s` (default 30) after the last one does not refresh.
        `clock_offset_s` (-86400..86400) puts WeChat's clock that far from this machine's (its
        Wechatpay-Timestamp, the 5-minute check of request timestamps, every time it records);
        `trade_managed` is what is_trade_managed answers (default true: the mini-program is
        enrolled in WeChat's order shipping management)."""
        if auto_refund_ms is not None:
            _int_in("auto_refund_ms", auto_refund_ms, 0, MAX_DELAY_MS)
        if clock_offset_s is not None:
            _int_in("clock_offset_s", clock_offset_s, -MAX_CLOCK_OFFSET_S, MAX_CLOCK_OFFSET_S)
        if trade_managed is not None and not isinstance(trade_managed, bool):
            raise SimError(400, "BAD_REQUEST", "trade_managed must be true or false")
        if retry_factor is not None:
            if not isinstance(retry_factor, (int, float)) or isinstance(retry_factor, bool) or retry_factor < 0:
                raise SimError(400, "BAD_REQUEST", "retry_factor must be a number >= 0")
        tokens = self.access_tokens.configure(token_ttl_s=token_ttl_s, token_refresh_margin_s=token_refresh_margin_s,
                                              force_refresh_interval_s=force_refresh_interval_s)
        if auto_refund_ms is not None:
            self.auto_refund_ms = auto_refund_ms
        if retry_factor is not None:
            self.notifier.retry_factor = float(retry_factor)
        if clock_offset_s is not None:
            self.clock_offset_s = clock_offset_s
        if trade_managed is not None:
            self.shipping_book.trade_managed = trade_managed
        return {"auto_refund_ms": self.auto_refund_ms, "retry_factor": self.notifier.retry_factor,
                "clock_offset_s": self.clock_offset_s, "trade_managed": self.shipping_book.trade_managed, **tokens}

    def access_tokens_state(self) -> list[dict]:
        """Every access token issued since the last reset: kind (stable | legacy), expiry, validity."""
        return self.access_tokens.state()

    # --- the order shipping service (小程序发货信息管理服务) --------------------------------

    def shipping(self, transaction_id: str | None = None) -> dict | list[dict]:
        """One paid payment's shipping (order_state, finish_shipping_count, reship_used and every
        upload attempt on it: received_at, body, errcode, errmsg); without an id, every payment
        that has had an upload or a state set."""
        if transaction_id is None:
            return self.shipping_book.records()
        return self.shipping_book.record(transaction_id)

    def shipping_uploads(self) -> list[dict]:
        """Every upload_shipping_info request since the reset, refused ones and unknown payments included."""
        return self.shipping_book.attempts()

    def set_shipping_state(self, transaction_id: str, *, order_state: int | None = None,
                           in_complaint: bool | None = None, clear: bool = False) -> dict:
        """The user confirms receipt (order_state 3), the trade completes (4), funds await settlement
        (6); `clear` back to what uploads and refunds make it; `in_complaint` a trade dispute."""
        return self.shipping_book.set_state(transaction_id, order_state=order_state, in_complaint=in_complaint,
                                            clear=clear)

    def deliveries(self, out_trade_no: str | None = None) -> list[dict]:
        """Every notification attempt so far (oldest first)."""
        return self.notifier.deliveries(out_trade_no)

    def count_request(self, method: str, path: str) -> None:
        with self._lock:
            self._requests[f"{method} {path}"] += 1

    def count(self, event: str) -> None:
        with self._lock:
            self._events[event] += 1

    def counters(self) -> dict:
        """Requests per `METHOD path`, and token_fetches (/cgi-bin/token), stable_token_fetches,
        shipping_uploads, shipping_queries (get_order), delivery_list_fetches, trade_managed_queries
        (is_trade_managed), jscode2session, sign_errors, faults_triggered
        (each WeChat counter counts the calls that reached it, refused ones included, faulted ones not)."""
        with self._lock:
            counters = {name: self._events.get(name, 0)
                        for name in ("token_fetches", "stable_token_fetches", "shipping_uploads", "shipping_queries",
                                     "delivery_list_fetches", "trade_managed_queries", "jscode2session",
                                     "sign_errors", "faults_triggered")}
            counters["requests"] = dict(self._requests)
            return counters

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no notification (or automatic refund) is pending; False on timeout."""
        return self._background.wait_idle(timeout)

    def reset(self) -> None:
        """Forget everything but the keys: orders, refunds, deliveries, faults, counters, settings
        (the clock offset and trade_managed included), access tokens and shipping records; back to
        public-key mode with the default certificate only."""
        self._background.cancel_all()
        self.signer.reset()
        self.ledger.reset()
        self.access_tokens.reset()
        self.shipping_book.reset()
        self.notifier.forget()
        self._fault_book.clear()
        self.auto_refund_ms = self._defaults["auto_refund_ms"]
        self.notifier.retry_factor = self._defaults["retry_factor"]
        self.clock_offset_s = 0
        with self._lock:
            self._requests.clear()
            self._events.clear()
            self._bill_files.clear()

    def openid_for(self, code: str) -> str:
        """The openid a test login code (`test-<name>`, or just `<name>`) logs in as."""
        match = miniprogram.TEST_CODE_RE.match(code) or miniprogram.TEST_CODE_RE.match("test-" + code)
        if not match:
            raise SimError(400, "BAD_REQUEST", "test codes look like test-<name> (A-Z a-z 0-9 _ -, 1..64)")
        return miniprogram.openid_for(self.keys.appid, match.group(1))

    # --- trade bill -------------------------------------------------------------------

    def trade_bill(self, bill_date: str, bill_type: str = "ALL") -> bytes:
        """The bill CSV for a day, or SimError as the bill API answers."""
        day = parse_date(bill_date)
        if day is None:
            raise param_error("bill_date", "格式必须为YYYY-MM-DD", bill_date, location="query")
        if bill_type not in BILL_TYPES:
            raise param_error("bill_type", f"必须是{'/'.join(BILL_TYPES)}之一", bill_type, location="query")
        today = cst_date(self.clock())
        if day >= today:
            raise SimError(400, "INVALID_REQUEST", "账单日期不合法：只能下载今天以前的账单")
        if day < today - timedelta(days=BILL_HISTORY_DAYS):
            raise SimError(400, "INVALID_REQUEST", "账单日期不合法：仅支持下载三个月以内的账单")
        entries = self.ledger.bill_entries(day, bill_type)
        if not entries:
            raise SimError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        return render_trade_bill(entries)

    def prepare_bill_download(self, bill_date: str, bill_type: str, *, gzip: bool, base_url: str) -> dict:
        """GET /v3/bill/tradebill: hash of the bill, and a download URL valid 5 minutes.

        `hash_value` is the SHA-1 of the *original* (uncompressed) bill, as WeChat Pay
        documents it (原始账单（gzip需要解压缩）的摘要值), not of the gzip file served.
        """
        csv = self.trade_bill(bill_date, bill_type)
        served = gzip_module.compress(csv, mtime=0) if gzip else csv
        content_type = "application/octet-stream" if gzip else "text/plain; charset=utf-8"
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._bill_files[token] = (self.clock() + BILL_URL_TTL_S, served, content_type)
        return {"hash_type": "SHA1",
                "hash_value": hashlib.sha1(csv, usedforsecurity=False).hexdigest(),
                "download_url": f"{base_url.rstrip('/')}/v3/billdownload/file?token={token}"}

    def bill_file(self, token: str) -> tuple[bytes, str]:
        with self._lock:
            entry = self._bill_files.get(token)
        if entry is None or entry[0] < self.clock():
            raise SimError(400, "INVALID_REQUEST", "账单下载地址无效或已过期，请重新申请账单")
        return entry[1], entry[2]
