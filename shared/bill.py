"""WeChat Pay's trade bill: the CSV inside the v3 tradebill GZIP (same text as v2 downloadbill).

Layout: a detail header line, detail rows, a summary header (总交易单数,应结订单总金额,...)
and one summary row.  Every data value is prefixed with a backtick (so Excel keeps long
numbers as text).  Amounts are yuan strings; they become integer fen here with string
and integer arithmetic only (never a float).

Columns are found by header name, not position: WeChat has added columns over the years
and documents that the order is not fixed.  Rows are split on ",`" (the separator
before every backticked value), so a comma inside a product name or attach does not
shift the columns; a CSV-quoted value ("`A,B", as csv writers produce) is read too.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass

from shared.errors import BillFormatError

GZIP_MAGIC = b"\x1f\x8b"
MAX_BILL_BYTES = 256 * 1024 * 1024  # decompressed; a gzip bomb stops here

_YUAN_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


# --- money ------------------------------------------------------------------------------

def yuan_to_fen(value: str, *, allow_trailing_zeros: bool = False) -> int:
    """"12.30" -> 1230, "5" -> 500, "-3.20" -> -320.  At most 2 decimals, no thousands
    separators, no sign but "-", ASCII digits only; anything else is BillFormatError.

    `allow_trailing_zeros` accepts decimals past the fen when they are all zeros: the bill
    prints fees as "0.32000".  A fraction of a fen is still refused, never rounded.
    """
    match = _YUAN_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise BillFormatError("not a yuan amount like 12.30")
    sign, whole, decimals = match.group(1), match.group(2), match.group(3) or ""
    if len(decimals) > 2:
        if not allow_trailing_zeros or decimals[2:].strip("0"):
            raise BillFormatError("yuan amount has more than 2 decimals (a fraction of a fen)")
        decimals = decimals[:2]
    fen = int(whole) * 100 + int(decimals.ljust(2, "0"))
    return -fen if sign else fen


def fen_to_yuan(fen: int) -> str:
    """1230 -> "12.30", -5 -> "-0.05" (integer arithmetic; the inverse of yuan_to_fen)."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise TypeError("fen must be an int")
    yuan, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{yuan}.{cents:02d}"


# --- the bill ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TradeBillRow:
    """One detail line.  Amounts in fen; "" / 0 for a column this bill type lacks
    (a SUCCESS bill has no refund columns).  `trade_time` is UTC+8, as printed."""

    trade_time: str
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    trade_state: str          # SUCCESS for a payment line, REFUND for a refund line, ...
    total_fee: int            # 应结订单金额: settled amount, order amount minus not-pre-funded
                              # coupons (0.00 on refund lines); 总金额 in the oldest format
    coupon_fee: int           # 代金券金额: every coupon, pre-funded or not
    refund_id: str            # "0" on payment lines, as WeChat prints it
    out_refund_no: str
    refund_fee: int           # 退款金额
    refund_status: str
    description: str          # 商品名称
    attach: str               # 商户数据包
    fee: int                  # 手续费 (negative on refund lines: fee given back)
    order_amount: int         # 订单金额: the order's total, coupons included (0 if absent)
    coupon_refund_fee: int = 0   # 充值券退款金额
    refund_request_fee: int = 0  # 申请退款金额


@dataclass(frozen=True)
class TradeBillSummary:
    count: int                # 总交易单数: payment and refund lines together
    total_fee: int            # 应结订单总金额
    refund_fee: int           # 退款总金额
    coupon_refund_fee: int    # 充值券退款总金额
    fee: int                  # 手续费总金额
    order_amount: int         # 订单总金额
    refund_request_fee: int   # 申请退款总金额


@dataclass(frozen=True)
class TradeBill:
    rows: tuple[TradeBillRow, ...]
    summary: TradeBillSummary
    columns: frozenset[str] = frozenset()  # the row fields this bill's header has

    @property
    def has_order_amount(self) -> bool:
        """The current format: 应结订单金额 (settled) and 订单金额 (the order's total)
        apart.  The oldest has only 总金额, the order's total."""
        return "order_amount" in self.columns


