"""The trade bill (交易账单) in WeChat Pay's CSV format, and a parser for it.

Layout, as WeChat Pay serves it (pay.weixin.qq.com bill-download/format-trade):
the detail header, one row per payment or refund, the summary header, one summary row.
On a payment line 订单金额 is the order total, 代金券金额 what all coupons paid, and
应结订单金额 the order total minus the not-pre-funded (NOCASH, 免充值) coupons
(settlement_total_fee = total_fee minus those, pay.weixin.qq.com/doc/v2/partner/4011984209;
a pre-funded CASH coupon is in 代金券金额 but not subtracted); the fee is on 应结订单金额.
The summary's 应结订单总金额 and 订单总金额 are the sums of those columns.
Every value is prefixed with a backtick (so spreadsheets keep `4200...` as text);
amounts are yuan with two decimals (the fee with five), formatted from integer fen
with integer arithmetic only: a float never touches money here.

Pure functions: `render_trade_bill(entries) -> bytes`, `parse_trade_bill(bytes|str)`,
`format_yuan(fen)`, `yuan_to_fen(text)`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass

from devtools.simulator.timeutil import cst_datetime_text

DETAIL_HEADER = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
    "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
    "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
    "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
)
SUMMARY_HEADER = (
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
    "申请退款总金额",
)
# Older simulator bills (and some documentation) name the detail column 应结订单总金额.
_LEGACY_DETAIL_HEADER = tuple("应结订单总金额" if name == "应结订单金额" else name for name in DETAIL_HEADER)
# The usual mini-program rate, 0.60%, in hundredths of a percent (basis points).
FEE_RATE_BP = 60
FEE_RATE_TEXT = "0.60%"
_LINE_END = "\r\n"
_YUAN_RE = re.compile(r"^(-?)(\d+)(?:\.(\d{1,5}))?$")


@dataclass(frozen=True)
class BillEntry:
    """One bill row: a payment, or a refund of a payment (kind "refund")."""

    kind: str                  # "payment" | "refund"
    time: float                # success time (epoch seconds)
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    description: str
    attach: str
    order_fen: int             # 订单金额: the order amount the bill reports
    coupon_fen: int = 0        # 代金券金额: paid by coupons, pre-funded or not
    nocash_fen: int = 0        # of which not-pre-funded (NOCASH): not settled to the merchant
    refund_id: str = ""
    out_refund_no: str = ""
    refund_fen: int = 0

    @property
    def settlement_fen(self) -> int:
        """应结订单金额 of a payment line: the order amount less NOCASH coupons."""
        return self.order_fen - self.nocash_fen


def format_yuan(fen: int, places: int = 2) -> str:
    """Integer fen as yuan text: 1990 -> "19.90", -5 -> "-0.05", places=5 -> "19.90000"."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise TypeError("amounts are integer fen")
    if places < 2:
        raise ValueError("yuan have at least two decimals")
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan}.{cents:02d}" + "0" * (places - 2)


def yuan_to_fen(text: str) -> int:
    """Yuan text back to integer fen ("19.90" -> 1990); ValueError for a fraction of a fen."""
    match = _YUAN_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an amount: {text!r}")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    fraction = fraction.ljust(2, "0")
    if fraction[2:].strip("0"):
        raise ValueError(f"amount is not a whole number of fen: {text!r}")
    fen = int(whole) * 100 + int(fraction[:2])
    return -fen if sign else fen


def fee_fen(amount_fen: int) -> int:
    """WeChat's fee on an amount, rounded half up to the fen (integer arithmetic)."""
    return (amount_fen * FEE_RATE_BP + 5000) // 10000


def _row(entry: BillEntry) -> list[str]:
    payment = entry.kind == "payment"
    fee = fee_fen(entry.settlement_fen) if payment else -fee_fen(entry.refund_fen)
    return [
        cst_datetime_text(entry.time), entry.appid, entry.mchid, "0", "", entry.transaction_id,
        entry.out_trade_no, entry.openid, "JSAPI", "SUCCESS" if payment else "REFUND", "OTHERS", "CNY",
        format_yuan(entry.settlement_fen if payment else 0), format_yuan(entry.coupon_fen if payment else 0),
        entry.refund_id or "0", entry.out_refund_no or "0", format_yuan(entry.refund_fen), format_yuan(0),
        "" if payment else "ORIGINAL", "" if payment else "SUCCESS", entry.description, entry.attach,
        format_yuan(fee, 5), FEE_RATE_TEXT, format_yuan(entry.order_fen if payment else 0),
        format_yuan(entry.refund_fen), "",
    ]


def _summary(entries: list[BillEntry]) -> list[str]:
    payments = [e for e in entries if e.kind == "payment"]
    refunds = [e for e in entries if e.kind == "refund"]
    settlement_total = sum(e.settlement_fen for e in payments)
    order_total = sum(e.order_fen for e in payments)
    refund_total = sum(e.refund_fen for e in refunds)
    fees = sum(fee_fen(e.settlement_fen) for e in payments) - sum(fee_fen(e.refund_fen) for e in refunds)
    return [str(len(entries)), format_yuan(settlement_total), format_yuan(refund_total), format_yuan(0),
            format_yuan(fees, 5), format_yuan(order_total), format_yuan(refund_total)]


def render_trade_bill(entries: list[BillEntry]) -> bytes:
    """The bill CSV (UTF-8, CRLF), rows in time order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=_LINE_END)
    ordered = sorted(entries, key=lambda e: (e.time, e.out_trade_no, e.out_refund_no))
    writer.writerow(DETAIL_HEADER)
    writer.writerows(["`" + value for value in _row(entry)] for entry in ordered)
    writer.writerow(SUMMARY_HEADER)
    writer.writerow(["`" + value for value in _summary(ordered)])
    return buffer.getvalue().encode("utf-8")


@dataclass(frozen=True)
class TradeBill:
    rows: list[dict[str, str]]     # detail rows keyed by DETAIL_HEADER, backticks removed
    summary: dict[str, str]        # keyed by SUMMARY_HEADER


def parse_trade_bill(data: bytes | str) -> TradeBill:
    """Parse a trade bill (gzip or plain, bytes or text); ValueError when it is not one.

    Rows are keyed by DETAIL_HEADER (应结订单金额), also for a bill whose header says
    应结订单总金额 (older simulator bills)."""
    if isinstance(data, bytes):
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        data = data.decode("utf-8-sig")
    lines = [line for line in csv.reader(io.StringIO(data)) if line]
    try:
        summary_at = next(i for i, line in enumerate(lines) if line and line[0] == SUMMARY_HEADER[0])
    except StopIteration:
        raise ValueError("no summary header in the bill") from None
    if not lines or tuple(lines[0]) not in (DETAIL_HEADER, _LEGACY_DETAIL_HEADER):
        raise ValueError("the bill does not start with the trade bill header")
    if tuple(lines[summary_at]) != SUMMARY_HEADER or len(lines) != summary_at + 2:
        raise ValueError("the bill's summary is malformed")
    rows = [_unticked(DETAIL_HEADER, line) for line in lines[1:summary_at]]
    return TradeBill(rows=rows, summary=_unticked(SUMMARY_HEADER, lines[summary_at + 1]))


def _unticked(header: tuple[str, ...], line: list[str]) -> dict[str, str]:
    if len(line) != len(header):
        raise ValueError(f"a bill line has {len(line)} values, expected {len(header)}")
    return {name: value[1:] if value.startswith("`") else value for name, value in zip(header, line, strict=True)}
