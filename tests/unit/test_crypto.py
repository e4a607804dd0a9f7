from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# Each malformed entry breaks one rule and is paired with the entry that differs only by that rule,
# which loads: so every case fails on its own check, not on whichever check comes first.
@pytest.mark.parametrize(
    ("malformed", "wellformed"),
    [
        pytest.param(f"0:{_key(1)}", f"1:{_key(1)}", id="version-zero"),
        pytest.param(f"-2:{_key(1)}", f"2:{_key(1)}", id="version-negative"),
        pytest.param(f"x:{_key(1)}", f"7:{_key(1)}", id="version-not-a-number"),
        pytest.param(f"1:{_key(1)[:20]}!{_key(1)[20:]}", f"1:{_key(1)}", id="character-outside-base64"),
        pytest.param(f"1:{_key(1)[:-1]}", f"1:{_key(1)}", id="base64-padding-missing"),
        pytest.param(f"1:{_b64(bytes(31))}", f"1:{_b64(bytes(32))}", id="one-byte-short"),
    ],
)
def test_a_malformed_master_key_is_a_failed_precondition_naming_the_form(
    tmp_path: Path, malformed: str, wellformed: str
) -> None:
    assert crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: wellformed}).load()
    with pytest.raises(FailedPrecondition) as caught:
        crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: malformed}).load()
    assert caught.value.code == "failed_precondition"
    assert "<version>:<base64 of 32 bytes>" in (caught.value.hint or "")


@pytest.mark.parametrize("length", [0, 1, 16, 24, 31, 33, 48, 64])
def test_a_master_key_of_any_length_but_32_bytes_is_refused_at_load(tmp_path: Path, length: int) -> None:
    with pytest.raises(FailedPrecondition):
        crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: f"1:{_b64(bytes([9]) * length)}"}).load()
    (tmp_path / crypto.MASTER_KEY_FILE).write_text(f"1:{_b64(bytes([9]) * length)}\n", encoding="utf-8")
    with pytest.raises(FailedPrecondition):
        crypto.Keyring(tmp_path, {}).load()


def test_a_key_file_with_no_entry_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / crypto.MASTER_KEY_FILE).write_text("\n\n", encoding="utf-8")
    with pytest.raises(FailedPrecondition):
        crypto.Keyring(tmp_path, {}).load()


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


def test_a_keyring_given_no_environment_reads_the_process_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(crypto.MASTER_KEY_ENV, _key(5))
    ring = crypto.Keyring(tmp_path)
    assert ring.from_environment and ring.current() == (1, bytes([5]) * 32)


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


def _ring(tmp_path: Path, master: bytes = bytes(range(32))) -> crypto.Keyring:
    return crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: f"1:{_b64(master)}"})


def _data_key(ring: crypto.Keyring, sealed: crypto.Sealed, aad: bytes) -> bytes:
    return AESGCM(ring.get(sealed.master_key_version)).decrypt(sealed.key_nonce, sealed.wrapped_key, aad)


