"""`make run`: the whole payment loop on one machine.

Starts, on loopback:
- the embedded MongoDB (nx-27017, file database under .local/mongo/),
- the WeChat Pay simulator (keys under .local/keys/, made on first run),
- the local gateway that turns HTTP requests into SCF events for `prepare` and
  `callback`, and serves the checkout demo page at /demo/,
- a shop's webhook receiver that verifies and prints every fact delivered to it,
- `reconcile` on a timer (every 10 s here, as SCF's timer would every 5 minutes), with
  SHIPPING_MODE=virtual, so each paid order's shipping information is uploaded,
- the developer console at /console/ (devtools/console.py), with a test clock that
  moves the functions' time forward,
then seeds demo products, writes the functions' environment to .local/stack.env (mode
0600, for `python -m shared.admin ...` against this stack) and prints a copy-paste
walk-through.  Ctrl-C stops everything.

It never uses a server it did not start: a port already taken stops it with a message
naming the port (choose others with --mongo-port, --sim-port, --gateway-port,
--shop-port, or `make run MONGO_PORT=...`).

Options: --shape apigw (API Gateway events instead of Function URL ones), ports,
--sweep-every SECONDS (0: no timer).
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_PRODUCTS = [
    ("A1", "Oolong tea 250g", 1990),
    ("B2", "Moon cake", 1288),
    ("C3", "Sticker pack", 1),
]


ENV_FILE_NAME = "stack.env"


def _listening(what: str, port: int, start):
    """Start a server; a port in use stops the stack with a message naming it."""
    from devtools.mongo_server import PortInUse

    try:
        return start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port, what) from None
        raise


def write_env_file(path: Path, environ: dict[str, str]) -> None:
    """The functions' environment for `python -m shared.admin` (holds the local keys: 0600)."""
    from shared.env_file import format_env_line

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("# the local stack's environment, written by `make run` (local keys only)\n")
        handle.writelines(format_env_line(name, value) for name, value in sorted(environ.items()))
    os.replace(temporary, path)


