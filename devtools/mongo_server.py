"""The embedded MongoDB for tests and `make run`: nx-27017, a wire-protocol server on SQLite.

What nx-27017 0.8.1 gets right, and wrong (checked by hand and by tests/store/):
- right: unique indexes (DuplicateKeyError), atomic conditional updates (it serialises
  requests), queries, sort/limit, counts, restarts on the same file with nothing lost;
- wrong: its default SQL update path silently changes types (`$set: True` stores 1, a
  `$set` datetime becomes a string, `$push` of a subdocument becomes JSON text); its
  "fallback" query path keeps them, so this launcher switches fallback on;
- wrong: unique indexes are checked on insert only, not when an update changes a key
  (the store never relies on that: it never moves a key onto another document's);
- wrong: databases are not isolated.  A document inserted under one database name is
  visible under every other, and dropping any database drops every collection.  So the
  tests give each pytest session (each xdist worker) a server of its own on a fresh
  file, clear it before every test, and never share one server between sessions.
This module is the launcher, plus a small process manager:

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


class PortInUse(RuntimeError):
    def __init__(self, port: int, what: str = "MongoDB"):
        hint = " (it may be a real database)" if what == "MongoDB" else ""
        super().__init__(f"port {port} for {what}: something already listens on 127.0.0.1:{port}; it was not "
                         f"started here, so it is not used{hint}. Choose another port, or stop that server.")
        self.port = port


class MongoServer:
    """An nx-27017 subprocess on loopback with a file database."""

    def __init__(self, db_file: Path, port: int | None = None, log_file: Path | None = None, *,
                 fast: bool = False):
        # fast: nx-27017's own SQL update path (indexed, about 1 ms an operation whatever the
        # collection size) instead of the type-keeping fallback, which scans collections.
        # Only for `make bench`, whose paths never $set a boolean or a datetime.
        self.fast = fast
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
        if _port_answers(self.port):
            # Never attach to a server we did not start: it may be someone's real database.
            raise PortInUse(self.port)
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        # --parent-pid: the server exits when this process does (an interrupted test run
        # or a killed `make run` leaves no server behind).
        cmd = [sys.executable, "-m", "devtools.mongo_server", "--db", str(self.db_file),
               "--port", str(self.port), "--parent-pid", str(os.getpid())] + (["--fast"] if self.fast else [])
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


def _exit_with_parent(parent_pid: int) -> None:
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)  # the parent is gone (reparented to init): nobody will stop us

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="nx-27017 with type-preserving updates")
    parser.add_argument("--db", required=True, help="SQLite database file")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--parent-pid", type=int, help="exit when this process has gone")
    parser.add_argument("--fast", action="store_true", help="nx's SQL update path (changes some types)")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)

    from neosqlite.collection import query_helper
    from nx_27017 import nx_27017

    query_helper.set_force_fallback(not args.fast)
    run_dir = Path(args.db).resolve().parent
    sys.argv = ["nx-27017", "--db", args.db, "--host", args.host, "-p", str(args.port),
                "--log-file", str(run_dir / f"nx-{args.port}.log"),
                "--pid-file", str(run_dir / f"nx-{args.port}.pid")]
    nx_27017.main()


if __name__ == "__main__":
    main()