def test_every_seal_draws_fresh_96_bit_nonces_for_the_payload_and_the_key_wrap(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    aad = crypto.associated_data("ten_1", "dev", "API_KEY", 1)
    sealed = [crypto.seal(ring, b"same value", aad) for _ in range(4)]
    nonces = [s.nonce for s in sealed] + [s.key_nonce for s in sealed]
    assert len(set(nonces)) == len(nonces)
    assert all(len(n) == 12 for n in nonces)
    assert len({s.ciphertext for s in sealed}) == len({s.wrapped_key for s in sealed}) == 4


def test_every_seal_uses_a_fresh_256_bit_data_key(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    aad = crypto.associated_data("ten_1", "dev", "API_KEY", 1)
    keys = [_data_key(ring, s, aad) for s in (crypto.seal(ring, b"v", aad) for _ in range(3))]
    assert all(len(k) == 32 for k in keys)
    assert len(set(keys)) == 3


def test_a_rewrap_keeps_the_data_key_and_draws_a_fresh_key_nonce(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    aad = crypto.associated_data("ten_1", "dev", "API_KEY", 1)
    sealed = crypto.seal(ring, b"v", aad)
    again = crypto.rewrap(ring, sealed, aad)
    assert len(again.key_nonce) == 12 and again.key_nonce != sealed.key_nonce
    assert again.wrapped_key != sealed.wrapped_key
    assert _data_key(ring, again, aad) == _data_key(ring, sealed, aad)
    assert (again.nonce, again.ciphertext) == (sealed.nonce, sealed.ciphertext)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(("ten_1", "dev", "1X", 1), ("ten_1", "dev1", "X", 1), id="environment-and-name"),
        pytest.param(("ten_1", "dev", "KEY1", 2), ("ten_1", "dev", "KEY", 12), id="name-and-version"),
        pytest.param(("ten_1a", "dev", "KEY", 1), ("ten_1", "adev", "KEY", 1), id="tenant-and-environment"),
    ],
)
def test_associated_data_is_unambiguous_where_two_fields_meet(
    tmp_path: Path, one: tuple[str, str, str, int], other: tuple[str, str, str, int]
) -> None:
    assert crypto.associated_data(*one) != crypto.associated_data(*other)
    ring = _ring(tmp_path)
    sealed = crypto.seal(ring, b"v", crypto.associated_data(*one))
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(ring, sealed, crypto.associated_data(*other))


def test_the_payload_is_checked_against_its_associated_data_even_when_the_key_wrap_passes(tmp_path: Path) -> None:
    ring = _ring(tmp_path)
    right, wrong = crypto.associated_data("ten_1", "dev", "A", 1), crypto.associated_data("ten_1", "dev", "B", 1)
    sealed = crypto.seal(ring, b"v", right)
    data_key = _data_key(ring, sealed, right)
    # The data key is re-wrapped under the other row's associated data; the payload still names its own.
    key_nonce = os.urandom(12)
    wrapped = AESGCM(ring.get(1)).encrypt(key_nonce, data_key, wrong)
    moved = crypto.Sealed(sealed.ciphertext, sealed.nonce, wrapped, key_nonce, 1)
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(ring, moved, wrong)


def test_the_key_wrap_is_checked_against_its_associated_data_even_when_the_payload_would_pass(
    tmp_path: Path,
) -> None:
    ring = _ring(tmp_path)
    right, wrong = crypto.associated_data("ten_1", "dev", "A", 1), crypto.associated_data("ten_1", "dev", "B", 1)
    sealed = crypto.seal(ring, b"v", right)
    data_key = _data_key(ring, sealed, right)
    nonce = os.urandom(12)
    # The payload is re-encrypted under the other row's associated data; the key wrap still names its own.
    moved = crypto.Sealed(AESGCM(data_key).encrypt(nonce, b"v", wrong), nonce, sealed.wrapped_key, sealed.key_nonce, 1)
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(ring, moved, wrong)
    with pytest.raises(crypto.DecryptionFailed):
        crypto.rewrap(ring, moved, wrong)


def test_a_value_sealed_in_the_stored_format_still_opens() -> None:
    # A known answer: changing the associated-data layout or the cipher would orphan every stored secret.
    aad = crypto.associated_data("ten_1", "prod", "DB_PASSWORD", 3)
    assert aad == b"scalemule-secret-v1\x1ften_1\x1fprod\x1fDB_PASSWORD\x1f3"
    sealed = crypto.Sealed(
        ciphertext=bytes.fromhex("f7de5638d83ff3776884b73e0b433e98290380eb7dd6d8"),
        nonce=bytes(range(12)),
        wrapped_key=bytes.fromhex(
            "5ebbd47c7606913beaca645e453563538572517e6ce5066d95ed872faba631ac20e58aabb9e0524c896bc7b0bfd3ebc3"
        ),
        key_nonce=bytes(range(20, 32)),
        master_key_version=1,
    )
    ring = crypto.Keyring(Path("/nonexistent"), {crypto.MASTER_KEY_ENV: f"1:{_b64(bytes(range(32)))}"})
    assert crypto.open_sealed(ring, sealed, aad) == b"hunter2"


def test_a_malformed_master_key_error_names_where_the_key_came_from(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as from_env:
        crypto.Keyring(tmp_path, {crypto.MASTER_KEY_ENV: "1:short"}).load()
    assert crypto.MASTER_KEY_ENV in from_env.value.message
    path = tmp_path / crypto.MASTER_KEY_FILE
    path.write_text("1:short\n", encoding="utf-8")
    with pytest.raises(FailedPrecondition) as from_file:
        crypto.Keyring(tmp_path, {}).load()
    assert str(path) in from_file.value.message


def test_a_keyring_that_retired_old_versions_serves_the_rest_and_refuses_the_retired(tmp_path: Path) -> None:
    crypto.create_key_file(tmp_path)
    ring = crypto.Keyring(tmp_path, {})
    ring.add_version()
    second = ring.get(2)
    ring.retire_below(2)
    assert ring.get(2) == second
    assert ring.current() == (2, second)
    with pytest.raises(FailedPrecondition):
        ring.get(1)
