"""The timer-driven sweep and the daily bill (the `reconcile` function).

Every step is idempotent (timers may fire twice, two sweeps may overlap): state changes
go through the store's compare-and-set transitions, anomalies and facts carry unique
keys.  Every step is bounded by a batch size and by the time left in the invocation,
and one failing order is logged and skipped, never fatal to the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from shared import deadline as invocation
from shared import order_states
from shared.errors import CloudPayError, IllegalTransition, WeChatPayRejected
from shared.log import log, where
from shared.refunds import PROCESSING, REQUESTED, RefundService
from shared.settlement import ALREADY_PAID, PAID, settle_transaction

CHINA = timezone(timedelta(hours=8))
BATCH = 100                       # orders per step per sweep
LOST_CALLBACK_AFTER_MS = 3 * 60_000   # query unpaid orders older than this
REFUND_QUERY_AFTER_MS = 5 * 60_000
BILL_READY_HOUR = 10              # WeChat generates bills after 09:00 (UTC+8)
SAFETY_MS = 3_000                 # stop starting new work this long before the timeout
DEFAULT_BUDGET_MS = 50_000


@dataclass
class StepSummary:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class Deadline:
    def __init__(self, context, monotonic=time.monotonic):
        limit = DEFAULT_BUDGET_MS
        if isinstance(context, dict) and isinstance(context.get("time_limit_in_ms"), int):
            limit = context["time_limit_in_ms"]
        self._monotonic = monotonic
        self._end = monotonic() + max(limit - SAFETY_MS, 1_000) / 1000
        # Outbound calls (and the WeChat Pay client's back-off) end a little later: work
        # started just before `_end` may finish, but never past the function's timeout.
        self.calls_end = monotonic() + max(limit - SAFETY_MS // 3, 1_000) / 1000
        # WeChat Pay said FREQUENCY_LIMITED (after the client's own back-off): the rest of
        # this sweep waits for the next timer instead of hammering.
        self.rate_limited = False

    def expired(self) -> bool:
        return self._monotonic() >= self._end


def bill_day_bounds(bill_date: str) -> tuple[int, int]:
    """[start, end) of a bill date in epoch ms; WeChat's days are UTC+8 days."""
    day = datetime.strptime(bill_date, "%Y-%m-%d").replace(tzinfo=CHINA)
    start = int(day.timestamp()) * 1000
    return start, start + 86_400_000


