"""Envelope encryption for secrets: AES-256-GCM under a per-version data key, wrapped by a master key.

Master keys are versioned. They come from ``SCALEMULE_MASTER_KEY`` (``1:<base64>,2:<base64>`` or one
bare base64 key, which is version 1) or from the 0600 file ``master.key`` in the data directory, one
``<version>:<base64>`` per line. The newest version wraps new data keys; older ones stay available for
unwrapping until a rotation has re-wrapped every data key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as random
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from scalemule.core.errors import FailedPrecondition, Internal

MASTER_KEY_FILE = "master.key"
MASTER_KEY_ENV = "SCALEMULE_MASTER_KEY"
KEY_BYTES = 32


@dataclass(frozen=True)
class Sealed:
    """A secret value at rest: every field is safe to store, none is the value."""

    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    key_nonce: bytes
    master_key_version: int


class DecryptionFailed(Internal):
    """A ciphertext did not authenticate: tampered, moved to another row, or the wrong master key."""


def _parse(text: str, origin: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
    for entry in entries:
        version_text, sep, encoded = entry.rpartition(":")
        try:
            version = int(version_text) if sep else 1
            key = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            key, version = b"", 0
        if len(key) != KEY_BYTES or version < 1:
            raise FailedPrecondition(
                f"{origin} holds a malformed master key entry",
                hint="Each entry is '<version>:<base64 of 32 bytes>'; see scalemule://docs/security.",
            )
        keys[version] = key
    return keys


class Keyring:
    """The master keys in force. Reloads its source when asked for a version it does not hold, so a
    running server picks up a rotation made by another process."""

    def __init__(self, data_dir: Path, environ: dict[str, str] | None = None) -> None:
        self._path = data_dir / MASTER_KEY_FILE
        self._environ = os.environ if environ is None else environ
        self._keys: dict[int, bytes] = {}

    @property
    def path(self) -> Path:
        """The key file (used when the environment variable is not set)."""
        return self._path

    @property
    def from_environment(self) -> bool:
        """True when the keys come from ``SCALEMULE_MASTER_KEY``."""
        return bool(self._environ.get(MASTER_KEY_ENV))

    def load(self) -> dict[int, bytes]:
        """Read the keys from their source.

        Raises:
            FailedPrecondition: no master key is configured, or it is malformed.
        """
        if self.from_environment:
            self._keys = _parse(self._environ[MASTER_KEY_ENV], MASTER_KEY_ENV)
        elif self._path.is_file():
            self._keys = _parse(self._path.read_text(encoding="utf-8"), str(self._path))
        else:
            raise FailedPrecondition(
                f"no master key is configured, so secrets cannot be stored or read: {MASTER_KEY_ENV} is unset "
                f"and there is no key file at {self._path}",
                hint=f"Set SCALEMULE_DATA_DIR to the directory 'scalemule init' used (it holds {MASTER_KEY_FILE}), "
                f"or set {MASTER_KEY_ENV} (see scalemule://docs/security).",
            )
        if not self._keys:
            raise FailedPrecondition(f"{self._path} holds no master key", hint="Restore it from your backup.")
        return self._keys

    def current(self) -> tuple[int, bytes]:
        """The newest master key version and key."""
        keys = self._keys or self.load()
        version = max(keys)
        return version, keys[version]

    def get(self, version: int) -> bytes:
        """The master key of ``version``.

        Raises:
            FailedPrecondition: that version is not (or no longer) configured.
        """
        if version not in self._keys:
            self.load()
        if version not in self._keys:
            raise FailedPrecondition(
                f"master key version {version} is not configured",
                hint="Restore the key file or SCALEMULE_MASTER_KEY that wrapped this secret.",
            )
        return self._keys[version]

    def add_version(self) -> int:
        """Append a fresh master key version to the key file and return it (file source only).

        Raises:
            FailedPrecondition: keys come from the environment, where the operator adds versions.
        """
        if self.from_environment:
            raise FailedPrecondition(
                f"master keys come from {MASTER_KEY_ENV}",
                hint=f"Add a new '<version>:<base64>' entry to {MASTER_KEY_ENV} on every process, then rotate again.",
            )
        keys = self.load()
        version = max(keys) + 1
        keys[version] = random.token_bytes(KEY_BYTES)
        self._write(keys)
        return version

    def retire_below(self, version: int) -> None:
        """Drop key versions older than ``version`` from the key file (after a complete re-wrap)."""
        if self.from_environment:
            return
        keys = {v: k for v, k in self.load().items() if v >= version}
        self._write(keys)
        self._keys = keys

    def _write(self, keys: dict[int, bytes]) -> None:
        text = "".join(f"{v}:{base64.b64encode(k).decode()}\n" for v, k in sorted(keys.items()))
        temporary = self._path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)
        self._keys = dict(keys)


def create_key_file(data_dir: Path) -> Path:
    """Create ``master.key`` (0600) with version 1 unless it exists; returns its path."""
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"1:{base64.b64encode(random.token_bytes(KEY_BYTES)).decode()}\n")
    return path


def associated_data(tenant_id: str, env: str, name: str, version: int) -> bytes:
    """What a ciphertext is bound to: moving it to another tenant, environment, name or version breaks it."""
    return "\x1f".join(("scalemule-secret-v1", tenant_id, env, name, str(version))).encode()


def seal(keyring: Keyring, plaintext: bytes, aad: bytes) -> Sealed:
    """Encrypt under a fresh data key and nonce; wrap the data key with the current master key."""
    version, master = keyring.current()
    data_key = AESGCM.generate_key(bit_length=256)
    nonce, key_nonce = random.token_bytes(12), random.token_bytes(12)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    wrapped = AESGCM(master).encrypt(key_nonce, data_key, aad)
    return Sealed(ciphertext, nonce, wrapped, key_nonce, version)


def _unwrap(keyring: Keyring, sealed: Sealed, aad: bytes) -> bytes:
    try:
        return AESGCM(keyring.get(sealed.master_key_version)).decrypt(sealed.key_nonce, sealed.wrapped_key, aad)
    except InvalidTag:
        raise DecryptionFailed(
            "a stored secret failed its integrity check and was not returned",
            hint="The row was altered or moved; restore it from backup.",
        ) from None


def open_sealed(keyring: Keyring, sealed: Sealed, aad: bytes) -> bytes:
    """Decrypt a sealed value.

    Raises:
        DecryptionFailed: the ciphertext or wrapped key does not authenticate under ``aad``.
    """
    data_key = _unwrap(keyring, sealed, aad)
    try:
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise DecryptionFailed(
            "a stored secret failed its integrity check and was not returned",
            hint="The row was altered or moved; restore it from backup.",
        ) from None


def rewrap(keyring: Keyring, sealed: Sealed, aad: bytes) -> Sealed:
    """The same payload with its data key wrapped by the current master key (payload untouched)."""
    data_key = _unwrap(keyring, sealed, aad)
    version, master = keyring.current()
    key_nonce = random.token_bytes(12)
    wrapped = AESGCM(master).encrypt(key_nonce, data_key, aad)
    return Sealed(sealed.ciphertext, sealed.nonce, wrapped, key_nonce, version)
