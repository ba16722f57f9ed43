"""`make package`: per-function zips that import and answer in a clean Python 3.10, as on SCF."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from devtools.package import (
    BYTECODE_TAG,
    FUNCTION_DEPENDENCIES,
    FUNCTIONS,
    PackageError,
    build,
    closure,
    find_python310,
    normalise,
    read_lock,
)
from tests.keys import make_environ

ROOT = Path(__file__).resolve().parent.parent


def python310() -> str:
    """SCF's newest runtime; without it this test fails (it must not pass without proving
    the cp310 wheels load and the bytecode is used)."""
    try:
        return find_python310()
    except PackageError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    interpreter = python310()
    return {name: build(name, dist, dist / ".build", python310=interpreter) for name in FUNCTIONS}


def _unpack(packages, function: str, tmp_path: Path) -> tuple[Path, list[str]]:
    user = tmp_path / "var" / "user"
    with zipfile.ZipFile(packages[function]) as archive:
        names = archive.namelist()
        archive.extractall(user)
    for path in user.rglob("*"):  # SCF's code directory is read-only
        path.chmod(0o555 if path.is_dir() else 0o444)
    return user, names


SMOKE = {
    # An event each handler answers without a database: it proves the handler, the shared
    # package and the configuration load, and the function's own dependencies import.
    "prepare": ({"httpMethod": "GET", "path": "/nothing", "headers": {}, "body": ""}, 404,
                ["pymongo", "certifi", "cryptography.hazmat.primitives.asymmetric.rsa",
                 "tencentcloud.ssm.v20190923.ssm_client"]),
    "callback": ({"httpMethod": "POST", "path": "/", "headers": {}, "body": "{}"}, 400,
                 ["pymongo", "cryptography.hazmat.primitives.ciphers.aead", "tencentcloud.ssm.v20190923.ssm_client"]),
    "reconcile": ("not an event", None,
                  ["pymongo", "boto3", "tencentcloud.ssm.v20190923.ssm_client"]),
}

# Counts every module the import system compiles from source (it would on every SCF
# cold start: the code directory is read-only, so nothing compiled there is kept).
_COUNT_SOURCE_COMPILES = """
import importlib._bootstrap_external as external
compiled_from_source = []
_original = external.SourceLoader.source_to_code
def _counting(self, data, path, *args, **kwargs):
    compiled_from_source.append(path)
    return _original(self, data, path, *args, **kwargs)
external.SourceLoader.source_to_code = _counting
"""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_zip_imports_and_answers_in_python310_compiling_nothing(packages, tmp_path, function):
    user, names = _unpack(packages, function, tmp_path)
    assert "index.py" in names and "shared/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/") or n.startswith("devtools/")]
    assert ("boto3/__init__.py" in names) == (function == "reconcile")
    assert not [n for n in names if n.startswith(("pytest", "nx_27017", "moto/", "wechatpayv3", "wechatpy/"))]

    event, status, modules = SMOKE[function]
    script = (
        _COUNT_SOURCE_COMPILES +
        "import json, sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import index\n"
        f"reply = index.main_handler({event!r}, {{'request_id': 'smoke'}})\n"
        f"ours = [p for p in compiled_from_source if p.startswith({str(user)!r})]\n"
        "print('REPLY=' + json.dumps(reply))\n"
        "print('COMPILED=' + json.dumps(ours))\n"
        "print('VERSION=%d.%d' % sys.version_info[:2])\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(user), **make_environ()}
    # As SCF runs it: -B (nothing can be written), -S (no site-packages of this machine).
    done = subprocess.run([python310(), "-B", "-S", "-c", script], cwd=user, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VERSION=3.10" in done.stdout
    assert json.loads(re.search(r"^COMPILED=(.*)$", done.stdout, re.M).group(1)) == []
    reply = json.loads(re.search(r"^REPLY=(.*)$", done.stdout, re.M).group(1))
    if status is None:
        assert reply["ok"] is False and reply["error"]["code"] == "BAD_EVENT"
    else:
        assert reply["statusCode"] == status


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_module_has_cp310_bytecode_and_no_other(packages, function):
    with zipfile.ZipFile(packages[function]) as archive:
        names = set(archive.namelist())
    sources = [n for n in names if n.endswith(".py")]
    assert any(n.startswith("shared/") for n in sources) and len(sources) > 100
    missing = [n for n in sources
               if f"{n.rsplit('/', 1)[0] + '/' if '/' in n else ''}__pycache__/{n.rsplit('/', 1)[-1][:-3]}"
                  f".{BYTECODE_TAG}.pyc" not in names]
    assert missing == []
    assert [n for n in names if n.endswith((".pyc", ".pyo")) and f".{BYTECODE_TAG}." not in n] == []
    assert [n for n in names if n.endswith(".pyc") and "__pycache__/" not in n] == []


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_zip_ships_exactly_the_locked_versions(packages, function):
    lock = read_lock()
    expected = {pin.name: pin.version for pin in closure(lock, FUNCTION_DEPENDENCIES[function])}
    with zipfile.ZipFile(packages[function]) as archive:
        shipped = {}
        for name in archive.namelist():
            match = re.fullmatch(r"([^/]+)-([^-/]+)\.dist-info/METADATA", name)
            if match:
                shipped[normalise(match.group(1))] = match.group(2)
    assert shipped == expected


def test_requirements_and_lock_agree():
    lock = read_lock()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert lock[normalise(name)].version == version, name
            assert "requirements-txt" in lock[normalise(name)].required_by
    assert all("--hash=sha256:" in pin.lines for pin in lock.values())


def test_the_test_environment_runs_the_locked_versions():
    from importlib import metadata

    lock = read_lock()
    for pin in lock.values():
        try:
            installed = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            continue  # a 3.10-only backport, absent on a newer Python
        assert installed == pin.version, (pin.name, installed, pin.version)


def test_no_python310_stops_the_build_with_a_clear_message(tmp_path, monkeypatch):
    import sys

    from devtools import package

    monkeypatch.setenv("PY310", sys.executable if not sys.version.startswith("3.10") else "/nonexistent")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(package.Path, "exists", lambda self: str(self) in (sys.executable,))
    with pytest.raises(PackageError) as caught:
        find_python310()
    assert "Python 3.10" in str(caught.value) and "pyenv install 3.10" in str(caught.value)
    assert package.main(["prepare", "--dist", str(tmp_path / "dist")]) == 1
    assert not (tmp_path / "dist" / "prepare.zip").exists()


def test_zips_stay_small(packages):
    sizes = {name: path.stat().st_size for name, path in packages.items()}
    print("package sizes (MiB):", {k: round(v / 1_048_576, 1) for k, v in sizes.items()})
    assert all(size < 15 * 1_048_576 for size in sizes.values()), sizes
