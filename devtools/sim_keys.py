"""Test key material for the WeChat Pay simulator and the functions that talk to it.

RSA-2048 keys, as in real life:
- the *merchant* pair: the functions sign requests (and paySign) with the private half,
  the simulator verifies with the public half (WeChat Pay knows the merchant's cert);
- the *platform* pair ("WeChat Pay public key" mode): the simulator signs responses and
  notifications with the private half, the functions verify with the public half;
- a *platform certificate* (`SimCertificate`, certificate mode, for merchants registered
  before late 2024): a self-signed X.509 certificate with its own key; the merchant gets
  it from `GET /v3/certificates` and knows it by its serial (40 upper-case hex chars).
  `new_certificate()` issues another one (the simulator's rotation).
Plus the identifiers and secrets of the configuration contract (README, Configuration): appid,
mchid, merchant certificate serial, PUB_KEY_ID, APIv3 key, app secret, order token secret.

    keys = load_or_create(Path(".local/keys"))   # made once, reused on later runs
    keys = ephemeral()                           # fresh, in memory (tests)
    os.environ.update(keys.function_environ(sim.url, notify_url, mongodb_uri))
    keys.function_environ(..., key_mode="certificate")   # or "switch": see function_environ
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_ALNUM = string.ascii_letters + string.digits
_FILE_MODE = 0o600
_DIR_MODE = 0o700

# File names in the keys folder (the merchant ones as WeChat names them).
MERCHANT_PRIVATE_FILE = "apiclient_key.pem"
MERCHANT_PUBLIC_FILE = "apiclient_pub.pem"
PLATFORM_PRIVATE_FILE = "wechatpay_platform_key.pem"   # only the simulator has this
PLATFORM_PUBLIC_FILE = "pub_key.pem"                  # what the merchant downloads
# The default platform certificate: its private key, then the certificate (simulator only;
# merchants download the certificate from GET /v3/certificates).
PLATFORM_CERT_FILE = "wechatpay_platform_cert.pem"
IDS_FILE = "sim_keys.json"

KEY_MODES = ("public_key", "certificate", "switch")
CERTIFICATE_CN = "Tenpay.com sim platform cert"
DEFAULT_CERT_VALID_DAYS = 1825     # five years, like WeChat Pay's platform certificates
MAX_CERT_VALID_DAYS = 3650


@dataclass(frozen=True)
class SimCertificate:
    """A platform certificate and its private key; the rest is derived from the certificate.

    `serial` is the upper-case hex of the X.509 serial number (40 chars), which is what
    WeChat Pay puts in `serial_no` and `Wechatpay-Serial`; `not_before` / `not_after` are
    epoch seconds.
    """

    private_pem: str = field(repr=False)
    certificate_pem: str = field(repr=False)
    serial: str = field(init=False)
    not_before: int = field(init=False)
    not_after: int = field(init=False)
    private_key: Any = field(init=False, repr=False, compare=False)
    public_key: Any = field(init=False, repr=False, compare=False)
    certificate: Any = field(init=False, repr=False, compare=False)   # cryptography x509.Certificate

    def __post_init__(self):
        private_key = _load_private(self.private_pem)
        certificate = x509.load_pem_x509_certificate(self.certificate_pem.encode("ascii"))
        if certificate.public_key().public_numbers() != private_key.public_key().public_numbers():
            raise ValueError("the platform certificate does not belong to its private key")
        for name, value in (("serial", f"{certificate.serial_number:X}"),
                            ("not_before", int(certificate.not_valid_before_utc.timestamp())),
                            ("not_after", int(certificate.not_valid_after_utc.timestamp())),
                            ("private_key", private_key), ("public_key", private_key.public_key()),
                            ("certificate", certificate)):
            object.__setattr__(self, name, value)

    def file_text(self) -> str:
        """What PLATFORM_CERT_FILE holds: the private key PEM, then the certificate PEM."""
        return self.private_pem + self.certificate_pem

    @classmethod
    def from_file_text(cls, text: str) -> SimCertificate:
        marker = "-----BEGIN CERTIFICATE-----"
        if text.count(marker) != 1:
            raise ValueError(f"{PLATFORM_CERT_FILE} must hold one private key and one certificate")
        private_pem, certificate_pem = text.split(marker)
        return cls(private_pem=private_pem.strip() + "\n", certificate_pem=marker + certificate_pem)


def new_certificate(valid_days: int = DEFAULT_CERT_VALID_DAYS, not_before: float | None = None) -> SimCertificate:
    """A fresh self-signed platform certificate (new RSA-2048 key), valid `valid_days` from
    `not_before` (epoch seconds, default now)."""
    if not isinstance(valid_days, int) or isinstance(valid_days, bool) or not 1 <= valid_days <= MAX_CERT_VALID_DAYS:
        raise ValueError(f"valid_days must be an integer 1..{MAX_CERT_VALID_DAYS}")
    start = int(time.time() if not_before is None else not_before)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Tenpay.com CA Center"),
        x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_CN),
    ])
    # 157..159 bits: exactly 40 hex digits, and positive within X.509's 20 octets.
    serial_number = (1 << 156) + secrets.randbelow((1 << 159) - (1 << 156))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial_number)
        .not_valid_before(datetime.fromtimestamp(start, timezone.utc))
        .not_valid_after(datetime.fromtimestamp(start + valid_days * 86400, timezone.utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SimCertificate(private_pem=_private_pem(key),
                          certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"))


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
    # The default platform certificate (certificate mode); a fresh one when not given.
    platform_certificate: SimCertificate | None = None
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
        if self.platform_certificate is None:
            object.__setattr__(self, "platform_certificate", new_certificate())
        elif not isinstance(self.platform_certificate, SimCertificate):
            raise TypeError("platform_certificate must be a SimCertificate")

    def function_environ(self, sim_url: str, notify_url: str, mongodb_uri: str,
                         key_mode: str = "public_key") -> dict[str, str]:
        """Every variable of the configuration contract, pointing at the simulator.

        `key_mode` says how the functions verify WeChat Pay (set the simulator to the same
        mode): "public_key" (WECHATPAY_PUBLIC_KEY and _ID), "certificate" (no public key,
        WECHATPAY_PLATFORM_CERTS=download: fetch GET /v3/certificates) or "switch" (both,
        a merchant moving from certificates to the public key).
        """
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {', '.join(KEY_MODES)}")
        base = sim_url.rstrip("/")
        environ = {
            "WECHAT_APPID": self.appid,
            "WECHAT_APPSECRET": self.app_secret,
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_PRIVATE_KEY": self.merchant_private_pem,
            "WECHATPAY_CERT_SERIAL_NO": self.merchant_serial,
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
        }
        if key_mode in ("public_key", "switch"):
            environ["WECHATPAY_PUBLIC_KEY"] = self.platform_public_pem
            environ["WECHATPAY_PUBLIC_KEY_ID"] = self.platform_public_key_id
        if key_mode in ("certificate", "switch"):
            environ["WECHATPAY_PLATFORM_CERTS"] = "download"
        environ.update({
            "WECHATPAY_NOTIFY_URL": notify_url,
            "WECHATPAY_API_BASE": base,
            "WECHATPAY_API_BASE_BACKUP": base,
            "WECHAT_API_BASE": base,
            "ORDER_TOKEN_SECRET": self.order_token_secret,
            "MONGODB_URI": mongodb_uri,
        })
        return environ

    def new_certificate(self, valid_days: int = DEFAULT_CERT_VALID_DAYS,
                        not_before: float | None = None) -> SimCertificate:
        """Another platform certificate (the keys themselves do not change)."""
        return new_certificate(valid_days, not_before)

    def identifiers(self) -> dict[str, str]:
        """The non-PEM fields, as stored in sim_keys.json."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.init and not f.name.endswith("_pem") and f.name != "platform_certificate"}


