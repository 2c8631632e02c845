"""Custody's settings: one class, from ``CUSTODY_*`` environment variables and one TOML file.

Precedence: explicit keyword arguments > environment > the config file > defaults. The config file
is ``CUSTODY_CONFIG`` when set (it must exist), else ``$XDG_CONFIG_HOME/custody/custody.toml``
(``~/.config/custody/custody.toml``) when it exists — never a file in the current directory.

Everything Custody writes lives under ``data_dir``, which is always absolute and resolved the same
way by every command: ``CUSTODY_DATA_DIR`` (absolute: a relative one is refused), else
``data_dir`` in the config file (relative to the file), else ``$XDG_DATA_HOME/custody``
(``~/.local/share/custody``). A default that followed the current directory silently forked an
installation: a command run elsewhere made a new, empty ledger and then verified it.

The upstream key comes only from ``CUSTODY_UPSTREAM_API_KEY`` or the file named by
``CUSTODY_UPSTREAM_API_KEY_FILE`` (the Docker/Kubernetes secret convention). ``GEMINI_API_KEY``
and ``GOOGLE_API_KEY`` are what the SDK reads for an app's *Custody* key; the gateway never reads
them, or a Custody key would be sent to Google.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url

GOOGLE_GEMINI_URL = "https://generativelanguage.googleapis.com"
# Every Custody API key starts so (``governance.auth.keys`` makes them); defined here, the lowest
# layer, because the settings refuse one as the upstream key.
KEY_PREFIX = "ck_"
DATABASE_BLOB_STORES = ("database", "postgres", "postgresql")  # storage.blobs.open_blob_store
SDK_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")  # read by the SDK, never by the gateway


class ConfigError(ValueError):
    """The configuration is contradictory or unusable; the message says what to change."""


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else _home() / fallback


def default_config_file() -> Path:
    """``$XDG_CONFIG_HOME/custody/custody.toml``, i.e. ``~/.config/custody/custody.toml``."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "custody" / "custody.toml"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/custody``, i.e. ``~/.local/share/custody``: the per-user default."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "custody"


def config_file() -> Path | None:
    """The config file in force: ``CUSTODY_CONFIG`` (must exist), else the per-user one if any."""
    explicit = os.environ.get("CUSTODY_CONFIG", "")
    if explicit:
        path = Path(explicit).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(
                f"CUSTODY_CONFIG names {path}, which does not exist; fix the path or unset it"
            )
        return path
    default = default_config_file()
    return default if default.is_file() else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    if "data_dir" in data:  # relative to the file, not to wherever a command happens to run
        data["data_dir"] = str((path.parent / Path(data["data_dir"]).expanduser()).absolute())
    return data


def _refuse_a_relative_data_dir() -> None:
    """A relative ``CUSTODY_DATA_DIR`` names a new installation in every directory: refuse it."""
    value = os.environ.get("CUSTODY_DATA_DIR", "")
    if value and not Path(value).expanduser().is_absolute():
        raise ConfigError(
            f"CUSTODY_DATA_DIR is the relative path {value!r}, which would be a different"
            " installation in every directory; set it to an absolute path"
            f" (from here that is {Path(value).absolute()})"
        )


@dataclass(frozen=True)
class UpstreamKey:
    """The upstream key and where it came from (``source`` is safe to print; ``value`` is not)."""

    value: str
    source: str  # "CUSTODY_UPSTREAM_API_KEY", "CUSTODY_UPSTREAM_API_KEY_FILE (<path>)" or ""


