"""Child of `make bench`: the floor of a cold start.

The same interpreter importing what any WeChat Pay function on MongoDB needs (pymongo,
cryptography's RSA and AES-GCM, http.client) from a compiled tree, plus one MongoDB ping.
argv[1]: the MongoDB URI.
"""
import time

_started = time.perf_counter()
import http.client  # noqa: E402, F401
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import pymongo  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402, F401
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402, F401

_imported = time.perf_counter()
pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=3000, serverMonitoringMode="poll").admin.command("ping")
_replied = time.perf_counter()
print("BENCH=" + json.dumps({"import_s": _imported - _started, "handle_s": _replied - _imported, "status": 200,
                             "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
