"""Custody's settings: one class, from ``CUSTODY_*`` environment variables and a TOML file.

Precedence: explicit keyword arguments > environment > TOML file (``CUSTODY_CONFIG`` or
``./custody.toml``) > defaults. Everything Custody writes lives under ``data_dir``.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

GOOGLE_GEMINI_URL = "https://generativelanguage.googleapis.com"


def _toml_path() -> Path | None:
    explicit = os.environ.get("CUSTODY_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path("custody.toml")
    return default if default.exists() else None


class Settings(BaseSettings):
    """Every knob of a Custody process. See docs/operations.md for each one."""

    model_config = SettingsConfigDict(env_prefix="CUSTODY_", extra="ignore")

    # -- where things live
    data_dir: Path = Path(".custody")
    database_url: str = ""  # empty: SQLite at <data_dir>/custody.db
    blob_store: str = "file"  # "file" (under data_dir/blobs) or "postgres" (the database_url)

    # -- HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    max_request_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # decompression-bomb guard: width*height per input image

    # -- upstream Gemini (or any Gemini-compatible endpoint)
    upstream_base_url: str = ""  # empty: Google's endpoint, or the built-in emulator without a key
    upstream_api_key: SecretStr = Field(default=SecretStr(""))
    upstream_timeout_s: float = 120.0
    emulator: str = "auto"  # "auto": in-process emulator when no upstream key; "on"; "off"

    # -- emulator behaviour (also used by `custody emulator`)
    emulator_blocked_words: list[str] = ["forbidden", "gore"]
    emulator_latency_ms: int = 0

    # -- ledger
    log_origin: str = "custody.local/ledger"
    log_key_file: Path | None = None  # Ed25519 note key; generated under data_dir when absent
    checkpoint_every_entries: int = 256
    checkpoint_every_ms: int = 5_000

    # -- provenance (C2PA)
    signing_cert_file: Path | None = None  # PEM chain, end-entity first; dev PKI when absent
    signing_key_file: Path | None = None
    signing_callback: str = ""  # "module:function" that signs bytes (KMS/HSM)
    trust_anchors_file: Path | None = None
    tsa_url: str = ""
    training_mining: str = "notAllowed"  # cawg.training-mining default per tenant

    # -- policy
    policy_dir: Path = Path(__file__).resolve().parent.parent / "policies"
    opa_url: str = ""
    policy_timeout_ms: int = 2_000
    policy_interpreters: int = Field(default=2, ge=1)  # Rego interpreters shared by all threads
    policy_reload_ms: int = 2_000  # how often policy files are checked for changes (0: never)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @cached_property
    def resolved_upstream_key(self) -> str:
        """The upstream key: CUSTODY_UPSTREAM_API_KEY, else GEMINI_API_KEY / GOOGLE_API_KEY."""
        key = self.upstream_api_key.get_secret_value()
        return key or os.environ.get("GEMINI_API_KEY", "") or os.environ.get("GOOGLE_API_KEY", "")

    @property
    def uses_emulator(self) -> bool:
        """True when the turn pipeline talks to the built-in emulator instead of a real upstream."""
        if self.emulator == "on":
            return True
        if self.emulator == "off":
            return False
        return not self.upstream_base_url and not self.resolved_upstream_key

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'custody.db').resolve()}"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print or record: secrets are never included."""
        data = self.model_dump(mode="json", exclude={"upstream_api_key"})
        return data
