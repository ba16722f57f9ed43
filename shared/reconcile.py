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

    def expired(self) -> bool:
        return self._monotonic() >= self._end


def bill_day_bounds(bill_date: str) -> tuple[int, int]:
    """[start, end) of a bill date in epoch ms; WeChat's days are UTC+8 days."""
    day = datetime.strptime(bill_date, "%Y-%m-%d").replace(tzinfo=CHINA)
    start = int(day.timestamp()) * 1000
    return start, start + 86_400_000


class Reconciler:
    def __init__(self, config, store, wechatpay, archive=None, *, batch: int = BATCH):
        self.config = config
        self.store = store
        self.wechatpay = wechatpay
        self.archive = archive
        self.batch = batch
        self.refunds = RefundService(config, store, wechatpay)

    # --- the sweep ---------------------------------------------------------------------

    def sweep(self, context=None, *, with_bill: bool = True) -> dict:
        deadline = Deadline(context)
        report = {}
        steps = [("close_expired", self.close_expired), ("close_failed", self.close_failed),
                 ("recover_lost", self.recover_lost), ("refunds", self.check_refunds)]
        for name, step in steps:
            report[name] = self._run_step(name, step, deadline)
        if with_bill:
            report["bill"] = self._run_step("bill", self.bill_if_due, deadline)
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
            try:
                summary.add(handle(order))
            except CloudPayError as error:
                summary.add(f"error:{error.code}")
                log("reconcile.order_failed", level="warning", outTradeNo=order.get("outTradeNo"),
                    code=error.code)
            except Exception as exc:  # one failing order never stops the rest
                summary.add("error:INTERNAL_ERROR")
                log("reconcile.crash", level="error", outTradeNo=order.get("outTradeNo"),
                    error=type(exc).__name__, where=where(exc))

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
            except CloudPayError as error:
                summary.add(f"error:{error.code}")

    # --- the daily bill -----------------------------------------------------------------

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
        rows = parse_trade_bill(data).rows if data is not None else ()
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
            count(self._check_bill_row(bill_date, row))

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

    def _check_bill_row(self, bill_date: str, row) -> str:
        order = self.store.find_order(row.out_trade_no)
        evidence = {"billDate": bill_date, "transactionId": row.transaction_id, "billTotal": row.total_fee}
        if order is None:
            self.store.record_anomaly("bill_unknown_order", row.out_trade_no, evidence,
                                      key=f"bill_unknown_order:{bill_date}:{row.out_trade_no}")
            return "bill_unknown_order"
        if row.total_fee != order["totalFee"]:
            self.store.record_anomaly("bill_amount_mismatch", row.out_trade_no,
                                      {**evidence, "orderTotalFee": order["totalFee"]},
                                      key=f"bill_amount_mismatch:{bill_date}:{row.out_trade_no}")
            return "bill_amount_mismatch"
        if order_states.is_paid(order["payStatus"]):
            return "matched"
        # Paid at WeChat, not here: settle it, and tell a human we had missed it.
        transaction = {"out_trade_no": row.out_trade_no, "transaction_id": row.transaction_id,
                       "trade_state": order_states.SUCCESS, "mchid": row.mchid or self.config.wechatpay_mchid,
                       "appid": row.appid or self.config.wechat_appid,
                       "amount": {"total": row.total_fee}, "success_time": _bill_time(row.trade_time)}
        settled = settle_transaction(self.store, self.config, transaction, source="bill")
        if settled.outcome in (PAID, ALREADY_PAID):
            self.store.record_anomaly("bill_paid_not_recorded", row.out_trade_no, evidence,
                                      key=f"bill_paid_not_recorded:{bill_date}:{row.out_trade_no}")
            return "settled_from_bill"
        return settled.anomaly or settled.outcome


def _bill_time(value: str) -> str | None:
    """'2024-05-01 12:00:00' (UTC+8) -> RFC 3339."""
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).isoformat()
    except (TypeError, ValueError):
        return None
