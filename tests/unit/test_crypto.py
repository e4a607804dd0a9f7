from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from scalemule.core import crypto
from scalemule.core.errors import FailedPrecondition


def _key(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


def test_the_environment_variable_takes_versions_or_one_bare_key(tmp_path: Path) -> None:
    ring = crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: f"1:{_key(1)}, 3:{_key(3)}"})
    assert ring.current() == (3, bytes([3]) * 32)
    assert ring.get(1) == bytes([1]) * 32
    bare = crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: _key(7)})
    assert bare.current() == (1, bytes([7]) * 32)


@pytest.mark.parametrize("value", ["1:short", "x:" + _key(1), "0:" + _key(1), "1:" + _key(1)[:-4] + "!!!!"])
def test_a_malformed_master_key_is_a_failed_precondition_naming_the_form(tmp_path: Path, value: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: value}).current()
    assert "<version>:<base64" in (caught.value.hint or "")


def test_without_any_master_key_secrets_are_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        crypto.Keyring(tmp_path, {}).current()
    assert "scalemule init" in (caught.value.hint or "")


def test_the_key_file_is_private_and_rotation_appends_then_retires(tmp_path: Path) -> None:
    path = crypto.create_key_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = crypto.Keyring(tmp_path, {})
    first = ring.current()
    assert ring.add_version() == 2
    assert crypto.Keyring(tmp_path, {}).get(1) == first[1]
    ring.retire_below(2)
    assert list(crypto.Keyring(tmp_path, {}).load()) == [2]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keys_from_the_environment_are_rotated_by_the_operator_not_by_the_file(tmp_path: Path) -> None:
    ring = crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: f"1:{_key(1)}"})
    with pytest.raises(FailedPrecondition):
        ring.add_version()
    assert not (tmp_path / crypto.MASTER_KEY_FILE).exists()


def test_a_payload_opens_only_with_its_own_associated_data_and_survives_a_rewrap(tmp_path: Path) -> None:
    crypto.create_key_file(tmp_path)
    ring = crypto.Keyring(tmp_path, {})
    aad = crypto.associated_data("ten_1", "dev", "API_KEY", 1)
    sealed = crypto.seal(ring, b"s3cret", aad)
    assert crypto.open_sealed(ring, sealed, aad) == b"s3cret"
    for other in [
        ("ten_2", "dev", "API_KEY", 1),
        ("ten_1", "prod", "API_KEY", 1),
        ("ten_1", "dev", "X", 1),
        ("ten_1", "dev", "API_KEY", 2),
    ]:
        with pytest.raises(crypto.DecryptionFailed):
            crypto.open_sealed(ring, sealed, crypto.associated_data(*other))
    ring.add_version()
    moved = crypto.rewrap(ring, sealed, aad)
    assert (moved.master_key_version, moved.ciphertext) == (2, sealed.ciphertext)
    assert crypto.open_sealed(ring, moved, aad) == b"s3cret"
