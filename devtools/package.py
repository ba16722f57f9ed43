"""`make package`: one zip per function under dist/, ready for SCF Python3.10.

Each zip (and its unpacked copy dist/<function>/, which serverless.yml uploads) holds, at
its root (SCF unpacks it to /var/user): the handler `index.py`, the `shared` package, and
only the runtime dependencies that function uses, with

- versions and hashes from `requirements.lock` (pip's hash-checking mode, no resolver:
  exactly the pinned files, cp310 manylinux x86_64 wheels whatever Python builds the zip);
- bytecode compiled by a real Python 3.10 (`compileall`, unchecked-hash: the mtimes an
  unzip produces do not matter).  SCF's code directory is read-only, so a module shipped
  without bytecode is compiled again on every cold start.  The `.py` files stay beside
  it, so tracebacks keep their source lines.  No bytecode of any other Python is shipped.

No tests, no dev tools.  Without a Python 3.10 the build stops and says how to get one: it
never ships a package without bytecode.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
FUNCTIONS = ("prepare", "callback", "reconcile")

# What each function imports itself (the lock adds what these pull in).
_COMMON = ["pymongo", "cryptography", "certifi", "tencentcloud-sdk-python-common", "tencentcloud-sdk-python-ssm"]
FUNCTION_DEPENDENCIES = {
    "prepare": _COMMON,
    "callback": _COMMON,
    "reconcile": [*_COMMON, "boto3"],
}
# Files that never belong in a function package.
_EXCLUDE_DIRS = {"bin", "tests", "test"}
# botocore ships the models of every AWS service (~25 MB); COS needs only S3's.
_KEEP_DATA = {"botocore/data": {"s3"}, "boto3/data": {"s3"}}
_PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", "3.10", "--implementation", "cp",
             "--abi", "cp310", "--only-binary=:all:"]
BYTECODE_TAG = "cpython-310"


class PackageError(RuntimeError):
    """The build cannot produce a correct package (it says why, and what to do)."""


# --- the lock file ----------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    name: str           # normalised (PEP 503)
    version: str
    lines: str          # the entry as written, hashes included
    required_by: tuple[str, ...]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, Pin]:
    """The lock's entries by name, with `# via` parents (uv's annotations)."""
    pins: dict[str, Pin] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    for entry in entries:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", entry)
        if not match:
            continue
        via_text = entry.split("# via", 1)[1] if "# via" in entry else ""
        parents = tuple(normalise(word) for word in re.findall(r"#?\s*([A-Za-z0-9][A-Za-z0-9._-]*)", via_text)
                        if word not in ("r", "requirements", "txt"))
        body = "\n".join(line for line in entry.splitlines() if not line.strip().startswith("#"))
        pins[normalise(match.group(1))] = Pin(normalise(match.group(1)), match.group(2), body.rstrip(), parents)
    if not pins:
        raise PackageError(f"{path} has no pinned packages; run `make lock`")
    return pins


def closure(pins: dict[str, Pin], roots: list[str]) -> list[Pin]:
    """`roots` and everything the lock says they pull in, in the lock's order."""
    wanted = {normalise(root) for root in roots}
    missing = sorted(wanted - set(pins))
    if missing:
        raise PackageError(f"requirements.lock lacks {', '.join(missing)}; run `make lock`")
    changed = True
    while changed:
        changed = False
        for pin in pins.values():
            if pin.name not in wanted and wanted.intersection(pin.required_by):
                wanted.add(pin.name)
                changed = True
    return [pin for pin in pins.values() if pin.name in wanted]


# --- Python 3.10 ----------------------------------------------------------------------------

def find_python310() -> str:
    """SCF's runtime, for the bytecode: $PY310, pyenv's 3.10, or python3.10 on PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [os.environ.get("PY310"), *sorted(map(str, pyenv.glob("3.10.*/bin/python3.10"))),
                  shutil.which("python3.10"), "/usr/bin/python3.10"]
    for candidate in candidates:
        if not candidate or "/shims/" in candidate or not Path(candidate).exists():
            continue  # a pyenv shim answers only where 3.10 is selected
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                              capture_output=True, text=True)
        if done.stdout.strip() == "True":
            return candidate
    raise PackageError("make package needs a Python 3.10 interpreter to compile the bytecode SCF runs "
                       "(its code directory is read-only, so bytecode cannot be made there). Install one "
                       "(`pyenv install 3.10`, or `apt install python3.10`) or point PY310=/path/to/python3.10 "
                       "at it, then run make package again.")


# --- building ---------------------------------------------------------------------------------

def _install(target: Path, pins: list[Pin], work: Path) -> str:
    requirements = work / f"{target.name}.requirements.txt"
    requirements.write_text("\n".join(pin.lines for pin in pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--no-compile",
           "--no-deps", "--require-hashes", "--target", str(target), *_PLATFORM, "-r", str(requirements)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise PackageError(f"pip could not install the locked packages:\n{output[-3000:]}")
    return output


def _prune(site: Path) -> None:
    for folder, keep in _KEEP_DATA.items():
        data = site / folder
        if not data.is_dir():
            continue
        for entry in data.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)
    for path in list(site.rglob("*")):
        if path.is_dir() and (path.name in _EXCLUDE_DIRS or path.name == "__pycache__") and path.exists():
            shutil.rmtree(path)
        elif path.suffix in (".pyc", ".pyo") and path.exists():
            path.unlink()


def _compile(tree: Path, python310: str) -> None:
    done = subprocess.run([python310, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                           str(tree)], capture_output=True, text=True)
    if done.returncode != 0:
        raise PackageError(f"compiling the package with Python 3.10 failed:\n{(done.stdout + done.stderr)[-3000:]}")


def build(function: str, dist: Path, work: Path, *, python310: str | None = None) -> Path:
    python310 = python310 or find_python310()
    pins = closure(read_lock(), FUNCTION_DEPENDENCIES[function])
    tree = work / function
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    output = _install(tree, pins, work)
    if "ERROR" in output:
        raise PackageError(f"pip reported an error while installing {function}'s packages:\n{output[-3000:]}")
    _prune(tree)
    shutil.copy2(ROOT / "functions" / function / "index.py", tree / "index.py")
    shutil.copytree(ROOT / "shared", tree / "shared", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _compile(tree, python310)

    dist.mkdir(parents=True, exist_ok=True)
    zip_path = dist / f"{function}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tree).as_posix())
    # The unpacked tree is what serverless.yml uploads.
    unpacked = dist / function
    shutil.rmtree(unpacked, ignore_errors=True)
    shutil.copytree(tree, unpacked)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("functions", nargs="*", default=list(FUNCTIONS))
    parser.add_argument("--dist", default=str(ROOT / "dist"))
    args = parser.parse_args(argv)
    dist = Path(args.dist)
    work = dist / ".build"
    try:
        python310 = find_python310()
        for function in args.functions:
            zip_path = build(function, dist, work, python310=python310)
            shown = zip_path.relative_to(ROOT) if zip_path.is_relative_to(ROOT) else zip_path
            print(f"{shown}  {zip_path.stat().st_size / 1_048_576:.1f} MiB", flush=True)
    except PackageError as error:
        print(f"make package: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