class Reconciler:
    def __init__(self, config, store, wechatpay, archive=None, *, batch: int = BATCH, keys=None, relay=None,
                 shipping=None):
        self.config = config
        self.store = store
        self.wechatpay = wechatpay
        self.archive = archive
        self.keys = keys  # WeChat Pay's KeySet: the certificates step looks after them
        self.batch = batch
        self.refunds = RefundService(config, store, wechatpay)
        self.relay = relay          # the outbox relay (None in unit tests without a shop)
        self.shipping = shipping    # ShippingService when SHIPPING_MODE is not off

    # --- the sweep ---------------------------------------------------------------------

    def sweep(self, context=None, *, with_bill: bool = True) -> dict:
        deadline = Deadline(context)
        report = {}
        steps = [("close_expired", self.close_expired), ("close_failed", self.close_failed),
                 ("recover_lost", self.recover_lost), ("refunds", self.check_refunds),
                 ("notifications", self.expire_notifications)]
        if self.keys is not None and (self.keys.downloads or self.keys.certificates()):
            steps.insert(0, ("certificates", self.check_certificates))
        with invocation.until(deadline.calls_end):
            for name, step in steps:
                report[name] = self._run_step(name, step, deadline)
            if with_bill:
                report["bill"] = self._run_step("bill", self.bill_if_due, deadline)
            # Last: the facts the steps above wrote are delivered in this same run.
            if self.shipping is not None:
                report["shipping"] = self._run_step("shipping", self.shipping.run, deadline)
            if self.relay is not None and self.relay.enabled:
                report["deliveries"] = self._run_step("deliveries", self.relay.run, deadline)
        return report

    def _run_step(self, name, step, deadline) -> dict:
        started = time.monotonic()
        summary = StepSummary()
        try:
            step(summary, deadline)
        except CloudPayError as error:  # e.g. store down: report, the next timer retries
            summary.add(f"error:{error.code}")
        except Exception as exc:  # a bug must not stop the other steps; its frames go to the log
            summary.add("error:INTERNAL_ERROR")
            log("reconcile.crash", level="error", step=name, error=type(exc).__name__, where=where(exc))
        counts = dict(summary.counts)
        log("reconcile.step", step=name, counts=counts, ms=int((time.monotonic() - started) * 1000))
        return counts

    def _each(self, orders, summary, deadline, handle) -> None:
        for order in orders:
            if deadline.expired():
                summary.add("deferred")
                continue
            if deadline.rate_limited:
                summary.add("deferred:rate_limited")
                continue
            try:
                summary.add(handle(order))
            except WeChatPayRejected as error:
                summary.add(f"error:{error.code}")
                if error.wechat_code == "FREQUENCY_LIMITED":
                    deadline.rate_limited = True
                    log("reconcile.rate_limited", level="warning", outTradeNo=order.get("outTradeNo"))
            except CloudPayError as error:
                summary.add(f"error:{error.code}")
                log("reconcile.order_failed", level="warning", outTradeNo=order.get("outTradeNo"),
                    code=error.code)
            except Exception as exc:  # one failing order never stops the rest
                summary.add("error:INTERNAL_ERROR")
                log("reconcile.crash", level="error", outTradeNo=order.get("outTradeNo"),
                    error=type(exc).__name__, where=where(exc))

    def check_certificates(self, summary, deadline) -> None:
        """Platform certificates: download them when none is known, the newest expires
        within 10 days, or not for an hour (download mode), and tell a human, well before it happens, that
        every certificate we hold expires within 30 days with no successor in sight."""
        if self.keys.refresh_due():
            self.keys.refresh("scheduled")
            summary.add("refreshed")
        for certificate in self.keys.expiring_without_successor():
            recorded = self.store.record_anomaly(
                "platform_certificate_expiring", None,
                {"serial": certificate.serial, "notAfter": certificate.not_after},
                key=f"platform_certificate_expiring:{certificate.serial}")
            summary.add("expiring_recorded" if recorded else "expiring_known")
        if not summary.counts:
            summary.add("ok")

    def close_expired(self, summary, deadline) -> None:
        """NOTPAY past expireTime: close at WeChat Pay, then CLOSED (or settle if paid)."""
        orders = self.store.expired_unpaid(self.store.clock(), self.batch)
        self._each(orders, summary, deadline, self._close_one)

    def close_failed(self, summary, deadline) -> None:
        """PAYERROR from a failed prepay: close at WeChat Pay in case it landed there."""
        self._each(self.store.failed_prepays(self.batch), summary, deadline, self._close_one)

    def _close_one(self, order: dict) -> str:
        out_trade_no = order["outTradeNo"]
        try:
            self.wechatpay.close_order(out_trade_no)
        except WeChatPayRejected as error:
            if error.wechat_code == "ORDERPAID":  # paid just before the close
                return self._settle_from_query(order)
            # ORDER_NOT_EXIST: the prepay never reached WeChat Pay; ORDER_CLOSED: done.
            if error.wechat_code not in ("ORDER_NOT_EXIST", "ORDER_CLOSED", "ORDERCLOSED"):
                raise
        try:
            result = self.store.transition(out_trade_no, order_states.CLOSED,
                                           fields={"closeAtWeChat": False, "closedAt": self.store.clock()})
        except IllegalTransition:
            return "changed_meanwhile"  # paid by a notification while we closed
        return "closed" if result.applied else "already_closed"

    def recover_lost(self, summary, deadline) -> None:
        """NOTPAY, older than a few minutes, not expired: ask WeChat Pay (lost callbacks)."""
        now = self.store.clock()
        orders = self.store.unpaid_older_than(now - LOST_CALLBACK_AFTER_MS, now, self.batch)
        self._each(orders, summary, deadline, self._settle_from_query)

    def _settle_from_query(self, order: dict) -> str:
        try:
            transaction = self.wechatpay.query_order(order["outTradeNo"])
        except WeChatPayRejected as error:
            if error.wechat_code == "ORDER_NOT_EXIST":
                return "not_at_wechat"
            raise
        if transaction.get("trade_state") != order_states.SUCCESS:
            return f"wechat_{str(transaction.get('trade_state')).lower()}"
        settled = settle_transaction(self.store, self.config, transaction, source="sweep")
        return settled.anomaly or settled.outcome

    def check_refunds(self, summary, deadline) -> None:
        """Refunds without a final answer for a while: ask WeChat Pay."""
        pending = self.store.pending_refunds(self.store.clock() - REFUND_QUERY_AFTER_MS, self.batch,
                                             (REQUESTED, PROCESSING))
        for refund in pending:
            if deadline.expired():
                summary.add("deferred")
                continue
            if deadline.rate_limited:
                summary.add("deferred:rate_limited")
                continue
            try:
                answer = self.wechatpay.query_refund(refund["outRefundNo"])
                summary.add(self.refunds.apply_result(answer, source="sweep").outcome)
            except WeChatPayRejected as error:
                if error.wechat_code == "RESOURCE_NOT_EXISTS" and refund["status"] == REQUESTED:
                    # Our request never reached WeChat Pay: give the reservation back.
                    self.refunds.release_unsent(refund)
                    summary.add("released_unsent")
                else:
                    summary.add(f"error:{error.code}")
                    deadline.rate_limited |= error.wechat_code == "FREQUENCY_LIMITED"
            except CloudPayError as error:
                summary.add(f"error:{error.code}")

    # --- the daily bill -----------------------------------------------------------------

    def expire_notifications(self, summary, deadline) -> None:
        """The kept notifications past their 7 days: MongoDB's TTL index deletes them first
        (this finds none), nx-27017 only when they are read (the local stack)."""
        deleted = self.store.expire_notifications()
        if deleted:
            summary.counts["expired"] = deleted

    def bill_if_due(self, summary, deadline) -> None:
        now = datetime.fromtimestamp(self.store.clock() // 1000, CHINA)
        if now.hour < BILL_READY_HOUR:
            summary.add("not_due")
            return
        bill_date = (now.date() - timedelta(days=1)).isoformat()
        if self.store.find_bill_run(bill_date) is not None:
            summary.add("already_reconciled")
            return
        result = self.reconcile_bill(bill_date)
        for kind, count in result["counts"].items():
            summary.counts[kind] = summary.counts.get(kind, 0) + count

    def reconcile_bill(self, bill_date: str, *, force: bool = False) -> dict:
        """Compare WeChat Pay's trade bill of `bill_date` with the store."""
        from shared.bill import parse_trade_bill

        done = self.store.find_bill_run(bill_date)
        if done is not None and not force:
            return {"billDate": bill_date, "status": "already_reconciled", "counts": done.get("counts", {})}
        try:
            data = self.wechatpay.trade_bill(bill_date)  # SHA-1 checked by the client
        except WeChatPayRejected as error:
            if error.wechat_code != "NO_STATEMENT_EXIST":
                raise
            data = None  # no transactions that day: WeChat Pay makes no bill
        bill = parse_trade_bill(data) if data is not None else None
        rows = bill.rows if bill is not None else ()
        counts: dict[str, int] = {}

        def count(outcome: str) -> None:
            counts[outcome] = counts.get(outcome, 0) + 1

        archived = None
        if self.archive is not None and data is not None:
            try:
                archived = self.archive.put_bill(bill_date, data)
            except CloudPayError as error:
                # The comparison matters more than the copy: go on, and tell a human.
                self.store.record_anomaly("bill_archive_failed", None, {"billDate": bill_date, "code": error.code},
                                          key=f"bill_archive_failed:{bill_date}")
                count("archive_failed")

        seen: set[str] = set()
        for row in rows:
            if row.trade_state != order_states.SUCCESS:
                continue  # refund lines: reconciled through the refunds collection
            seen.add(row.out_trade_no)
            count(self._check_bill_row(bill_date, row, bill.has_order_amount))

        start, end = bill_day_bounds(bill_date)
        for order in self.store.paid_between(start, end):
            if order["outTradeNo"] not in seen:
                self.store.record_anomaly("bill_missing", order["outTradeNo"],
                                          {"billDate": bill_date, "totalFee": order["totalFee"],
                                           "transactionId": order.get("transactionId")},
                                          key=f"bill_missing:{bill_date}:{order['outTradeNo']}")
                count("bill_missing")
        self.store.record_bill_run(bill_date, {"counts": counts, "archiveKey": archived, "rows": len(rows)})
        log("reconcile.bill", billDate=bill_date, counts=counts, archived=archived)
        return {"billDate": bill_date, "status": "reconciled", "counts": counts, "archiveKey": archived}

    def _check_bill_row(self, bill_date: str, row, has_order_amount: bool) -> str:
        """Compare the columns that mean the same thing (WeChat Pay's trade bill format,
        pay.weixin.qq.com/docs/merchant/products/bill-download/format-trade.html):
        - the order's total: 订单金额 (总金额 in the oldest format) against totalFee;
        - what the merchant is settled: 应结订单金额 = 订单金额 minus the coupons that are
          not pre-funded (免充值券), against settlementFee recorded at settlement from
          `promotion_detail`.  代金券金额 holds every coupon, pre-funded ones too, so for
          an order settled without readable coupon details the settled amount can only be
          bounded: 订单金额 - 代金券金额 <= 应结订单金额 <= 订单金额.
        So a coupon order raises no false anomaly and a real difference still does."""
        order = self.store.find_order(row.out_trade_no)
        bill_total = row.order_amount if has_order_amount else row.total_fee
        evidence = {"billDate": bill_date, "transactionId": row.transaction_id, "billTotal": bill_total,
                    "billSettled": row.total_fee if has_order_amount else None, "billCoupon": row.coupon_fee}
        if order is None:
            self.store.record_anomaly("bill_unknown_order", row.out_trade_no, evidence,
                                      key=f"bill_unknown_order:{bill_date}:{row.out_trade_no}")
            return "bill_unknown_order"
        if not self._bill_amounts_agree(order, row, bill_total, has_order_amount):
            self.store.record_anomaly("bill_amount_mismatch", row.out_trade_no,
                                      {**evidence, "orderTotalFee": order["totalFee"],
                                       "orderSettlementFee": order.get("settlementFee")},
                                      key=f"bill_amount_mismatch:{bill_date}:{row.out_trade_no}")
            return "bill_amount_mismatch"
        if order_states.is_paid(order["payStatus"]):
            return "matched"
        # Paid at WeChat, not here: settle it, and tell a human we had missed it.
        transaction = {"out_trade_no": row.out_trade_no, "transaction_id": row.transaction_id,
                       "trade_state": order_states.SUCCESS, "mchid": row.mchid or self.config.wechatpay_mchid,
                       "appid": row.appid or self.config.wechat_appid,
                       "amount": {"total": bill_total}, "success_time": _bill_time(row.trade_time)}
        if has_order_amount and row.coupon_fee:
            not_pre_funded = bill_total - row.total_fee
            transaction["promotion_detail"] = [
                {"type": kind, "amount": amount}
                for kind, amount in (("NOCASH", not_pre_funded), ("CASH", row.coupon_fee - not_pre_funded))
                if amount]
        settled = settle_transaction(self.store, self.config, transaction, source="bill")
        if settled.outcome in (PAID, ALREADY_PAID):
            self.store.record_anomaly("bill_paid_not_recorded", row.out_trade_no, evidence,
                                      key=f"bill_paid_not_recorded:{bill_date}:{row.out_trade_no}")
            return "settled_from_bill"
        return settled.anomaly or settled.outcome

    @staticmethod
    def _bill_amounts_agree(order: dict, row, bill_total: int, has_order_amount: bool) -> bool:
        if bill_total != order["totalFee"]:
            return False
        if not has_order_amount:  # the oldest format has one amount: the order's total
            return True
        expected = order.get("settlementFee")
        if type(expected) is int:
            return row.total_fee == expected
        return bill_total - row.coupon_fee <= row.total_fee <= bill_total


def _bill_time(value: str) -> str | None:
    """'2024-05-01 12:00:00' (UTC+8) -> RFC 3339."""
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).isoformat()
    except (TypeError, ValueError):
        return None
