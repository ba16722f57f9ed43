"""Child of `make bench`: one sweep's relay (one SCF instance), started on a line from stdin.

Environment: the reconcile function's configuration with FULFILMENT_WEBHOOK_URL/SECRET.
Prints {"delivered": n, "counts": {...}} when no due fact is left.
"""
import io
import json
import sys

from shared import log
from shared.config import load_config
from shared.http import HttpClient
from shared.outbox import Relay
from shared.store.mongo import MongoOrderStore


class Summary:
    def __init__(self):
        self.counts = {}

    def add(self, outcome):
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class Forever:
    def expired(self):
        return False


log.set_sink(io.StringIO())
config = load_config("reconcile")
store = MongoOrderStore(config.mongodb_uri, config.mongodb_db)
store.ping()
relay = Relay(config, store, HttpClient())
print("ready", flush=True)
sys.stdin.readline()
summary = Summary()
relay.run(summary, Forever())
print(json.dumps({"delivered": summary.counts.get("delivered", 0), "counts": summary.counts}), flush=True)
