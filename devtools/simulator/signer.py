"""The one place where the simulator chooses its platform key: every signature goes through here.

WeChat Pay signs answers and notifications either with the "WeChat Pay public key"
(`Wechatpay-Serial: PUB_KEY_ID_...`) or with a platform certificate's key (the serial
is the certificate's, 40 upper-case hex chars).  The key mode says which:

- "public_key"   (default): the platform key, serial PUB_KEY_ID_...;
- "certificate": the signing certificate (the newest one held);
- "switch":      a merchant moving from certificates to the public key (WeChat rolls it
                 out over about 7 days): each signature uses the public key with
                 probability `rollout` (0.0..1.0), else the signing certificate.

Certificates: one (the keys' default) after a reset; `rotate()` issues a new one that
becomes the signing one while the older stay valid and listed by GET /v3/certificates;
`retire()` removes one, never the last.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devtools.sim_keys import DEFAULT_CERT_VALID_DAYS, KEY_MODES, MAX_CERT_VALID_DAYS, SimCertificate
from devtools.simulator.errors import SimError
from shared.wechatpay import signing

DEFAULT_ROLLOUT = 0.5
# Serials no key has, for the "serial" tamper kind (one per kind of serial).
UNKNOWN_PUBLIC_KEY_ID = "PUB_KEY_ID_0000000000000000000000000000000000"
UNKNOWN_CERT_SERIAL = "7" + "0" * 39


@dataclass(frozen=True)
class SigningKey:
    private_key: Any
    serial: str
    kind: str                         # "public_key" | "certificate"

    @property
    def unknown_serial(self) -> str:
        """A serial of the same kind that no key has."""
        return UNKNOWN_PUBLIC_KEY_ID if self.kind == "public_key" else UNKNOWN_CERT_SERIAL


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Signer:
    def __init__(self, keys, *, clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self._keys = keys
        self._clock = clock
        self._random = rng or random.Random()
        self._lock = threading.Lock()
        self._public = SigningKey(keys.platform_private_key, keys.platform_public_key_id, "public_key")
        self.reset()

    def reset(self) -> None:
        """Public-key mode, rollout 0.5, the default certificate only."""
        with self._lock:
            self._mode = "public_key"
            self._rollout = DEFAULT_ROLLOUT
            self._certificates: list[SimCertificate] = [self._keys.platform_certificate]

    # --- configuration ----------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: object, rollout: object = None) -> dict:
        if mode not in KEY_MODES:
            raise SimError(400, "BAD_REQUEST", f"mode must be one of {', '.join(KEY_MODES)}")
        if rollout is not None:
            if mode != "switch":
                raise SimError(400, "BAD_REQUEST", "rollout applies to the switch mode only")
            if not _is_number(rollout) or not 0.0 <= rollout <= 1.0:
                raise SimError(400, "BAD_REQUEST", "rollout must be a number 0.0..1.0 (the public key's share)")
        with self._lock:
            self._mode = mode
            if mode == "switch":
                self._rollout = DEFAULT_ROLLOUT if rollout is None else float(rollout)
        return self.state()

    def rotate(self, valid_days: object = DEFAULT_CERT_VALID_DAYS) -> SimCertificate:
        """Issue a new certificate; it signs from now on, the older ones stay valid."""
        if not isinstance(valid_days, int) or isinstance(valid_days, bool) or \
                not 1 <= valid_days <= MAX_CERT_VALID_DAYS:
            raise SimError(400, "BAD_REQUEST", f"valid_days must be an integer 1..{MAX_CERT_VALID_DAYS}")
        certificate = self._keys.new_certificate(valid_days, self._clock())   # an RSA key: outside the lock
        with self._lock:
            self._certificates.append(certificate)
        return certificate

    def retire(self, serial: object) -> None:
        if not isinstance(serial, str):
            raise SimError(400, "BAD_REQUEST", "serial must be a certificate serial (string)")
        with self._lock:
            held = [c for c in self._certificates if c.serial == serial.upper()]
            if not held:
                raise SimError(404, "NOT_FOUND", f"no platform certificate {serial}")
            if len(self._certificates) == 1:
                raise SimError(409, "LAST_CERTIFICATE", "the last platform certificate cannot be retired")
            self._certificates.remove(held[0])

    def certificates(self) -> list[SimCertificate]:
        """The certificates held, oldest first (the last one signs)."""
        with self._lock:
            return list(self._certificates)

    def state(self) -> dict:
        with self._lock:
            signing_serial = self._certificates[-1].serial
            return {
                "mode": self._mode,
                "rollout": self._rollout,
                "public_key_id": self._public.serial,
                "certificates": [{"serial": c.serial, "not_before": c.not_before, "not_after": c.not_after,
                                  "signing": c.serial == signing_serial} for c in self._certificates],
            }

    # --- signing --------------------------------------------------------------------

    def certificate_key(self) -> SigningKey:
        """The signing certificate's key, whatever the mode."""
        with self._lock:
            return self._certificate_key()

    def _certificate_key(self) -> SigningKey:
        certificate = self._certificates[-1]
        return SigningKey(certificate.private_key, certificate.serial, "certificate")

    def choose(self) -> SigningKey:
        """The key for the next signature, by mode (switch: public key with probability rollout)."""
        with self._lock:
            if self._mode == "public_key":
                return self._public
            if self._mode == "certificate":
                return self._certificate_key()
            return self._public if self._random.random() < self._rollout else self._certificate_key()

    def snapshot(self) -> tuple[list[SimCertificate], SigningKey]:
        """The certificates held and the signing certificate's key, consistently."""
        with self._lock:
            return list(self._certificates), self._certificate_key()

    @staticmethod
    def sign(key: SigningKey, message: bytes) -> str:
        return signing.rsa_sign(key.private_key, message)
