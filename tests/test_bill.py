"""shared.bill: WeChat Pay trade bills in WeChat's exact text format, and yuan <-> fen."""

from __future__ import annotations

import gzip
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.bill import BillFormatError, TradeBillRow, fen_to_yuan, parse_trade_bill, yuan_to_fen

# The ALL bill's detail header as the brief gives it (应结订单总金额), and as current
# bills print it (应结订单金额); both must parse.
HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
          "货币种类,应结订单总金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
          "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注").split(",")
CURRENT_HEADER = [("应结订单金额" if name == "应结订单总金额" else name) for name in HEADER]
SUMMARY_HEADER = ("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,"
                  "申请退款总金额").split(",")
TOTAL = "应结订单总金额"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def payment(n: int, total: str = "12.30", fee: str = "0.07", **extra) -> dict[str, str]:
    values = {
        "交易时间": f"2024-05-01 12:00:{n:02d}", "公众账号ID": "wx0123456789abcdef", "商户号": "1900000001",
        "特约商户号": "0", "设备号": "", "微信订单号": f"42000000012024050100000{n:05d}",
        "商户订单号": f"CP20240501{n:06d}", "用户标识": OPENID, "交易类型": "JSAPI", "交易状态": "SUCCESS",
        "付款银行": "OTHERS", "货币种类": "CNY", TOTAL: total, "代金券金额": "0.00", "微信退款单号": "0",
        "商户退款单号": "0", "退款金额": "0.00", "充值券退款金额": "0.00", "退款类型": "", "退款状态": "",
        "商品名称": "A1 x2", "商户数据包": "", "手续费": fee, "费率": "0.60%", "订单金额": total,
        "申请退款金额": "0.00", "费率备注": "",
    }
    values.update(extra)
    return values


def refund(n: int, amount: str = "3.20") -> dict[str, str]:
    return payment(n, total="0.00", fee="-0.02", **{
        "交易时间": f"2024-05-01 18:00:{n:02d}", "交易状态": "REFUND", "微信退款单号": f"5030000000202405010{n:05d}",
        "商户退款单号": f"RF{n:06d}", "退款金额": amount, "退款类型": "ORIGINAL", "退款状态": "SUCCESS",
        "订单金额": "0.00", "申请退款金额": amount})


def _fen_or_zero(value: str) -> int:
    try:
        return yuan_to_fen(value, allow_trailing_zeros=True)
    except BillFormatError:
        return 0  # a bad amount under test: the test gives the summary itself


def _sum(rows, column: str) -> str:
    return fen_to_yuan(sum(_fen_or_zero(row[column]) for row in rows))


def bill_text(rows: list[dict], header: list[str] = HEADER, summary: dict | None = None,
              newline: str = "\n") -> str:
    """A bill as WeChat prints it: header, backticked rows, summary header, backticked summary."""
    total_column = next(name for name in header if name in ("应结订单总金额", "应结订单金额"))
    values = {
        "总交易单数": str(len(rows)),
        "应结订单总金额": _sum([{TOTAL: row.get(TOTAL, "0")} for row in rows], TOTAL),
        "退款总金额": _sum(rows, "退款金额") if "退款金额" in header else "0.00",
        "充值券退款总金额": "0.00",
        "手续费总金额": _sum(rows, "手续费") + "000",
        "订单总金额": _sum(rows, "订单金额"),
        "申请退款总金额": _sum(rows, "申请退款金额") if "申请退款金额" in header else "0.00",
    }
    values.update(summary or {})
    lines = [",".join(header)]
    for row in rows:
        row = {**row, total_column: row[TOTAL]}
        lines.append("`" + ",`".join(row.get(name, "") for name in header))
    lines.append(",".join(SUMMARY_HEADER))
    lines.append("`" + ",`".join(values[name] for name in SUMMARY_HEADER))
    return newline.join(lines) + newline


def _bill(*args, **kwargs) -> bytes:
    return bill_text(*args, **kwargs).encode("utf-8")


ROWS = [payment(1), payment(2, total="0.01", fee="0.00"), refund(3)]


# --- parsing ----------------------------------------------------------------------------

