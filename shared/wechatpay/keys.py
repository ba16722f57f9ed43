"""The keys WeChat Pay signs with: its public key, platform certificates, or both at once.

A signature is accepted only with the key its `Wechatpay-Serial` names: the public key
when the serial is `WECHATPAY_PUBLIC_KEY_ID`, else the platform certificate with that
serial number, while it is valid.  Never with another key of the set.

Modes (pay.weixin.qq.com: "微信支付公钥" and "平台证书"):
- public key: `WECHATPAY_PUBLIC_KEY` + `WECHATPAY_PUBLIC_KEY_ID` (merchants since late 2024);
- platform certificates: `WECHATPAY_PLATFORM_CERTS` = the PEM text of one or more
  certificates, or `download`: fetched from `GET /v3/certificates`, each decrypted with
  the APIv3 key, kept per instance and in the store (`wechatpay_certs`) for the other
  functions;
- both: the switch from certificates to the public key, which WeChat Pay rolls out over
  days (the official wechatpay-java SDK has RSACombinedNotificationConfig for it).

In download mode an unknown serial makes the set look again (the store, and WeChat Pay
where this function can sign requests), at most once a minute per instance, so a stream
of forged serials cannot turn into a stream of downloads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.log import log

REFRESH_INTERVAL_S = 60          # at most one look for an unknown serial per minute
LOOK_WAIT_S = 10                 # how long a request waits for a look another one started
REFRESH_BEFORE_EXPIRY_S = 10 * 86_400   # fetch again when the newest expires within 10 days
PERIODIC_REFRESH_S = 3_600             # and every hour (as wechatpay-java's auto-updating config
                                        # does): a rotation's new certificate is listed before
                                        # WeChat Pay signs with it
WARN_BEFORE_EXPIRY_S = 30 * 86_400      # anomaly when all expire within 30 days
DOWNLOAD = "download"


@dataclass(frozen=True)
class PlatformCertificate:
    serial: str          # the X.509 serial number, upper-case hex, as Wechatpay-Serial carries it
    public_key: object   # cryptography RSAPublicKey
    not_before: int      # epoch seconds
    not_after: int
    pem: str

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after


def load_certificates(pem_text: str | bytes) -> list[PlatformCertificate]:
    """Every certificate in a PEM text (ValueError when there is none or one is unreadable)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    data = pem_text.encode("ascii") if isinstance(pem_text, str) else pem_text
    certificates = x509.load_pem_x509_certificates(data)
    found = []
    for certificate in certificates:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
            raise ValueError("a platform certificate must hold an RSA key of 2048 bits or more")
        found.append(PlatformCertificate(
            serial=f"{certificate.serial_number:X}", public_key=key,
            not_before=int(certificate.not_valid_before_utc.timestamp()),
            not_after=int(certificate.not_valid_after_utc.timestamp()),
            pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")))
    return found


class KeySet:
    """Resolves a `Wechatpay-Serial` to the one key that must have signed it.  Thread-safe."""

    def __init__(self, *, public_key=None, public_key_id: str | None = None,
                 certificates: Iterable[PlatformCertificate] = (),
                 source: Callable[[str], Iterable[PlatformCertificate]] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 refresh_interval: float | None = None):
        if (public_key is None) != (public_key_id is None):
            raise ValueError("the public key and its id go together")
        self.public_key = public_key
        self.public_key_id = public_key_id
        self._certificates = {cert.serial: cert for cert in certificates}
        self._source = source           # download mode: (reason) -> the certificates now known
        self._clock = clock
        self._monotonic = monotonic
        self._interval = REFRESH_INTERVAL_S if refresh_interval is None else refresh_interval
        self._last_look: float | None = None
        self._last_refreshed: float | None = None   # monotonic time of the last successful look
        self._lock = threading.Lock()
        self._looking = threading.RLock()  # one look at a time
        self.looks = 0                  # how often the source was asked (tests, logs)

    def __repr__(self) -> str:
        return f"KeySet(public_key_id={self.public_key_id!r}, certificates={sorted(self._certificates)})"

    @property
    def downloads(self) -> bool:
        return self._source is not None

    def certificates(self) -> list[PlatformCertificate]:
        return sorted(self._certificates.values(), key=lambda cert: cert.not_after)

    def key_for(self, serial: str):
        """The key for `serial`, or None: unknown, expired, or not yet valid."""
        if self.public_key_id is not None and serial == self.public_key_id:
            return self.public_key
        certificate = self._certificates.get(serial)
        if certificate is None and self._source is not None:
            certificate = self._look_for(serial)
        if certificate is not None and certificate.valid_at(self._clock()):
            return certificate.public_key
        return None

    def request_serial(self) -> str | None:
        """What to send as `Wechatpay-Serial` on requests: the public key id, else the
        newest valid certificate's serial."""
        if self.public_key_id is not None:
            return self.public_key_id
        valid = [cert for cert in self.certificates() if cert.valid_at(self._clock())]
        return valid[-1].serial if valid else None

    def _look_for(self, serial: str) -> PlatformCertificate | None:
        """Look once for an unknown serial.  Notifications signed with a new certificate
        arrive together: the first starts the look, the others wait for it (bounded) and
        use what it found, instead of being refused while it runs."""
        if not self._looking.acquire(timeout=LOOK_WAIT_S):
            return None
        try:
            certificate = self._certificates.get(serial)  # found by the look we waited for?
            if certificate is None and self._may_look():
                self.refresh(f"unknown serial {serial[:40]}")
                certificate = self._certificates.get(serial)
            return certificate
        finally:
            self._looking.release()

    def _may_look(self) -> bool:
        with self._lock:
            now = self._monotonic()
            if self._last_look is not None and now - self._last_look < self._interval:
                return False
            self._last_look = now
            return True

    def refresh(self, reason: str) -> None:
        """Ask the source for the certificates now known (never raises: a failed look keeps
        what the set had, and is logged)."""
        if self._source is None:
            return
        with self._looking:
            self._refresh(reason)

    def _refresh(self, reason: str) -> None:
        self.looks += 1
        try:
            found = list(self._source(reason))
        except Exception as exc:  # a dependency failure must not fail the verification path
            log("wechatpay.certificates_failed", level="warning", reason=reason, error=type(exc).__name__,
                code=getattr(exc, "code", None), message=str(getattr(exc, "message", ""))[:200] or None)
            return
        with self._lock:
            merged = dict(self._certificates)
            merged.update((cert.serial, cert) for cert in found)
            self._certificates = merged
            self._last_refreshed = self._monotonic()
        log("wechatpay.certificates", reason=reason, serials=sorted(self._certificates))

    def add(self, certificates: Iterable[PlatformCertificate]) -> None:
        with self._lock:
            merged = dict(self._certificates)
            merged.update((cert.serial, cert) for cert in certificates)
            self._certificates = merged

    def set_source(self, source: Callable[[str], Iterable[PlatformCertificate]] | None) -> None:
        """Download mode: where certificates come from (wired after the client exists)."""
        self._source = source

    def refresh_due(self) -> bool:
        """Download mode: nothing known yet, the newest certificate expires soon, or this
        instance has not looked for an hour."""
        if self._source is None:
            return False
        certificates = self.certificates()
        if not certificates or certificates[-1].not_after - self._clock() < REFRESH_BEFORE_EXPIRY_S:
            return True
        return self._last_refreshed is None or self._monotonic() - self._last_refreshed >= PERIODIC_REFRESH_S

    def expiring_without_successor(self) -> list[PlatformCertificate]:
        """Certificates that expire within 30 days while no known one outlives that window
        (a rotation WeChat Pay has not started, or that we have not seen)."""
        now = self._clock()
        valid = [cert for cert in self.certificates() if cert.valid_at(now)]
        if not valid or self.public_key_id is not None:
            return []
        if valid[-1].not_after - now >= WARN_BEFORE_EXPIRY_S:
            return []
        return valid


def key_set_from_config(config, source=None) -> KeySet:
    """The KeySet a configuration describes (download mode: `source` fetches)."""
    certificates = config.wechatpay_platform_certs
    static = certificates if isinstance(certificates, tuple) else ()
    return KeySet(public_key=config.wechatpay_public_key, public_key_id=config.wechatpay_public_key_id,
                  certificates=static, source=source)


class CertificateSource:
    """Download mode: certificates from the store, and from WeChat Pay where this function
    can sign requests (`fetch`).  Every download is written to the store, so the other
    functions (callback has no merchant key) read them from there."""

    def __init__(self, store: Callable[[], object], fetch: Callable[[], list[PlatformCertificate]] | None):
        self._store = store          # returns the store: built only when certificates are needed
        self._fetch = fetch

    def __call__(self, reason: str) -> list[PlatformCertificate]:
        store = self._store()
        known = []
        for record in store.platform_certificates():
            try:
                known.extend(load_certificates(record["pem"]))
            except (KeyError, ValueError):
                log("wechatpay.certificate_unreadable", level="warning", serial=str(record.get("serial"))[:40])
        wanted = reason.rpartition(" ")[2] if reason.startswith("unknown serial") else None
        if self._fetch is None or (wanted and any(cert.serial == wanted for cert in known)):
            return known
        downloaded = self._fetch()
        for cert in downloaded:
            store.save_platform_certificate(cert.serial, cert.pem, cert.not_before, cert.not_after)
        return known + downloaded
