"""Background work (notification deliveries, automatic refunds) that can be awaited and cancelled.

Every task is a thread given a `cancelled` event; tasks wait with `cancelled.wait(s)`
instead of `time.sleep`, so `cancel_all()` (reset) and `close()` (stop) end them at
their next pause.  `wait_idle()` is how tests know every delivery is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("devtools.simulator")


class Background:
    def __init__(self):
        self._cond = threading.Condition()
        self._tasks: dict[threading.Thread, threading.Event] = {}
        self._closed = False

    def spawn(self, name: str, work: Callable[[threading.Event], None]) -> bool:
        """Run `work(cancelled)` in a daemon thread; False once closed."""
        cancelled = threading.Event()
        thread = threading.Thread(target=self._run, args=(work, cancelled), name=name, daemon=True)
        with self._cond:
            if self._closed:
                return False
            self._tasks[thread] = cancelled
            thread.start()
        return True

    def _run(self, work: Callable[[threading.Event], None], cancelled: threading.Event) -> None:
        try:
            work(cancelled)
        except Exception:  # a bug in a task must not go unnoticed, nor kill the others
            log.exception("background task failed")
        finally:
            with self._cond:
                self._tasks.pop(threading.current_thread(), None)
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._tasks)

    def wait_idle(self, timeout: float) -> bool:
        """True once no task is left; False if `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def cancel_all(self, timeout: float = 6.0) -> bool:
        """Cancel every task and wait for them to end (an HTTP attempt in flight may take
        up to its own timeout)."""
        with self._cond:
            for cancelled in self._tasks.values():
                cancelled.set()
        return self.wait_idle(timeout)

    def close(self, timeout: float = 6.0) -> bool:
        with self._cond:
            self._closed = True
        return self.cancel_all(timeout)
