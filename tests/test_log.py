"""Structured logs: one JSON object per line, secrets masked by field name."""

import io
import json
import sys

from shared import log as log_module


def test_log_lines_are_json_and_mask_secret_fields():
    sink = io.StringIO()
    log_module.set_sink(sink)
    try:
        log_module.log("x.happened", outTradeNo="N1", sessionKey="S3CR3T", nested={"apiKey": "K3Y", "n": 1},
                       orderToken="T0K3N", amount=100)
    finally:
        log_module.set_sink(sys.stdout)
    line = sink.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["event"] == "x.happened" and record["outTradeNo"] == "N1" and record["amount"] == 100
    assert record["sessionKey"] == "***" and record["orderToken"] == "***"
    assert record["nested"] == {"apiKey": "***", "n": 1}
    for secret in ("S3CR3T", "K3Y", "T0K3N"):
        assert secret not in line
