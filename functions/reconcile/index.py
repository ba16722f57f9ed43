"""SCF entry point of `reconcile`: the timer sweep, and manual operations.

Timer event {"Type": "Timer", ...}: one sweep (expiry, lost callbacks, refunds, daily bill).
Invocation {"action": "refund" | "reconcile" | "sweep", ...}: see shared/admin.py.
"""

from shared import runtime
from shared.admin import error_result, run_action
from shared.errors import CloudPayError
from shared.log import log

runtime.warm("reconcile")


def main_handler(event, context):
    if not isinstance(event, dict):
        return error_result(CloudPayError("the event must be a JSON object", code="BAD_EVENT"))
    try:
        reconciler = runtime.reconciler()
        if event.get("Type") == "Timer":
            return {"ok": True, "sweep": reconciler.sweep(context)}
        return run_action(reconciler, event, context)
    except CloudPayError as error:
        log("reconcile.failed", level="error", code=error.code, error=error.message)
        return error_result(error)
