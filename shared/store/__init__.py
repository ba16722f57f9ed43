"""The order store: the port (`OrderStore`) and its adapters.

    from shared.store import OrderStore                       # the port (no driver imported)
    from shared.store.mongo import MongoOrderStore            # production, and integration tests
    from shared.store.memory import InMemoryOrderStore        # fast unit tests of the services

See `shared/store/port.py` for the rules every adapter keeps.
"""

from shared.store.port import (
    ANOMALY_OPEN,
    INDEXES,
    REFUND_RELEASED,
    REFUND_RESERVED,
    REFUND_SUCCEEDED,
    Index,
    OrderStore,
    TransitionResult,
    Where,
    now_ms,
)

__all__ = ["ANOMALY_OPEN", "INDEXES", "REFUND_RELEASED", "REFUND_RESERVED", "REFUND_SUCCEEDED", "Index",
           "OrderStore", "TransitionResult", "Where", "now_ms"]
