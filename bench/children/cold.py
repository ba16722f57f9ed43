"""Child of `make bench` (run by Python 3.10 -B -S in an unpacked package): one cold start.

argv[1]: the event as JSON.  Prints BENCH={...} right after the first reply.
"""
import time

_started = time.perf_counter()
import index  # noqa: E402 - the import is what is measured

_imported = time.perf_counter()
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

reply = index.main_handler(json.loads(sys.argv[1]), {"request_id": "bench", "time_limit_in_ms": 10_000})
_replied = time.perf_counter()
print("BENCH=" + json.dumps({"import_s": _imported - _started, "handle_s": _replied - _imported,
                             "status": reply.get("statusCode") if isinstance(reply, dict) else None,
                             "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