def test_all_bill_rows_and_summary():
    bill = parse_trade_bill(_bill(ROWS))
    assert len(bill.rows) == 3
    first = bill.rows[0]
    assert first == TradeBillRow(
        trade_time="2024-05-01 12:00:01", appid="wx0123456789abcdef", mchid="1900000001",
        transaction_id="4200000001202405010000000001", out_trade_no="CP20240501000001", openid=OPENID,
        trade_type="JSAPI", trade_state="SUCCESS", total_fee=1230, coupon_fee=0, refund_id="0",
        out_refund_no="0", refund_fee=0, refund_status="", description="A1 x2", attach="", fee=7,
        order_amount=1230)
    back = bill.rows[2]
    assert (back.trade_state, back.total_fee, back.refund_fee, back.fee, back.out_refund_no) == \
        ("REFUND", 0, 320, -2, "RF000003")
    summary = bill.summary
    assert (summary.count, summary.total_fee, summary.refund_fee, summary.coupon_refund_fee, summary.fee,
            summary.order_amount, summary.refund_request_fee) == (3, 1231, 320, 0, 5, 1231, 320)
    assert all(isinstance(row.total_fee, int) for row in bill.rows)


def test_gzip_and_plain_give_the_same_bill():
    plain = _bill(ROWS)
    assert parse_trade_bill(gzip.compress(plain)) == parse_trade_bill(plain)


def test_bom_and_crlf_are_tolerated():
    data = "\ufeff".encode() + _bill(ROWS, newline="\r\n")
    assert parse_trade_bill(data) == parse_trade_bill(_bill(ROWS))


def test_current_header_and_five_decimal_fees():
    """Real bills: 应结订单金额 in the detail header, fees like 0.32000 / -0.27000."""
    rows = [payment(1, total="60.00", fee="0.32000"), refund(2, amount="50.00")]
    rows[1]["手续费"] = "-0.27000"
    bill = parse_trade_bill(_bill(rows, header=CURRENT_HEADER))
    assert [row.fee for row in bill.rows] == [32, -27]
    assert bill.summary.fee == 5 and bill.summary.total_fee == 6000 and bill.summary.refund_fee == 5000


def test_columns_found_by_name_in_any_order():
    header = HEADER + ["某个新列"]
    random.Random(7).shuffle(header)
    rows = [{**row, "某个新列": "x"} for row in ROWS]
    assert parse_trade_bill(_bill(rows, header=header)) == parse_trade_bill(_bill(ROWS))


def test_success_bill_without_refund_columns():
    refund_columns = {"微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态",
                      "申请退款金额"}
    header = [name for name in HEADER if name not in refund_columns]
    bill = parse_trade_bill(_bill(ROWS[:2], header=header))
    assert [(row.refund_id, row.refund_fee) for row in bill.rows] == [("", 0), ("", 0)]
    assert bill.summary.total_fee == 1231


def test_empty_bill():
    bill = parse_trade_bill(_bill([]))
    assert bill.rows == ()
    assert (bill.summary.count, bill.summary.total_fee, bill.summary.refund_fee) == (0, 0, 0)


def test_commas_inside_free_text_do_not_shift_columns():
    rows = [payment(1, **{"商品名称": "苹果, 梨", "商户数据包": '{"a":1,"b":2}'})]
    row = parse_trade_bill(_bill(rows)).rows[0]
    assert (row.description, row.attach, row.total_fee) == ("苹果, 梨", '{"a":1,"b":2}', 1230)


def test_csv_quoted_values_are_read_too():
    """A bill written by a csv writer quotes values holding commas or quotes."""
    rows = [payment(1, **{"商品名称": "苹果, 梨", "商户数据包": '{"a":1,"b":2}'}), payment(2)]
    text = bill_text(rows)
    text = text.replace("`苹果, 梨", '"`苹果, 梨"').replace('`{"a":1,"b":2}', '"`{""a"":1,""b"":2}"')
    first = parse_trade_bill(text.encode()).rows[0]
    assert (first.description, first.attach, first.total_fee) == ("苹果, 梨", '{"a":1,"b":2}', 1230)


@pytest.mark.parametrize("count", ["3.0", "3.00", "3"])
def test_whole_counts_written_with_a_fraction_of_zeros_are_accepted(count):
    """The official PHP SDK's sample bill prints the summary count as `45.0`."""
    assert parse_trade_bill(_bill(ROWS, summary={"总交易单数": count})).summary.count == 3