class LocalStack:
    """MongoDB + simulator + gateway, wired together through the environment."""

    def __init__(self, data_dir: Path, *, mongo_port: int = 0, sim_port: int = 0, gateway_port: int = 0,
                 shop_port: int = 0, shape: str = "url", retry_factor: float = 0.02, sweep_every: float = 0,
                 out=None):
        self.data_dir = Path(data_dir)
        self.ports = (mongo_port, sim_port, gateway_port, shop_port)
        self.shape = shape
        self.retry_factor = retry_factor
        self.sweep_every = sweep_every
        self._out = out
        self.mongo = self.simulator = self.gateway = self.store = self.shop = self.reconcile = None
        self.console = None
        self.environ: dict[str, str] = {}
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def start(self) -> LocalStack:
        from devtools.console import Console, TestClock
        from devtools.demo import demo_routes
        from devtools.gateway import Gateway, load_handler
        from devtools.mongo_server import MongoServer
        from devtools.sim_keys import load_or_create
        from devtools.webhook_receiver import WebhookReceiver
        from devtools.wechatpay_simulator import Simulator
        from shared import runtime
        from shared.store.mongo import MongoOrderStore

        mongo_port, sim_port, gateway_port, shop_port = self.ports
        self.mongo = MongoServer(self.data_dir / "mongo" / "cloudpay.db", port=mongo_port or None).start()
        keys = load_or_create(self.data_dir / "keys")
        self.simulator = _listening("the simulator", sim_port,
                                    lambda: Simulator(keys, retry_factor=self.retry_factor).start(port=sim_port))
        self.gateway = _listening("the gateway", gateway_port,
                                  lambda: Gateway({}, shape=self.shape).start(port=gateway_port))
        webhook_secret = secrets.token_urlsafe(32)   # the shop and the relay share it; new each run
        self.shop = _listening("the shop's receiver", shop_port,
                               lambda: WebhookReceiver(webhook_secret, port=shop_port, out=self._out).start())
        # The in-process functions get their configuration injected before they load, so
        # their cold start sees a complete environment (os.environ is left alone).
        self.environ = {**keys.function_environ(self.simulator.url, f"{self.gateway.url}/callback",
                                                self.mongo.uri), "MONGODB_DB": "cloudpay",
                        "FULFILMENT_WEBHOOK_URL": self.shop.url, "FULFILMENT_WEBHOOK_SECRET": webhook_secret,
                        "SHIPPING_MODE": "virtual"}
        self.clock = TestClock()
        runtime.configure(self.environ, clock=self.clock)
        self.store = MongoOrderStore(self.mongo.uri, "cloudpay", clock=self.clock)
        for sku, name, price in DEMO_PRODUCTS:
            self.store.upsert_product(sku, name, price, active=True)
        prepare = load_handler(ROOT / "functions/prepare/index.py")
        self.reconcile = load_handler(ROOT / "functions/reconcile/index.py")
        self.console = Console(store=self.store, simulator=self.simulator, prepare=prepare,
                               reconcile=self.reconcile, clock=self.clock, callback_url=f"{self.gateway.url}/callback")
        routes = {"/prepare": prepare,
                  "/callback": load_handler(ROOT / "functions/callback/index.py"),
                  "/console": self.console.handle,
                  **demo_routes(self.simulator.url, self.store)}
        for prefix, handler in routes.items():
            self.gateway.add_route(prefix, handler)
        write_env_file(self.data_dir / ENV_FILE_NAME, self.environ)
        if self.sweep_every > 0:
            self._timer = threading.Thread(target=self._sweep_forever, name="sweep-timer", daemon=True)
            self._timer.start()
        return self

    def sweep(self) -> dict:
        """One sweep now, as SCF's timer trigger invokes `reconcile`."""
        return self.reconcile({"Type": "Timer", "TriggerName": "local-timer", "Message": ""},
                              {"time_limit_in_ms": 60_000, "request_id": "local-timer"})

    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.sweep_every):
            self.sweep()

    def stop(self) -> None:
        from shared import runtime

        self._stop.set()
        if self._timer is not None:
            self._timer.join(30)
        for part in (self.gateway, self.simulator, self.shop):
            if part is not None:
                part.stop()
        if self.store is not None:
            self.store.close()
            runtime.configure(None)
        if self.mongo is not None:
            self.mongo.stop()

    def __enter__(self) -> LocalStack:
        return self if self.mongo is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def walkthrough(gateway_url: str, sim_url: str, shop_url: str = "", sweep_every: float = 0) -> str:
    timer = f"every {sweep_every:g} s" if sweep_every > 0 else "off (--sweep-every)"
    return f"""
cloudpay-scf local stack is up.
  console   {gateway_url}/console/         (every order's life, buttons, test clock)
  demo page {gateway_url}/demo/            (plays the mini-program in a browser)
  prepare   {gateway_url}/prepare/orders
  callback  {gateway_url}/callback          (the simulator notifies here)
  simulator {sim_url}                (control API under /_sim/)
  shop      {shop_url}   (prints each delivered fact: [shop] ...)
  sweep     reconcile {timer}; SHIPPING_MODE=virtual uploads shipping information
  admin     python -m shared.admin sweep | refund OTN FEN | products load FILE ...
            (uses this stack's environment, .local/stack.env)

Walk-through (copy and paste; a fresh cart and key each time, so it runs again and again):

  # 1. create an order as the mini-program would (login codes of the form test-<name>)
  KEY=walk-$(date +%s)-$RANDOM; QTY=$((RANDOM % 3 + 1))
  ANSWER=$(curl -s -X POST {gateway_url}/prepare/orders -H 'Content-Type: application/json' \\
       -d '{{"code": "test-alice", "items": [{{"sku": "A1", "quantity": '$QTY'}}], "idempotencyKey": "'$KEY'"}}')
  echo "$ANSWER"

  # 2. take outTradeNo and orderToken from the answer:
  OTN=$(echo "$ANSWER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["outTradeNo"])')
  TOKEN=$(echo "$ANSWER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["orderToken"])')
  curl -s {gateway_url}/prepare/orders/$OTN -H "X-Order-Token: $TOKEN"      # "payStatus":"NOTPAY"

  # 3. pay as the user; the simulator sends the signed notification to the callback
  curl -s -X POST {sim_url}/_sim/orders/$OTN/pay -d '{{}}'
  curl -s {gateway_url}/prepare/orders/$OTN -H "X-Order-Token: $TOKEN"      # "payStatus":"SUCCESS"
  # this window prints "[shop] order.paid ..." (delivered, signed), and after the next
  # sweep "[shop] order.shipped ..." (the shipping upload to WeChat); see it with
  curl -s {sim_url}/_sim/shipping

  # 4. the iOS case (no notification): repeat step 1 and 2 (a new key), then pay with
  curl -s -X POST {sim_url}/_sim/orders/$OTN/pay -d '{{"notify": "drop"}}'
  # and the status query of step 2 still answers SUCCESS (it asks WeChat Pay)

  # Each order's timeline: {gateway_url}/console/

Press Ctrl-C to stop.
"""


def main(argv: list[str] | None = None) -> None:
    from devtools.mongo_server import PortInUse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".local"))
    parser.add_argument("--mongo-port", type=int, default=27017)
    parser.add_argument("--sim-port", type=int, default=8090)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--shape", choices=["url", "apigw"], default="url")
    parser.add_argument("--shop-port", type=int, default=8091)
    parser.add_argument("--retry-factor", type=float, default=0.02,
                        help="compress WeChat's notification retry schedule (15 s -> 0.3 s)")
    parser.add_argument("--sweep-every", type=float, default=10.0, help="seconds between sweeps (0: none)")
    args = parser.parse_args(argv)

    stack = LocalStack(Path(args.data_dir), mongo_port=args.mongo_port, sim_port=args.sim_port,
                       gateway_port=args.gateway_port, shop_port=args.shop_port, shape=args.shape,
                       retry_factor=args.retry_factor, sweep_every=args.sweep_every)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start()
    except PortInUse as error:
        stack.stop()
        print(f"make run: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    with stack:
        print(walkthrough(stack.gateway.url, stack.simulator.url, stack.shop.url, stack.sweep_every), flush=True)
        stop.wait()
        print("stopping ...", flush=True)
    print("stopped.", flush=True)


if __name__ == "__main__":
    main()
