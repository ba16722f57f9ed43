"""The order state machine, written as data.

`TRANSITIONS[from]` is the set of states an order may move to; a pair that is not in
the table is illegal.  `ENTRY_EVENTS[state]` is the fact recorded on entering a state.
`shared.store.OrderStore.transition` is the one function that applies a transition
(compare-and-set on `payStatus`).  States are WeChat Pay's `trade_state` names, stored
as strings.
"""

from __future__ import annotations

from types import MappingProxyType

NOTPAY = "NOTPAY"      # created, payable until expireTime
SUCCESS = "SUCCESS"    # paid (learned from a verified notification or a query)
CLOSED = "CLOSED"      # closed unpaid (expired, or closed at WeChat Pay)
PAYERROR = "PAYERROR"  # payment or prepay failed; never payable through us again
REFUND = "REFUND"      # paid, and at least one refund succeeded (refundedFee > 0)

# from -> the states it may move to.  There is no edge into NOTPAY and none out of
# CLOSED: a payment WeChat reports for a closed order is an anomaly for a human.
TRANSITIONS = MappingProxyType({
    NOTPAY: frozenset({SUCCESS, CLOSED, PAYERROR}),
    # A failed prepay may still be paid at WeChat Pay (the request timed out after it
    # was accepted); when WeChat says so, the money is real and the order is paid.
    PAYERROR: frozenset({SUCCESS, CLOSED}),
    SUCCESS: frozenset({REFUND}),
    REFUND: frozenset(),
    CLOSED: frozenset(),
})

# The fact recorded when an order enters a state; each happens at most once per order
# (unique event key "<type>:<outTradeNo>").
ENTRY_EVENTS = MappingProxyType({
    SUCCESS: "order.paid",
    CLOSED: "order.closed",
    PAYERROR: "order.failed",
    REFUND: "order.refunded",
})


def sources_of(target: str) -> tuple[str, ...]:
    """The states from which `target` may be reached."""
    return tuple(source for source, targets in TRANSITIONS.items() if target in targets)


# States that prove the order went through another one: a REFUND order was paid.
PASSED_THROUGH = MappingProxyType({REFUND: frozenset({SUCCESS})})


def has_reached(state: str, target: str) -> bool:
    """True when an order in `state` is in `target` or has been through it (so a
    transition to `target` is already done, e.g. a replayed payment after a refund)."""
    return state == target or target in PASSED_THROUGH.get(state, ())


def is_paid(state: str) -> bool:
    """Money was received for an order in this state."""
    return state in (SUCCESS, REFUND)