@pytest.mark.parametrize("count", ["3.5", "3.", ".0", "3.0.0", "-3", "3e0", "３"])
def test_counts_that_are_not_whole_numbers_are_refused(count):
    error = _refused(_bill(ROWS, summary={"总交易单数": count}))
    assert error.details["column"] == "总交易单数"


def test_a_coupon_order_keeps_its_settled_and_order_amounts_apart():
    """A not-pre-funded coupon of 1.00 on a 10.00 order: 应结订单金额 9.00, 代金券金额 1.00,
    订单金额 10.00 (pay.weixin.qq.com/docs/merchant/products/bill-download/format-trade.html)."""
    rows = [payment(1, total="9.00", **{"代金券金额": "1.00", "订单金额": "10.00"})]
    bill = parse_trade_bill(_bill(rows, header=CURRENT_HEADER))
    [row] = bill.rows
    assert (row.total_fee, row.coupon_fee, row.order_amount) == (900, 100, 1000)
    assert bill.has_order_amount and bill.summary.order_amount == 1000


def test_the_order_total_is_checked_against_the_rows():
    rows = [payment(1, total="9.00", **{"代金券金额": "1.00", "订单金额": "10.00"})]
    error = _refused(_bill(rows, summary={"订单总金额": "9.00"}))
    assert error.details == {"column": "订单总金额", "summary": 900, "rows": 1000}


def test_the_oldest_format_has_no_separate_order_amount():
    header = [("总金额" if name == "应结订单总金额" else name) for name in HEADER if name != "订单金额"]
    text = bill_text([payment(1)], header=[("应结订单总金额" if n == "总金额" else n) for n in header])
    text = text.replace("应结订单总金额,代金券金额", "总金额,代金券金额", 1)
    bill = parse_trade_bill(text.encode())
    assert not bill.has_order_amount and bill.rows[0].total_fee == 1230 and bill.rows[0].order_amount == 0


def test_older_coupon_column_names_are_read():
    header = [{"代金券金额": "企业红包金额", "充值券退款金额": "企业红包退款金额"}.get(n, n) for n in HEADER]
    rows = [{**payment(1), "企业红包金额": "0.50", "企业红包退款金额": "0.00"}]
    assert parse_trade_bill(_bill(rows, header=header)).rows[0].coupon_fee == 50


@pytest.mark.parametrize("column", ["单品优惠金额", "服务费", "补差额"])
def test_an_unknown_column_that_touches_money_refuses_the_bill(column):
    rows = [{**row, column: "1.00"} for row in ROWS]
    error = _refused(_bill(rows, header=HEADER + [column]))
    assert error.details["unknown"] == [column] and column in error.message


def test_an_unknown_column_without_money_is_ignored():
    rows = [{**row, "门店编号": "S001"} for row in ROWS]
    assert parse_trade_bill(_bill(rows, header=HEADER + ["门店编号"])).rows == parse_trade_bill(_bill(ROWS)).rows


# --- refused bills ----------------------------------------------------------------------

def _refused(data: bytes) -> BillFormatError:
    with pytest.raises(BillFormatError) as caught:
        parse_trade_bill(data)
    error = caught.value
    assert (error.status, error.code) == (502, "BILL_FORMAT")
    assert OPENID not in str(error) and OPENID not in str(error.details)
    return error


@pytest.mark.parametrize("amount", ["12.345", "1,234.56", "abc", "", "12.3.4", "¥12.30", "１２.３０", "+1.00",
                                    ".5", "5.", "1e3", " ", "0x10", "12.30000"])
def test_bad_amount_is_refused_naming_line_and_column(amount):
    rows = [payment(1), payment(2, total=amount)]
    error = _refused(_bill(rows, summary={"应结订单总金额": "12.30"}))
    assert error.details == {"line": 3, "column": "应结订单总金额"}
    assert "line 3" in error.message


def test_fraction_of_a_fen_fee_is_refused():
    error = _refused(_bill([payment(1, fee="0.05940")], summary={"手续费总金额": "0.06"}))
    assert error.details["column"] == "手续费"


