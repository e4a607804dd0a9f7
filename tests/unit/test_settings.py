from __future__ import annotations

from pathlib import Path

from scalemule.settings import Settings


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
