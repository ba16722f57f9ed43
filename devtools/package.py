"""`make package`: one zip per function under dist/, ready for SCF Python3.10.

Each zip (and its unpacked copy dist/<function>/, which deploy/ uploads) holds, at its
root (SCF unpacks it to /var/user): the handler `index.py`, the `shared` package, and
only the runtime dependencies that function uses, installed from cp310 manylinux x86_64
wheels (pip --platform ... --only-binary), whatever Python builds the zip.  No tests, no
caches, no dev tools.  Versions come from requirements.txt.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("prepare", "callback", "reconcile")

# Every function can take its secrets from SSM.
_SSM = ["tencentcloud-sdk-python-common", "tencentcloud-sdk-python-ssm"]
FUNCTION_DEPENDENCIES = {
    "prepare": ["pymongo", "cryptography", "requests", "wechatpy", *_SSM],
    "callback": ["pymongo", "cryptography", *_SSM],
    "reconcile": ["pymongo", "cryptography", "requests", "boto3", *_SSM],
}
# Files that never belong in a function package.
_EXCLUDE_DIRS = {"__pycache__", "bin", "tests", "test"}
_EXCLUDE_SUFFIXES = {".pyc", ".pyo"}
# botocore ships the models of every AWS service (~25 MB); COS needs only S3's.
_KEEP_DATA = {"botocore/data": {"s3"}, "boto3/data": {"s3"}}
_PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", "3.10", "--implementation", "cp",
             "--abi", "cp310", "--only-binary=:all:"]


def pinned_requirements(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-]+)$", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _install(target: Path, requirements: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
           "--no-compile", "--target", str(target), *_PLATFORM, *requirements]
    subprocess.run(cmd, check=True)


def _prune(site: Path) -> None:
    for folder, keep in _KEEP_DATA.items():
        data = site / folder
        if not data.is_dir():
            continue
        for entry in data.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry)


def _add_tree(archive: zipfile.ZipFile, folder: Path, prefix: str = "") -> None:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in _EXCLUDE_DIRS for part in relative.parts) or path.suffix in _EXCLUDE_SUFFIXES:
            continue
        if path.is_file():
            archive.write(path, f"{prefix}{relative.as_posix()}")


def build(function: str, dist: Path, work: Path) -> Path:
    pins = pinned_requirements()
    requirements = [f"{name}=={pins[name.lower()]}" for name in FUNCTION_DEPENDENCIES[function]]
    site = work / function
    shutil.rmtree(site, ignore_errors=True)
    _install(site, requirements)
    _prune(site)
    dist.mkdir(parents=True, exist_ok=True)
    zip_path = dist / f"{function}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.write(ROOT / "functions" / function / "index.py", "index.py")
        _add_tree(archive, ROOT / "shared", "shared/")
        _add_tree(archive, site)
    # The unpacked tree is what deploy/<function>/serverless.yml uploads.
    unpacked = dist / function
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(unpacked)
    return zip_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("functions", nargs="*", default=list(FUNCTIONS))
    parser.add_argument("--dist", default=str(ROOT / "dist"))
    args = parser.parse_args(argv)
    dist = Path(args.dist)
    work = dist / ".build"
    for function in args.functions:
        zip_path = build(function, dist, work)
        print(f"{zip_path.relative_to(ROOT) if zip_path.is_relative_to(ROOT) else zip_path}  "
              f"{zip_path.stat().st_size / 1_048_576:.1f} MiB", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