def test_count_mismatch_is_refused():
    error = _refused(_bill(ROWS, summary={"总交易单数": "4"}))
    assert error.details == {"summaryCount": 4, "rows": 3}


def test_total_mismatch_is_refused():
    error = _refused(_bill(ROWS, summary={"应结订单总金额": "12.32"}))
    assert error.details == {"column": "应结订单总金额", "summary": 1232, "rows": 1231}


def test_refund_total_mismatch_is_refused():
    error = _refused(_bill(ROWS, summary={"退款总金额": "3.00"}))
    assert error.details["column"] == "退款总金额"


@pytest.mark.parametrize("mangle", [
    lambda text: text.split("总交易单数")[0],                       # truncated: no summary
    lambda text: text + "`1,`2\n",                                  # junk after the summary
    lambda text: text.replace("`A1 x2", "`A1 x2,`extra", 1),        # a row with one value too many
    lambda text: text.replace("商户订单号", "订单号X", 1),            # a required column missing
    lambda text: text.replace("\n`3,", "\n`three,", 1),             # a count that is not a number
    lambda text: text.replace("\n`2024-05-01 12:00:02", "\n2024-05-01 12:00:02", 1),  # no backticks
    lambda text: "",
    lambda text: "<xml><return_code><![CDATA[FAIL]]></return_code></xml>",
])
def test_malformed_bill_is_refused(mangle):
    _refused(mangle(bill_text(ROWS)).encode("utf-8"))


def test_broken_gzip_and_non_utf8_are_refused():
    _refused(gzip.compress(_bill(ROWS))[:40])
    _refused(b"\x1f\x8b not gzip at all")
    _refused(_bill(ROWS).replace(b"A1", b"\xff\xfe"))


# --- yuan <-> fen -----------------------------------------------------------------------

@pytest.mark.parametrize("text, fen", [
    ("12.30", 1230), ("0.01", 1), ("5", 500), ("-3.20", -320), ("0.0", 0), ("-0.00", 0), ("0", 0),
    ("1234567.89", 123456789), ("007.5", 750), ("99999999999999999999.99", 9999999999999999999999),
])
def test_yuan_to_fen(text, fen):
    assert yuan_to_fen(text) == fen


@pytest.mark.parametrize("text", ["1,234.56", "12.345", "0.001", "", "-", "abc", "1.2.3", " 1.00", "1.00 ",
                                  "+1", "--1", ".5", "5.", "1e2", "NaN", "١٢", "12.30000"])
def test_yuan_to_fen_refuses(text):
    with pytest.raises(BillFormatError):
        yuan_to_fen(text)


def test_yuan_to_fen_refuses_non_strings():
    for value in (12.3, 1230, None, b"12.30"):
        with pytest.raises(BillFormatError):
            yuan_to_fen(value)


def test_trailing_zeros_only_when_allowed():
    assert yuan_to_fen("0.32000", allow_trailing_zeros=True) == 32
    assert yuan_to_fen("-4.33000", allow_trailing_zeros=True) == -433
    with pytest.raises(BillFormatError):
        yuan_to_fen("0.05940", allow_trailing_zeros=True)


@pytest.mark.parametrize("fen, text", [(1230, "12.30"), (1, "0.01"), (0, "0.00"), (-320, "-3.20"), (-5, "-0.05"),
                                       (500, "5.00"), (10**20, "1000000000000000000.00")])
def test_fen_to_yuan(fen, text):
    assert fen_to_yuan(fen) == text


def test_fen_to_yuan_takes_ints_only():
    for value in (12.3, True, "1230", None):
        with pytest.raises(TypeError):
            fen_to_yuan(value)


@given(st.integers())
def test_yuan_fen_round_trip(fen):
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@given(st.integers(min_value=-10**15, max_value=10**15), st.integers(min_value=0, max_value=99))
def test_whole_one_and_two_decimal_forms(yuan, cents):
    sign = -1 if yuan < 0 else 1
    assert yuan_to_fen(str(yuan)) == yuan * 100
    assert yuan_to_fen(f"{yuan}.{cents:02d}") == yuan * 100 + sign * cents
    if cents % 10 == 0:
        assert yuan_to_fen(f"{yuan}.{cents // 10}") == yuan * 100 + sign * cents
