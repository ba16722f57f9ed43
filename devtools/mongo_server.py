"""The embedded MongoDB for tests and `make run`: nx-27017, a wire-protocol server on SQLite.

nx-27017's default SQL update path silently changes types (`$set: True` stores 1, see
`../shared/reference/test-backends.md`); its "fallback" query path keeps them.  This
module is the launcher that switches fallback on, plus a small process manager:

    server = MongoServer(db_file).start()   # free loopback port, waits until it answers
    server.uri                              # mongodb://127.0.0.1:PORT
    server.stop(); server.start()           # restart on the same port and file

Run directly: `python -m devtools.mongo_server --db FILE --port 27017`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class MongoServer:
    """An nx-27017 subprocess on loopback with a file database."""

    def __init__(self, db_file: Path, port: int | None = None, log_file: Path | None = None):
        self.db_file = Path(db_file)
        self.port = port or free_port()
        self.log_file = Path(log_file) if log_file else self.db_file.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> MongoServer:
        if self.process and self.process.poll() is None:
            return self
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "devtools.mongo_server", "--db", str(self.db_file),
               "--port", str(self.port)]
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                            env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {self.process.returncode}; see {self.log_file}")
            if _port_answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nx-27017 did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        # Wait until the port is really free so a restart can bind it again.
        deadline = time.monotonic() + timeout
        while _port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> MongoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="nx-27017 with type-preserving updates")
    parser.add_argument("--db", required=True, help="SQLite database file")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    from neosqlite.collection import query_helper
    from nx_27017 import nx_27017

    query_helper.set_force_fallback(True)
    run_dir = Path(args.db).resolve().parent
    sys.argv = ["nx-27017", "--db", args.db, "--host", args.host, "-p", str(args.port),
                "--log-file", str(run_dir / f"nx-{args.port}.log"),
                "--pid-file", str(run_dir / f"nx-{args.port}.pid")]
    nx_27017.main()


if __name__ == "__main__":
    main()
