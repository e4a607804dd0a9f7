from __future__ import annotations

import dataclasses
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scalemule.core.crypto import Keyring, create_key_file
from scalemule.core.errors import Unauthenticated
from scalemule.core.signed_urls import URL_KEY_FILE, Grant, UrlSigner


def grant(**changes: object) -> Grant:
    base = Grant("GET", "ten_1", "menus/é.json", int(datetime.now(UTC).timestamp()) + 60, "agt_1", "key_1", etag="e1")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_token_verifies_to_the_grant_it_was_signed_for(tmp_path: Path) -> None:
    create_key_file(tmp_path)
    signer = UrlSigner(Keyring(tmp_path, environ={}), tmp_path)
    assert signer.verify(signer.sign(grant())) == grant()


def test_another_process_with_the_same_master_key_verifies_it(tmp_path: Path) -> None:
    create_key_file(tmp_path)
    token = UrlSigner(Keyring(tmp_path, environ={}), tmp_path).sign(grant())
    assert UrlSigner(Keyring(tmp_path, environ={}), tmp_path).verify(token) == grant()
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    create_key_file(elsewhere)
    with pytest.raises(Unauthenticated):
        UrlSigner(Keyring(elsewhere, environ={}), elsewhere).verify(token)


def test_without_a_master_key_a_0600_signing_key_file_is_made_once_and_reused(tmp_path: Path) -> None:
    token = UrlSigner(Keyring(tmp_path, environ={}), tmp_path).sign(grant())
    path = tmp_path / URL_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert UrlSigner(Keyring(tmp_path, environ={}), tmp_path).verify(token) == grant()


def test_a_changed_payload_or_signature_is_refused(tmp_path: Path) -> None:
    signer = UrlSigner(Keyring(tmp_path, environ={}), tmp_path)
    token = signer.sign(grant())
    payload, signature = token.split(".")
    other = signer.sign(grant(tenant_id="ten_2")).split(".")[0]
    for bad in (f"{other}.{signature}", f"{payload}.{signature[:-4]}AAAA", payload, "", "a.b.c"):
        with pytest.raises(Unauthenticated):
            signer.verify(bad)


def test_an_expired_grant_is_refused_when_checked(tmp_path: Path) -> None:
    past = int((datetime.now(UTC) - timedelta(seconds=1)).timestamp())
    with pytest.raises(Unauthenticated, match="expired"):
        grant(expires_at=past).check_live()
    assert grant().check_live() == grant()
