from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from scalemule.settings import Settings, env_name, settings_table


def test_settings_default_to_an_embedded_store_in_the_working_directory() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path(".scalemule")
    assert settings.api_key is None and settings.database_url is None
    assert settings.url == f"sqlite+aiosqlite:///{Path('.scalemule/scalemule.db').resolve()}"


def test_settings_are_read_from_scalemule_variables(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SCALEMULE_DATA_DIR": str(tmp_path),
            "SCALEMULE_DATABASE_URL": "postgresql://db/x",
            "SCALEMULE_API_KEY": "smk_x",
        }
    )
    assert (settings.data_dir, settings.url, settings.api_key) == (tmp_path, "postgresql://db/x", "smk_x")


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env({"SCALEMULE_DATABASE_URL": "", "SCALEMULE_API_KEY": ""})
    assert settings.database_url is None and settings.api_key is None


def test_an_http_server_signs_urls_for_the_address_it_listens_on() -> None:
    assert Settings.from_env({}).for_http("127.0.0.1", 9100).public_url == "http://127.0.0.1:9100"
    assert Settings.from_env({}).for_http("0.0.0.0", 9100).public_url == "http://127.0.0.1:9100"
    assert Settings.from_env({}).for_http("::1", 9100).public_url == "http://[::1]:9100"


def test_a_configured_public_url_wins_over_the_listening_address() -> None:
    settings = Settings.from_env({"SCALEMULE_PUBLIC_URL": "https://files.example.com/"})
    assert settings.for_http("0.0.0.0", 9100).public_url == "https://files.example.com"
    assert "https://files.example.com/blobs/" in settings.signing_notice()
    assert "SCALEMULE_PUBLIC_URL" in settings.signing_notice()


def test_a_setting_that_does_not_parse_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings.from_env({"SCALEMULE_STORAGE_QUOTA_BYTES": "lots"})


def test_the_master_key_setting_is_never_shown_in_its_repr() -> None:
    settings = Settings.from_env({"SCALEMULE_MASTER_KEY": "1:c2VjcmV0"})
    assert "c2VjcmV0" not in repr(settings)
    assert settings.keyring_environ() == {"SCALEMULE_MASTER_KEY": "1:c2VjcmV0"}


def test_the_settings_table_lists_every_setting() -> None:
    table = settings_table()
    for name in Settings.model_fields:
        assert f"`{env_name(name)}`" in table
