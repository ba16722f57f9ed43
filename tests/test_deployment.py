"""A dry run of the deployment (issue 14): serverless.yml as `scf deploy` at the root reads it.

serverless-cloud-framework 1.3.0 (CLI `scf`): a root serverless.yml without `component`
is a project; the CLI deploys each component instance one folder down, and they inherit
`app`/`stage` (src/libs/utils/basic.js: runningTemplate, checkTemplateAppAndStage).
The inputs checked are the scf component's documented ones (serverless-components/
tencent-scf docs/configure.md; Function URL `http` events per Tencent Cloud doc
1154/43228): runtime, handler, memory, timeout, VPC, environment, http and timer events.
`${env:NAME}` is resolved from .env.example, as the CLI resolves it from ./.env.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
import yaml

from shared import deadline
from shared.config import OPTIONAL_BY_ROLE, REQUIRED_BY_ROLE, load_config
from shared.env_file import read_env_file
from shared.ssm_secret import SECRET_VARIABLES
from tests import keys

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("prepare", "callback", "reconcile")
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
# The scf component's documented inputs (tencent-scf docs/configure.md).
SCF_INPUTS = {"name", "src", "handler", "runtime", "region", "memorySize", "timeout", "initTimeout",
              "vpcConfig", "publicAccess", "eip", "role", "environment", "events", "description",
              "layers", "cls", "tags", "namespace", "asyncRunEnable", "traceEnable", "installDependency"}
# Variables besides the configuration contract that a function reads.
SSM_VARIABLES = {"CLOUDPAY_SSM_SECRET_NAME", "CLOUDPAY_SSM_VERSION_ID"}
COS_VARIABLES = {"COS_BUCKET", "COS_REGION", "COS_PREFIX"}
ENV_LIMIT_BYTES = 4 * 1024   # SCF: all of a function's variables together (Tencent Cloud doc 583/11637)


def _instances() -> dict[str, dict]:
    """Each folder one level down that holds a serverless.yml, as the CLI scans them."""
    found = {}
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / "serverless.yml"
        if path.is_file():
            found[folder.name] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return found


def _resolve(value, env: dict[str, str], stage: str, app: str):
    if isinstance(value, dict):
        return {k: _resolve(v, env, stage, app) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, env, stage, app) for v in value]
    if isinstance(value, str):
        value = ENV_REF.sub(lambda m: env[m.group(1)], value)
        return value.replace("${stage}", stage).replace("${app}", app)
    return value


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ROOT / ".env.example")


@pytest.fixture(scope="module")
def deployed(example_env) -> dict[str, dict]:
    """function name -> its resolved inputs."""
    root = yaml.safe_load((ROOT / "serverless.yml").read_text(encoding="utf-8"))
    app, stage = root["app"], _resolve(root["stage"], example_env, "", "")
    return {config["name"]: _resolve(config["inputs"], example_env, stage, app) for config in _instances().values()}


def test_the_root_is_a_project_of_three_scf_instances_sharing_app_and_stage():
    root = yaml.safe_load((ROOT / "serverless.yml").read_text(encoding="utf-8"))
    assert "component" not in root and "service" not in root   # else the root alone is deployed
    assert root["app"] and root["stage"]
    instances = _instances()
    assert sorted(config["name"] for config in instances.values()) == sorted(FUNCTIONS)
    for folder, config in instances.items():
        assert config["component"] == "scf", folder
        assert "app" not in config and "stage" not in config, folder   # inherited from the root
    assert not (ROOT / "deploy").exists()                               # the old layout is gone


def test_sources_are_the_packages_and_no_value_is_committed():
    for folder, config in _instances().items():
        inputs = config["inputs"]
        name = config["name"]
        assert (ROOT / folder / inputs["src"]["src"]).resolve() == (ROOT / "dist" / name).resolve(), folder
        for variable, value in inputs["environment"]["variables"].items():
            assert ENV_REF.fullmatch(value), (folder, variable)   # every value comes from .env


def test_every_env_reference_is_in_the_example_file_and_every_example_variable_is_used(example_env):
    texts = [(ROOT / "serverless.yml").read_text()] + [
        (ROOT / folder / "serverless.yml").read_text() for folder in _instances()]
    referenced = {name for text in texts for name in ENV_REF.findall(text)}
    assert referenced - set(example_env) == set()
    assert set(example_env) - referenced == set()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_inputs_are_the_scf_components_documented_ones(deployed, function):
    inputs = deployed[function]
    assert set(inputs) <= SCF_INPUTS, set(inputs) - SCF_INPUTS
    assert inputs["runtime"] == "Python3.10"
    assert inputs["handler"] == "index.main_handler"
    assert "def main_handler(event, context)" in (ROOT / "functions" / function / "index.py").read_text()
    assert inputs["src"] == {"src": f"../dist/{function}"}   # the folder `make package` unpacks
    assert inputs["name"] == f"cloudpay-prod-{function}"
    memory = inputs["memorySize"]
    assert memory == 64 or (128 <= memory <= 3072 and memory % 128 == 0), memory   # SCF's sizes
    assert 1 <= inputs["timeout"] <= 900
    assert set(inputs["vpcConfig"]) == {"vpcId", "subnetId"} and all(inputs["vpcConfig"].values())
    assert inputs["publicAccess"] is True        # WeChat Pay lies outside the VPC
    assert isinstance(inputs["environment"]["variables"], dict)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_yml_timeout_is_the_one_the_code_budgets_for(deployed, function):
    assert deployed[function]["timeout"] == deadline.FUNCTION_TIMEOUT_S[function]
    assert deployed[function]["timeout"] >= deadline.MIN_TIMEOUT_S[function]


def test_memory_leaves_room_over_the_measured_cold_instance(deployed):
    # make bench measured a cold prepare or callback at about 47 MB of peak RSS.
    for function in ("prepare", "callback"):
        assert deployed[function]["memorySize"] >= 2 * 47
    assert deployed["reconcile"]["memorySize"] >= deployed["prepare"]["memorySize"]


@pytest.mark.parametrize("function", ["prepare", "callback"])
def test_prepare_and_callback_get_a_public_function_url(deployed, function):
    [event] = deployed[function]["events"]
    parameters = event["http"]["parameters"]
    assert parameters["netConfig"] == {"enableExtranet": True, "enableIntranet": False}
    assert parameters["authType"] == "NONE" and parameters["qualifier"] == "$DEFAULT"


def test_reconcile_gets_an_enabled_timer(deployed):
    [event] = deployed["reconcile"]["events"]
    parameters = event["timer"]["parameters"]
    assert parameters["enable"] is True                      # created disabled otherwise
    fields = parameters["cronExpression"].split()
    assert len(fields) == 7 and fields[1] == "*/5"           # SCF's seven-field cron: every 5 minutes


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_gets_what_it_requires_and_no_secret_it_does_not_read(deployed, function):
    given = set(deployed[function]["environment"]["variables"])
    reads = set(REQUIRED_BY_ROLE[function]) | set(OPTIONAL_BY_ROLE[function]) | SSM_VARIABLES
    if function == "reconcile":
        reads |= COS_VARIABLES
    assert set(REQUIRED_BY_ROLE[function]) <= given
    assert given <= reads, given - reads
    assert SSM_VARIABLES <= given


def test_least_privilege_between_the_functions(deployed):
    callback = set(deployed["callback"]["environment"]["variables"])
    assert {"WECHAT_APPSECRET", "WECHATPAY_PRIVATE_KEY", "ORDER_TOKEN_SECRET"} & callback == set()
    prepare = set(deployed["prepare"]["environment"]["variables"])
    assert "WECHATPAY_APIV3_KEY" not in prepare               # prepare decrypts nothing in public-key mode
    assert "ORDER_TOKEN_SECRET" not in deployed["reconcile"]["environment"]["variables"]


def _realistic(function_env: dict[str, str]) -> dict[str, str]:
    """The example's placeholders replaced by values of real size: a 2048-bit PEM key is
    about 1.7 KB, the public key about 450 bytes."""
    real = {
        "MONGODB_URI": "mongodb://mongouser:" + secrets.token_urlsafe(24)
                       + "@10.0.4.17:27017,10.0.4.18:27017/?authSource=admin&replicaSet=cmgo-abcd1234_0",
        "WECHAT_APPID": keys.APPID, "WECHAT_APPSECRET": secrets.token_hex(16),
        "WECHATPAY_MCHID": keys.MCHID, "WECHATPAY_CERT_SERIAL_NO": keys.CERT_SERIAL_NO,
        "WECHATPAY_PRIVATE_KEY": keys.merchant_keys().private_pem,
        "WECHATPAY_PUBLIC_KEY": keys.platform_keys().public_pem, "WECHATPAY_PUBLIC_KEY_ID": keys.PUBLIC_KEY_ID,
        "WECHATPAY_APIV3_KEY": keys.APIV3_KEY, "WECHATPAY_NOTIFY_URL":
            "https://1250000000-abcdefghij-gz.scf.tencentcs.com/",
        "ORDER_TOKEN_SECRET": secrets.token_urlsafe(32),
        "FULFILMENT_WEBHOOK_URL": "https://shop.example.com/hooks/cloudpay",
        "FULFILMENT_WEBHOOK_SECRET": secrets.token_urlsafe(32), "SHIPPING_MODE": "virtual",
        "COS_BUCKET": "bills-1250000000", "COS_REGION": "ap-guangzhou", "COS_PREFIX": "bills/",
        "MONGODB_DB": "cloudpay", "ORDER_TTL_SECONDS": "1800", "ORDER_MAX_TOTAL_FEE": "2000000",
    }
    return {name: real.get(name, "") for name in function_env}


def _env_bytes(environ: dict[str, str]) -> int:
    return sum(len(name.encode()) + len(value.encode()) for name, value in environ.items() if value)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_starts_on_its_environment_and_fits_scfs_4_kb(deployed, function):
    environ = _realistic(deployed[function]["environment"]["variables"])
    load_config(function, environ)                 # everything it requires, each well-formed
    assert _env_bytes(environ) <= ENV_LIMIT_BYTES, _env_bytes(environ)


def test_platform_certificates_as_pem_do_not_fit_and_the_readme_says_use_ssm(deployed):
    # One platform certificate PEM is about 1.3 KB; two overlap during a rotation.
    environ = _realistic(deployed["reconcile"]["environment"]["variables"])
    environ["WECHATPAY_PLATFORM_CERTS"] = "C" * 2 * 1300
    assert _env_bytes(environ) > ENV_LIMIT_BYTES
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"4 KB[^\n]*\n?[^\n]*SSM", readme)


def test_the_example_env_marks_every_secret_and_secrets_stay_out_of_git():
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for name in SECRET_VARIABLES:
        assert re.search(rf"# SECRET[^\n]*\n{name}=", text), name
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and ".env.*" in ignored and "!.env.example" in ignored


def test_readme_and_comments_use_the_clis_documented_commands():
    # Documented (CLI 1.3.0 docs/commands): deploy [--target], invoke [--target] [-f] --data/-d | --path/-p,
    # logs [--target] [-f] [--tail]; never the v1 `sls invoke --function` or `--inputs.event` forms.
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("scf-*/serverless.yml"), ROOT / "serverless.yml",
             *ROOT.glob("examples/**/*.md"), *(path for folder in ("shared", "functions", "devtools")
                                                for path in (ROOT / folder).rglob("*.py"))]
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            for command in re.findall(r"\bscf (?:invoke|logs|deploy|remove)\b[^`\n]*", line):
                assert "--inputs.event" not in command and "--function" not in command, (path.name, command)
                if command.startswith(("scf invoke", "scf logs")):
                    assert "--target " in command, (path.name, command)   # several instances at the root
                if command.startswith("scf invoke"):
                    assert re.search(r" (--data|-d|--path|-p) ", command), (path.name, command)