def ephemeral() -> SimKeys:
    """Fresh key material, in memory only."""
    return SimKeys(merchant_private_pem=_new_private_pem(), platform_private_pem=_new_private_pem(),
                   **_new_identifiers())


def load_or_create(folder: Path) -> SimKeys:
    """The keys in `folder`, created there (files mode 0600) when it has none yet.

    The identifiers file is written last, so a folder interrupted half-way through
    creation is simply created again.  A folder made before platform certificates existed
    gets one (PLATFORM_CERT_FILE) on its first load.
    """
    folder = Path(folder)
    if (folder / IDS_FILE).is_file():
        return _load(folder)
    keys = ephemeral()
    save(keys, folder)
    return keys


def _load(folder: Path) -> SimKeys:
    identifiers = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
    expected = set(_new_identifiers())
    if set(identifiers) != expected:
        raise ValueError(f"{folder / IDS_FILE} must hold exactly {sorted(expected)}")
    cert_path = folder / PLATFORM_CERT_FILE
    certificate = SimCertificate.from_file_text(cert_path.read_text(encoding="ascii")) if cert_path.is_file() else None
    keys = SimKeys(merchant_private_pem=(folder / MERCHANT_PRIVATE_FILE).read_text(encoding="ascii"),
                   platform_private_pem=(folder / PLATFORM_PRIVATE_FILE).read_text(encoding="ascii"),
                   platform_certificate=certificate, **identifiers)
    if certificate is None:   # an older folder: keep the certificate made now
        _write_private(cert_path, keys.platform_certificate.file_text())
    return keys


def save(keys: SimKeys, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, _DIR_MODE)
    _write_private(folder / MERCHANT_PRIVATE_FILE, keys.merchant_private_pem)
    _write_private(folder / MERCHANT_PUBLIC_FILE, keys.merchant_public_pem)
    _write_private(folder / PLATFORM_PRIVATE_FILE, keys.platform_private_pem)
    _write_private(folder / PLATFORM_PUBLIC_FILE, keys.platform_public_pem)
    _write_private(folder / PLATFORM_CERT_FILE, keys.platform_certificate.file_text())
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
    return _private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _private_pem(key) -> str:
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
