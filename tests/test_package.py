"""`make package`: per-function zips that import and answer in a clean Python 3.10, as on SCF."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from devtools.package import FUNCTIONS, build
from shared.config import REQUIRED_BY_ROLE
from tests.keys import make_environ

ROOT = Path(__file__).resolve().parent.parent


def python310() -> str:
    """SCF's newest runtime.  pyenv ships it on our machines; without it this test fails
    (it must not pass without proving the cp310 wheels load)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [*sorted(map(str, pyenv.glob("3.10.*/bin/python3.10"))), shutil.which("python3.10")]
    for candidate in candidates:
        # pyenv's shim answers only where 3.10 is selected: use the real binary.
        if candidate and "/shims/" not in candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Python 3.10 is needed to check the SCF packages (apt or pyenv install 3.10)")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    return {name: build(name, dist, dist / ".build") for name in FUNCTIONS}


SMOKE = {
    # An event each handler answers without a database: it proves the handler, the shared
    # package and the configuration load, and the function's own dependencies import.
    "prepare": ({"httpMethod": "GET", "path": "/nothing", "headers": {}, "body": ""}, 404,
                ["pymongo", "requests", "wechatpy", "cryptography.hazmat.primitives.asymmetric.rsa",
                 "tencentcloud.ssm.v20190923.ssm_client"]),
    "callback": ({"httpMethod": "POST", "path": "/", "headers": {}, "body": "{}"}, 400,
                 ["pymongo", "cryptography.hazmat.primitives.ciphers.aead", "tencentcloud.ssm.v20190923.ssm_client"]),
    "reconcile": ("not an event", None,
                  ["pymongo", "boto3", "requests", "tencentcloud.ssm.v20190923.ssm_client"]),
}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_zip_imports_and_answers_in_a_clean_python310(packages, tmp_path, function):
    user = tmp_path / "var" / "user"
    with zipfile.ZipFile(packages[function]) as archive:
        names = archive.namelist()
        archive.extractall(user)
    assert "index.py" in names and "shared/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".pyc")]
    assert ("boto3/__init__.py" in names) == (function == "reconcile")
    assert ("wechatpy/__init__.py" in names) == (function == "prepare")
    assert not [n for n in names if n.startswith(("pytest", "nx_27017", "moto/", "wechatpayv3"))]

    event, status, modules = SMOKE[function]
    script = (
        "import json, sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import index\n"
        f"reply = index.main_handler({event!r}, {{'request_id': 'smoke'}})\n"
        "print('REPLY=' + json.dumps(reply))\n"
        "print('VERSION=%d.%d' % sys.version_info[:2])\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{user}:/opt", **make_environ()}
    done = subprocess.run([python310(), "-c", script], cwd=user, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VERSION=3.10" in done.stdout
    reply = json.loads(re.search(r"^REPLY=(.*)$", done.stdout, re.M).group(1))
    if status is None:
        assert reply["ok"] is False and reply["error"]["code"] == "BAD_EVENT"
    else:
        assert reply["statusCode"] == status


def test_zips_stay_small(packages):
    sizes = {name: path.stat().st_size for name, path in packages.items()}
    print("package sizes (MiB):", {k: round(v / 1_048_576, 1) for k, v in sizes.items()})
    assert all(size < 15 * 1_048_576 for size in sizes.values()), sizes


def _yaml(path: Path) -> dict:
    import yaml  # PyYAML comes with moto

    return yaml.safe_load(path.read_text())


def test_deploy_config_wires_every_handler_and_required_variable():
    app = _yaml(ROOT / "deploy" / "serverless.yml")
    assert app["app"] and "stage" in app
    for function in FUNCTIONS:
        instance = _yaml(ROOT / "deploy" / function / "serverless.yml")
        inputs = instance["inputs"]
        assert instance["component"] == "scf" and inputs["runtime"] == "Python3.10"
        src = (ROOT / "deploy" / function / inputs["src"]["src"]).resolve()
        assert src == (ROOT / "dist" / function).resolve()
        module, _, handler = inputs["handler"].partition(".")
        assert (module, handler) == ("index", "main_handler")
        assert (ROOT / "functions" / function / f"{module}.py").exists()
        variables = inputs["environment"]["variables"]
        missing = [v for v in REQUIRED_BY_ROLE[function] if v not in variables]
        assert missing == [], (function, missing)
        for name, value in variables.items():  # no secret committed: every value from the environment
            assert value == f"${{env:{name}}}" or value.startswith("${env:"), (function, name)
        assert inputs["vpcConfig"] and inputs["publicAccess"] is True
        assert 1 <= inputs["timeout"] <= 900
    timer = _yaml(ROOT / "deploy" / "reconcile" / "serverless.yml")["inputs"]["events"][0]["timer"]
    assert timer["parameters"]["enable"] is True
    for function in ("prepare", "callback"):
        http = _yaml(ROOT / "deploy" / function / "serverless.yml")["inputs"]["events"][0]["http"]
        assert http["parameters"]["netConfig"]["enableExtranet"] is True
