"""The one error type of the simulator: an HTTP status plus WeChat's `{code, message}`."""

from __future__ import annotations


class SimError(Exception):
    """Raised by the ledger and the control API; the HTTP layer turns it into a reply.

    `code`/`message` follow WeChat Pay's error body (`{"code": "PARAM_ERROR", ...}`);
    `detail` is WeChat's optional `{"field", "value", "issue", "location"}`.
    """

    def __init__(self, status: int, code: str, message: str, detail: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def body(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body


def param_error(field: str, issue: str, value: object = None, location: str = "body") -> SimError:
    """WeChat's 400 PARAM_ERROR, naming the field like its `detail` does."""
    detail = {"field": field, "issue": issue, "location": location}
    if value is not None:
        detail["value"] = value
    return SimError(400, "PARAM_ERROR", f"参数错误: {field} {issue}", detail)
