"""SCF entry point of `reconcile`: the timer sweep, and manual operations.

Timer event {"Type": "Timer", ...}: one sweep (expiry, lost callbacks, refunds, daily bill).
Invocation {"action": "refund" | "reconcile" | "sweep", ...}: see shared/admin.py.
"""

from shared import runtime
from shared.admin import handle_event

runtime.warm("reconcile")


def main_handler(event, context):
    return handle_event(runtime.instance("reconcile"), event, context)