# field -> (header names, oldest last; kind).  Kinds: "text", "fen" (2 decimals), "fee"
# (trailing zeros allowed).  Required columns are the ones reconciliation cannot do without.
_ROW_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "trade_time": (("交易时间",), "text"),
    "appid": (("公众账号ID",), "text"),
    "mchid": (("商户号",), "text"),
    "transaction_id": (("微信订单号",), "text"),
    "out_trade_no": (("商户订单号",), "text"),
    "openid": (("用户标识",), "text"),
    "trade_type": (("交易类型",), "text"),
    "trade_state": (("交易状态",), "text"),
    # Real bills say 应结订单金额 in the detail header (应结订单总金额 is the summary's);
    # both are accepted, and 总金额 from the oldest format.
    "total_fee": (("应结订单金额", "应结订单总金额", "总金额"), "fen"),
    "coupon_fee": (("代金券金额", "代金券或立减优惠金额", "企业红包金额"), "fen"),
    "refund_id": (("微信退款单号",), "text"),
    "out_refund_no": (("商户退款单号",), "text"),
    "refund_fee": (("退款金额",), "fen"),
    "refund_status": (("退款状态",), "text"),
    "description": (("商品名称",), "text"),
    "attach": (("商户数据包",), "text"),
    "fee": (("手续费",), "fee"),
    "order_amount": (("订单金额",), "fen"),
    "coupon_refund_fee": (("充值券退款金额", "代金券或立减优惠退款金额", "企业红包退款金额"), "fen"),
    "refund_request_fee": (("申请退款金额",), "fen"),
}
_ROW_REQUIRED = ("trade_time", "transaction_id", "out_trade_no", "trade_state", "total_fee")
# Documented columns that carry no money (费率 is a rate), read by no one here.
_IGNORED_COLUMNS = frozenset({"特约商户号", "子商户号", "设备号", "付款银行", "货币种类", "退款类型", "费率",
                              "费率备注", "退款申请时间", "退款成功时间"})
# A column we do not know is ignored, unless its name says money: then we would be
# reconciling a bill whose money we do not understand, so it is refused.
_MONEY_WORDS = ("金额", "费", "额")

_SUMMARY_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "count": (("总交易单数", "总交易单"), "count"),
    "total_fee": (("应结订单总金额", "总交易额"), "fen"),
    "refund_fee": (("退款总金额", "总退款金额"), "fen"),
    "coupon_refund_fee": (("充值券退款总金额", "总代金券或立减优惠退款金额"), "fen"),
    "fee": (("手续费总金额",), "fee"),
    "order_amount": (("订单总金额",), "fen"),
    "refund_request_fee": (("申请退款总金额",), "fen"),
}
_SUMMARY_REQUIRED = ("count", "total_fee")
_SUMMARY_FIRST = _SUMMARY_COLUMNS["count"][0]


def _text(data: bytes) -> str:
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(MAX_BILL_BYTES + 1)
        except (OSError, EOFError, zlib.error):
            raise BillFormatError("bill is not a valid gzip file") from None
    if len(data) > MAX_BILL_BYTES:
        raise BillFormatError(f"bill is larger than {MAX_BILL_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")  # WeChat's CSV may start with a BOM
    except UnicodeDecodeError:
        raise BillFormatError("bill is not UTF-8 text") from None


def _header(line: str) -> list[str]:
    return [name.strip().lstrip("`").strip() for name in line.split(",")]


def _values(line: str, number: int, width: int) -> list[str]:
    """A data line's values, backticks removed.

    WeChat's bills do not quote: a comma inside a product name or attach would split
    it, so values are split on ",`" (every value starts with a backtick).  A CSV writer
    quotes such a value instead ("`A,B"); that form is read with the csv module.
    """
    if not line.startswith(("`", '"`')):
        raise BillFormatError(f"bill line {number}: values must start with a backtick",
                              details={"line": number})
    values = line[1:].split(",`") if line.startswith("`") else []
    if len(values) != width and '"' in line:
        cells = next(csv.reader([line]))
        if all(cell.startswith("`") for cell in cells):
            values = [cell[1:] for cell in cells]
    if len(values) != width:
        raise BillFormatError(f"bill line {number}: {len(values)} values under {width} columns",
                              details={"line": number})
    return [value.strip() for value in values]


