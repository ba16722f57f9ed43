"""Running a function package the way SCF runs it, for the benchmarks.

- The package is unpacked into a fresh folder whose files are then made read-only (SCF's
  code directory is: nothing can be compiled into `__pycache__` there).
- A real Python 3.10 runs with `-B -S`: no bytecode written, no site-packages, so
  `sys.path` is the code folder (the working directory, as /var/user on SCF) plus the
  standard library.
- The environment is clean: only the function's configuration (and LANG, as SCF sets).
- A child prints one line `BENCH=<json>` as soon as it has its first reply; the parent
  times from spawn to that line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH="


def unpack(zip_path: Path, into: Path | None = None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="scf-code-")) if into is None else into
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(folder)
    read_only(folder)
    return folder


def copy_tree(source: Path) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="scf-code-"))
    shutil.copytree(source, folder, dirs_exist_ok=True)
    read_only(folder)
    return folder


def read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


def writable(folder: Path) -> None:
    """Undo read_only so the folder can be removed."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def remove(folder: Path) -> None:
    writable(folder)
    shutil.rmtree(folder, ignore_errors=True)


def clean_environ(configuration: dict[str, str]) -> dict[str, str]:
    return {"LANG": "C.UTF-8", **configuration}


def run_child(python310: str, code_dir: Path, source: str, environ: dict[str, str], *args: str,
              timeout: float = 600.0) -> tuple[float, dict]:
    """Spawn `python3.10 -B -S -c source args...` in `code_dir` with exactly `environ`;
    (seconds from spawn to its BENCH line, the line's data)."""
    started = time.perf_counter()
    process = subprocess.Popen([python310, "-B", "-S", "-c", source, *args], cwd=code_dir, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # the child's own log lines pass by first
            if line.startswith(MARK):
                elapsed = time.perf_counter() - started
                data = json.loads(line[len(MARK):])
                break
        else:
            raise RuntimeError(f"the child exited without a result:\n{process.stderr.read()[-3000:]}")
        process.communicate(timeout=timeout)  # drain: it may still log after its reply
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return elapsed, data