class Settings(BaseSettings):
    """Every knob of a Custody process. See docs/operations.md for each one."""

    model_config = SettingsConfigDict(env_prefix="CUSTODY_", extra="ignore")

    # -- where things live
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""  # empty: SQLite at <data_dir>/custody.db
    # "file" (under data_dir/blobs), "file:/an/absolute/path", or "database" (PostgreSQL's blobs
    # table; "postgres" and "postgresql" are synonyms)
    blob_store: str = "file"

    # -- HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    max_request_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # decompression-bomb guard: width*height per input image
    header_timeout_s: float = Field(default=10.0, ge=0)  # a request's headers, from its 1st byte
    max_header_bytes: int = Field(default=128 * 1024, ge=1024)  # request line and headers
    body_idle_timeout_s: float = Field(default=15.0, gt=0)  # wait for the next body chunk
    body_timeout_s: float = Field(default=120.0, gt=0)  # the whole body, from its first read
    # idle between keep-alive requests; above clients' own idle expiry (httpx, Node: 5 s), so a
    # client never sends on a connection the gateway is closing (nginx's default, 75 s)
    keep_alive_timeout_s: float = Field(default=75.0, gt=0)
    max_connections: int = Field(default=10_000, ge=0)  # 0: as many as descriptors allow
    max_connections_per_client: int = Field(default=512, ge=0)  # per client address; 0: no cap
    max_inflight_requests: int = Field(default=512, ge=0)  # then 503 + Retry-After; 0: no cap
    fd_reserve: int = Field(default=1024, ge=0)  # descriptors kept free of connections
    overload_retry_after_s: int = Field(default=1, ge=1)
    shed_record_ms: int = Field(default=10_000, ge=100)  # requests.shed: one per tenant per
    health_port: int = Field(default=0, ge=0, le=65535)  # /healthz on its own listener; 0: none
    health_stall_s: float = Field(default=10.0, gt=0)  # health port: 503 after a loop stall

    # -- upstream Gemini (or any Gemini-compatible endpoint)
    upstream_base_url: str = ""  # empty: Google's endpoint, or the built-in emulator without a key
    upstream_api_key: SecretStr = Field(default=SecretStr(""))
    upstream_api_key_file: Path | None = None  # a file holding the key (a mounted secret)
    upstream_timeout_s: float = 120.0  # per read of one attempt
    upstream_deadline_s: float = Field(default=90.0, gt=0)  # a turn's whole upstream phase
    upstream_retries: int = Field(default=0, ge=0, le=10)  # a tenant's `upstream_retries` wins
    upstream_retry_base_ms: int = Field(default=500, ge=1)  # backoff: base · 2^(n-1), jittered
    upstream_retry_max_delay_ms: int = Field(default=10_000, ge=1)  # caps backoff and RetryInfo
    upstream_breaker_threshold: int = Field(default=5, ge=0)  # failures in a row; 0: no breaker
    upstream_breaker_cooldown_s: float = Field(default=30.0, gt=0)
    emulator: str = "auto"  # "auto": in-process emulator when no upstream key; "on"; "off"

    # -- emulator behaviour (also used by `custody emulator`)
    emulator_blocked_words: list[str] = ["forbidden", "gore"]
    emulator_latency_ms: int = 0

    # -- ledger
    log_origin: str = "custody.local/ledger"
    log_key_file: Path | None = None  # Ed25519 note key; generated under data_dir when absent
    checkpoint_every_entries: int = 256
    checkpoint_every_ms: int = 5_000
    # C2SP tlog-witnesses, each "URL KEY" (the add-checkpoint endpoint's base URL and the
    # witness's cosignature/v1 verifier key); CUSTODY_WITNESSES is a JSON list of such strings
    witnesses: list[str] = []
    witness_quorum: int | None = Field(default=None, ge=0)  # None: every witness must cosign
    witness_timeout_s: float = Field(default=10.0, gt=0)

    # -- evidence bundles
    evidence_tsa_url: str = ""  # an RFC 3161 TSA: timestamps of bundles and checkpoints
    checkpoint_lease_ms: int = Field(default=15_000, ge=200)  # the signer lease (one replica signs)

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

    # -- compliance queries and oversight figures (governance/compliance)
    prompt_search_scan: int = Field(default=5_000, ge=1)  # turns one prompt search reads at most
    rubber_stamp_ms: int = Field(default=5_000, ge=0)  # a review decided faster is a rubber stamp
    model_prices: str = ""  # JSON: {"model": {"input": USD per 1M tokens, "output": ...}}
    # -- URL inputs (fileData.fileUri), fetched by Custody where a tenant's policy allows them
    url_input_schemes: list[str] = ["https"]
    url_input_hosts: list[str] = []  # host patterns ("*.cdn.example"); empty: any public host
    url_input_allow_networks: list[str] = []  # CIDRs reachable although not public (never metadata)
    url_input_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    url_input_timeout_s: float = Field(default=10.0, gt=0)
    url_input_max_redirects: int = Field(default=5, ge=0)

    # -- review console (people's sign-in, governance/console)
    console_cookie_secure: str = "auto"  # "auto": Secure when served over https; "on"; "off"
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60)
    console_session_idle_s: int = Field(default=1800, ge=0)  # 0: no idle limit
    console_sign_in_max_failures: int = Field(default=5, ge=1)  # then the account is throttled
    console_sign_in_lockout_s: int = Field(default=60, ge=1)  # doubled per further failure
    console_sign_in_per_client: int = Field(default=20, ge=1)  # attempts per minute per address

    # -- review webhooks: sent to public addresses only, unless an operator allows a network
    webhook_allow_networks: list[str] = []  # CIDRs a webhook may reach although not public

    # -- sessions
    linked_edit_concurrency: int = Field(default=4, ge=1)  # upstream calls of one linked edit
    linked_edit_max_targets: int = Field(default=32, ge=1)

    # -- process
    executor_threads: int = Field(default=32, ge=1)  # threads for byte-heavy turn work
    malloc_arena_max: int = Field(default=2, ge=0)  # glibc malloc arenas at `serve` (0: glibc's)
    malloc_mmap_threshold: int = Field(default=1_048_576, ge=0)  # bytes; 0: glibc's dynamic one
    malloc_trim_interval_s: float = Field(default=0.0, ge=0)  # malloc_trim at `serve`; 0: never
    malloc_huge_pages: bool = True  # `serve` runs with glibc.malloc.hugetlb=1 (madvise THP)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("blob_store", mode="after")
    @classmethod
    def _blob_store_spec(cls, value: str) -> str:
        # A relative file: path would name another blob store in every directory, like a
        # relative data dir.
        spec = value.strip() or "file"
        if spec in ("file", *DATABASE_BLOB_STORES):
            return spec
        if spec.startswith("file:") and Path(spec[5:]).is_absolute():
            return spec
        raise ValueError(
            f"{value!r} is not a blob store: use 'file', 'file:/an/absolute/path' or 'database'"
            " (PostgreSQL)"
        )

    def check_blob_store(self) -> None:
        """A ``ConfigError`` when the blob store cannot live in the configured database."""
        if self.blob_store not in DATABASE_BLOB_STORES:
            return
        try:
            backend = make_url(self.effective_database_url).get_backend_name()
        except Exception:
            backend = ""
        if backend != "postgresql":
            raise ConfigError(
                f"CUSTODY_BLOB_STORE={self.blob_store} keeps content in PostgreSQL, but the"
                f" database is {self.masked_database_url}: set CUSTODY_DATABASE_URL to a"
                " postgresql:// URL, or use CUSTODY_BLOB_STORE=file"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _refuse_a_relative_data_dir()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=_read_config(path)))
        return tuple(sources)

    # -- the upstream key ----------------------------------------------------------------------

    def upstream_key(self) -> UpstreamKey:
        """The upstream key from Custody's own settings only; a ``ConfigError`` says what is wrong.

        Refuses a Custody key (``ck_…``): it is the key an app sends to Custody, and sending it to
        the upstream would leak it to Google and fail every turn.
        """
        inline = self.upstream_api_key.get_secret_value().strip()
        path = self.upstream_api_key_file
        if inline and path is not None:
            raise ConfigError(
                "both CUSTODY_UPSTREAM_API_KEY and CUSTODY_UPSTREAM_API_KEY_FILE are set;"
                " keep one of them"
            )
        if path is not None:
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"CUSTODY_UPSTREAM_API_KEY_FILE names {path}, which cannot be read: {exc}"
                ) from exc
            if not value:
                raise ConfigError(f"CUSTODY_UPSTREAM_API_KEY_FILE names {path}, which is empty")
            key = UpstreamKey(value, f"CUSTODY_UPSTREAM_API_KEY_FILE ({path})")
        else:
            key = UpstreamKey(inline, "CUSTODY_UPSTREAM_API_KEY" if inline else "")
        if key.value.startswith(KEY_PREFIX):
            raise ConfigError(
                f"the upstream key from {key.source} is a Custody key ({KEY_PREFIX}…):"
                " it would be sent to the upstream. Set CUSTODY_UPSTREAM_API_KEY to a Gemini API"
                " key from Google AI Studio, or unset it to use the built-in emulator"
            )
        return key

    @property
    def resolved_upstream_key(self) -> str:
        """The upstream key's value (see ``upstream_key``); never from GEMINI_API_KEY."""
        return self.upstream_key().value

    @property
    def uses_emulator(self) -> bool:
        """True when the turn pipeline talks to the built-in emulator instead of a real upstream."""
        if self.emulator == "on":
            return True
        if self.emulator == "off":
            return False
        return not self.upstream_base_url and not self.resolved_upstream_key

    @property
    def ignored_sdk_key_variables(self) -> list[str]:
        """The SDK's key variables set in this environment (which Custody does not use)."""
        return [name for name in SDK_KEY_VARIABLES if os.environ.get(name)]

    # -- where state lives -----------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'custody.db'}"

    @property
    def masked_database_url(self) -> str:
        """The database URL with any password replaced by ``***``: safe to print."""
        url = self.effective_database_url
        try:
            parsed = make_url(url)
        except Exception:  # an unparsable URL is printed as its scheme only
            return url.split(":", 1)[0] + ":…"
        return parsed.render_as_string(hide_password=True)

    @property
    def note_key_path(self) -> Path:
        """The ledger's Ed25519 note key: ``log_key_file``, else ``<data_dir>/ledger-note.key``."""
        return Path(self.log_key_file) if self.log_key_file else self.data_dir / "ledger-note.key"

    def setting_sources(self) -> dict[str, str]:
        """Where each setting came from: ``env``, ``file``, ``argument`` or ``default``."""
        path = config_file()
        in_file = set(_read_config(path)) if path is not None else set()
        environ = {name.upper() for name in os.environ}
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            if name not in self.model_fields_set:
                out[name] = "default"
            elif f"CUSTODY_{name.upper()}" in environ:
                out[name] = "env"
            elif name in in_file:
                out[name] = "file"
            else:
                out[name] = "argument"
        return out

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print or record: secrets are never included."""
        data = self.model_dump(mode="json", exclude={"upstream_api_key"})
        data["database_url"] = self.masked_database_url if self.database_url else ""
        return data
