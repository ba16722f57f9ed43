"""Test key material for the WeChat Pay simulator and the functions that talk to it.

Two RSA-2048 pairs, as in real life:
- the *merchant* pair: the functions sign requests (and paySign) with the private half,
  the simulator verifies with the public half (WeChat Pay knows the merchant's cert);
- the *platform* pair ("WeChat Pay public key" mode): the simulator signs responses and
  notifications with the private half, the functions verify with the public half.
Plus the identifiers and secrets of the configuration contract (README, Configuration): appid,
mchid, merchant certificate serial, PUB_KEY_ID, APIv3 key, app secret, order token secret.

    keys = load_or_create(Path(".local/keys"))   # made once, reused on later runs
    keys = ephemeral()                           # fresh, in memory (tests)
    os.environ.update(keys.function_environ(sim.url, notify_url, mongodb_uri))
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_ALNUM = string.ascii_letters + string.digits
_FILE_MODE = 0o600
_DIR_MODE = 0o700

# File names in the keys folder (the merchant ones as WeChat names them).
MERCHANT_PRIVATE_FILE = "apiclient_key.pem"
MERCHANT_PUBLIC_FILE = "apiclient_pub.pem"
PLATFORM_PRIVATE_FILE = "wechatpay_platform_key.pem"   # only the simulator has this
PLATFORM_PUBLIC_FILE = "pub_key.pem"                  # what the merchant downloads
IDS_FILE = "sim_keys.json"


@dataclass(frozen=True)
class SimKeys:
    merchant_private_pem: str = field(repr=False)
    platform_private_pem: str = field(repr=False)
    merchant_serial: str                 # merchant API certificate serial, 40 hex
    platform_public_key_id: str          # PUB_KEY_ID_...
    apiv3_key: str = field(repr=False)   # 32 ASCII chars
    appid: str
    mchid: str
    app_secret: str = field(repr=False)
    order_token_secret: str = field(repr=False)
    # Derived once (parsing RSA keys is slow); not part of equality or repr.
    merchant_private_key: Any = field(init=False, repr=False, compare=False)
    merchant_public_key: Any = field(init=False, repr=False, compare=False)
    platform_private_key: Any = field(init=False, repr=False, compare=False)
    platform_public_key: Any = field(init=False, repr=False, compare=False)
    merchant_public_pem: str = field(init=False, repr=False, compare=False)
    platform_public_pem: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for role in ("merchant", "platform"):
            private_key = _load_private(getattr(self, f"{role}_private_pem"))
            object.__setattr__(self, f"{role}_private_key", private_key)
            object.__setattr__(self, f"{role}_public_key", private_key.public_key())
            object.__setattr__(self, f"{role}_public_pem", _public_pem(private_key))

    def function_environ(self, sim_url: str, notify_url: str, mongodb_uri: str) -> dict[str, str]:
        """Every variable of the configuration contract, pointing at the simulator."""
        base = sim_url.rstrip("/")
        return {
            "WECHAT_APPID": self.appid,
            "WECHAT_APPSECRET": self.app_secret,
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_PRIVATE_KEY": self.merchant_private_pem,
            "WECHATPAY_CERT_SERIAL_NO": self.merchant_serial,
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY": self.platform_public_pem,
            "WECHATPAY_PUBLIC_KEY_ID": self.platform_public_key_id,
            "WECHATPAY_NOTIFY_URL": notify_url,
            "WECHATPAY_API_BASE": base,
            "WECHAT_API_BASE": base,
            "ORDER_TOKEN_SECRET": self.order_token_secret,
            "MONGODB_URI": mongodb_uri,
        }

    def identifiers(self) -> dict[str, str]:
        """The non-PEM fields, as stored in sim_keys.json."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.init and not f.name.endswith("_pem")}


def ephemeral() -> SimKeys:
    """Fresh key material, in memory only."""
    return SimKeys(merchant_private_pem=_new_private_pem(), platform_private_pem=_new_private_pem(),
                   **_new_identifiers())


def load_or_create(folder: Path) -> SimKeys:
    """The keys in `folder`, created there (files mode 0600) when it has none yet.

    The identifiers file is written last, so a folder interrupted half-way through
    creation is simply created again.
    """
    folder = Path(folder)
    if (folder / IDS_FILE).is_file():
        return _load(folder)
    keys = ephemeral()
    _save(keys, folder)
    return keys


def _load(folder: Path) -> SimKeys:
    identifiers = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
    expected = set(_new_identifiers())
    if set(identifiers) != expected:
        raise ValueError(f"{folder / IDS_FILE} must hold exactly {sorted(expected)}")
    return SimKeys(merchant_private_pem=(folder / MERCHANT_PRIVATE_FILE).read_text(encoding="ascii"),
                   platform_private_pem=(folder / PLATFORM_PRIVATE_FILE).read_text(encoding="ascii"),
                   **identifiers)


def _save(keys: SimKeys, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, _DIR_MODE)
    _write_private(folder / MERCHANT_PRIVATE_FILE, keys.merchant_private_pem)
    _write_private(folder / MERCHANT_PUBLIC_FILE, keys.merchant_public_pem)
    _write_private(folder / PLATFORM_PRIVATE_FILE, keys.platform_private_pem)
    _write_private(folder / PLATFORM_PUBLIC_FILE, keys.platform_public_pem)
    _write_private(folder / IDS_FILE, json.dumps(keys.identifiers(), indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write via a temporary file created 0600, then rename (never world-readable)."""
    temporary = path.with_name(path.name + ".tmp")
    if temporary.exists():
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _new_identifiers() -> dict[str, str]:
    return {
        "merchant_serial": secrets.token_hex(20).upper(),
        "platform_public_key_id": "PUB_KEY_ID_01" + _digits(30),
        "apiv3_key": _alnum(32),
        "appid": "wx" + _alnum(16).lower(),
        "mchid": "19" + _digits(8),
        "app_secret": secrets.token_hex(16),
        "order_token_secret": secrets.token_urlsafe(32),
    }


def _digits(count: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(count))


def _alnum(count: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(count))


def _new_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _load_private(pem: str):
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
        raise ValueError("simulator keys must be RSA-2048")
    return key


def _public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