def _indexes(header: list[str], columns: dict, required: tuple[str, ...], what: str) -> dict[str, int]:
    known = {name for names, _ in columns.values() for name in names} | _IGNORED_COLUMNS
    unknown_money = [name for name in header if name not in known and any(word in name for word in _MONEY_WORDS)]
    if unknown_money:
        raise BillFormatError(f"bill {what} header has money columns we do not know: {', '.join(unknown_money)[:200]}",
                              details={"unknown": unknown_money[:10]})
    found: dict[str, int] = {}
    for field, (names, _) in columns.items():
        for name in names:
            if name in header:
                found[field] = header.index(name)
                break
    missing = [columns[field][0][0] for field in required if field not in found]
    if missing:
        raise BillFormatError(f"bill {what} header lacks {', '.join(missing)}", details={"missing": missing})
    return found


def _record(values: list[str], header: list[str], indexes: dict[str, int], columns: dict, number: int) -> dict:
    record: dict = {}
    for field, (_, kind) in columns.items():
        if field not in indexes:
            record[field] = "" if kind == "text" else 0
            continue
        value, name = values[indexes[field]], header[indexes[field]]
        if kind == "text":
            record[field] = value
        elif kind == "count":
            # A whole number; "45.0" too (the official PHP SDK's sample bill prints one so).
            whole, dot, zeros = value.partition(".")
            if not (whole.isascii() and whole.isdigit()) or (dot and (not zeros or zeros.strip("0"))):
                raise BillFormatError(f"bill line {number}: {name} is not a count",
                                      details={"line": number, "column": name})
            record[field] = int(whole)
        elif value == "" and field != "total_fee":
            record[field] = 0  # an empty optional amount
        else:
            try:
                record[field] = yuan_to_fen(value, allow_trailing_zeros=kind == "fee")
            except BillFormatError as error:
                # The value is not repeated: a shifted row could put payer data here.
                raise BillFormatError(f"bill line {number}: {name}: {error.message}",
                                      details={"line": number, "column": name}) from None
    return record


def parse_trade_bill(data: bytes) -> TradeBill:
    """Parse and check a trade bill (gzip or plain CSV bytes).

    Checks: the summary's count equals the detail rows, and its 应结订单总金额 (and
    退款总金额, when both sides have it) equals the sum of the rows.  A truncated file
    has no summary and is refused.
    """
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(_text(data).split("\n"), 1)
             if line.strip()]
    if not lines:
        raise BillFormatError("bill is empty (no header)")
    number, line = lines[0]
    header = _header(line)
    indexes = _indexes(header, _ROW_COLUMNS, _ROW_REQUIRED, "detail")

    rows: list[TradeBillRow] = []
    position = 1
    while position < len(lines):
        number, line = lines[position]
        if line.lstrip("`").startswith(_SUMMARY_FIRST) and _header(line)[0] in _SUMMARY_FIRST:
            break
        rows.append(TradeBillRow(**_record(_values(line, number, len(header)), header, indexes, _ROW_COLUMNS,
                                               number)))
        position += 1
    else:
        raise BillFormatError("bill has no summary (truncated?)")

    summary_header = _header(lines[position][1])
    summary_indexes = _indexes(summary_header, _SUMMARY_COLUMNS, _SUMMARY_REQUIRED, "summary")
    rest = lines[position + 1:]
    if len(rest) != 1:
        raise BillFormatError(f"bill has {len(rest)} lines after the summary header, expected 1",
                              details={"line": lines[position][0]})
    number, line = rest[0]
    summary = TradeBillSummary(**_record(_values(line, number, len(summary_header)), summary_header,
                                         summary_indexes, _SUMMARY_COLUMNS, number))

    if summary.count != len(rows):
        raise BillFormatError(f"bill summary counts {summary.count} lines, the bill has {len(rows)}",
                              details={"summaryCount": summary.count, "rows": len(rows)})
    checks = [("total_fee", "应结订单总金额")]
    if "refund_fee" in summary_indexes and "refund_fee" in indexes:
        checks.append(("refund_fee", "退款总金额"))
    if "order_amount" in summary_indexes and "order_amount" in indexes:
        checks.append(("order_amount", "订单总金额"))
    for field, name in checks:
        total = sum(getattr(row, field) for row in rows)
        if total != getattr(summary, field):
            raise BillFormatError(f"bill summary {name} {fen_to_yuan(getattr(summary, field))} "
                                  f"differs from the rows' sum {fen_to_yuan(total)}",
                                  details={"column": name, "summary": getattr(summary, field), "rows": total})
    return TradeBill(tuple(rows), summary, frozenset(indexes))
