"""The witnesses an installation submits to (``CUSTODY_WITNESSES``, ``CUSTODY_WITNESS_QUORUM``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from governance.settings import ConfigError, Settings
from storage.ledger.cosignature import CosignatureError, WitnessKey


@dataclass(frozen=True)
class Witness:
    """One witness: where its ``add-checkpoint`` endpoint is and the key it cosigns with."""

    url: str  # the base URL; requests go to <url>/add-checkpoint
    key: WitnessKey

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class WitnessPolicy:
    witnesses: tuple[Witness, ...]
    quorum: int
    timeout_s: float

    @property
    def keys(self) -> list[WitnessKey]:
        return [w.key for w in self.witnesses]


def witness_policy(settings: Settings) -> WitnessPolicy | None:
    """The configured witnesses and quorum, or None when no witness is configured."""
    if not settings.witnesses:
        return None
    out = []
    for spec in settings.witnesses:
        url, _, key = spec.strip().partition(" ")
        if not url.startswith(("http://", "https://")) or not key.strip():
            raise ConfigError(
                f"CUSTODY_WITNESSES: each entry is 'URL KEY' (an http(s) URL, a space, the"
                f" witness's cosignature verifier key), not {spec[:200]!r}"
            )
        try:
            out.append(Witness(url.rstrip("/"), WitnessKey.from_key_string(key.strip())))
        except CosignatureError as exc:
            raise ConfigError(f"CUSTODY_WITNESSES: {exc}") from exc
    quorum = len(out) if settings.witness_quorum is None else settings.witness_quorum
    if quorum > len(out):
        raise ConfigError(
            f"CUSTODY_WITNESS_QUORUM is {quorum} but only {len(out)} witnesses are configured"
        )
    return WitnessPolicy(tuple(out), quorum, settings.witness_timeout_s)
