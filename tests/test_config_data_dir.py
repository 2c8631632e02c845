"""One data location, resolved the same way everywhere and never from the current directory.

``CUSTODY_DATA_DIR``, else ``data_dir`` in the config file (``CUSTODY_CONFIG``, else
``$XDG_CONFIG_HOME/custody/custody.toml``; relative paths are relative to the file), else
``$XDG_DATA_HOME/custody``. Always absolute. A ``custody.toml`` in the current directory is not
read: a command run elsewhere must not find another installation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.settings import ConfigError, Settings


@pytest.fixture()
def clean_env(monkeypatch, tmp_path) -> Path:
    """An environment with no Custody settings and a home of its own; cwd is an empty folder."""
    for name in ("CUSTODY_DATA_DIR", "CUSTODY_CONFIG", "CUSTODY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return home


def test_default_is_per_user_not_the_current_directory(clean_env, monkeypatch, tmp_path) -> None:
    settings = Settings()
    assert settings.data_dir == clean_env / ".local/share/custody"
    assert (
        settings.effective_database_url == f"sqlite:///{clean_env}/.local/share/custody/custody.db"
    )
    assert settings.setting_sources()["data_dir"] == "default"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert Settings().data_dir == tmp_path / "xdg-data" / "custody"


def test_a_custody_toml_in_the_current_directory_is_ignored(clean_env) -> None:
    Path("custody.toml").write_text('data_dir = "somewhere-local"\n')
    assert Settings().data_dir == clean_env / ".local/share/custody"


def test_per_user_config_file_sets_the_data_dir(clean_env) -> None:
    config = clean_env / ".config" / "custody" / "custody.toml"
    config.parent.mkdir(parents=True)
    config.write_text('data_dir = "state"\nport = 9099\n')
    settings = Settings()
    assert settings.data_dir == config.parent / "state", "relative to the file, not to the cwd"
    assert settings.port == 9099
    assert settings.setting_sources()["data_dir"] == "file"


def test_custody_config_wins_over_the_per_user_file_and_env_wins_over_both(
    clean_env, monkeypatch, tmp_path
) -> None:
    (clean_env / ".config" / "custody").mkdir(parents=True)
    (clean_env / ".config" / "custody" / "custody.toml").write_text('data_dir = "/per-user"\n')
    explicit = tmp_path / "conf" / "prod.toml"
    explicit.parent.mkdir()
    explicit.write_text(f'data_dir = "{tmp_path / "prod-data"}"\n')
    monkeypatch.setenv("CUSTODY_CONFIG", str(explicit))
    assert Settings().data_dir == tmp_path / "prod-data"
    monkeypatch.setenv("CUSTODY_DATA_DIR", str(tmp_path / "env-data"))
    settings = Settings()
    assert settings.data_dir == tmp_path / "env-data"
    assert settings.setting_sources()["data_dir"] == "env"
    monkeypatch.setenv("CUSTODY_DATA_DIR", "relative/dir")
    with pytest.raises(ConfigError, match="relative path 'relative/dir'"):
        Settings()


def test_a_missing_custody_config_is_an_error_not_silence(clean_env, monkeypatch) -> None:
    monkeypatch.setenv("CUSTODY_CONFIG", "/nonexistent/custody.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        Settings()


def test_database_url_password_is_masked() -> None:
    settings = Settings(database_url="postgresql://custody:s3cret@db.example:5432/custody")
    assert "s3cret" not in settings.masked_database_url
    assert "s3cret" not in str(settings.public_dict())
    assert settings.masked_database_url == "postgresql://custody:***@db.example:5432/custody"
