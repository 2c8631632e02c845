"""The OPA server engine: the same policy files, decided by an OPA server over its REST API.

On load Custody pushes its bundle to the server — every module with ``PUT /v1/policies/<id>``
and every data file with ``PUT /v1/data/<mount>`` — so the server decides with exactly the files
whose revision the decision records. A server that refuses the push (one managed by bundles, for
instance) leaves the policy unloaded, and every turn is denied until it accepts.

Each decision is ``POST /v1/data/custody/decision`` with ``{"input": ...}`` through
``opa-python-client`` (``OpaClient.query_rule``), with the policy timeout and no retries: a slow
or absent server is a denial, never a hang.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from opa_client import OpaClient

from governance.policy import EngineError
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import DECISION_PATH

POLICY_ID_PREFIX = "custody"


def _client(url: str, timeout_ms: int) -> OpaClient:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(f"CUSTODY_OPA_URL {url!r} is not an http(s) URL of an OPA server")
    if parts.path not in ("", "/"):
        raise EngineError(f"CUSTODY_OPA_URL {url!r}: give the server's root URL, without a path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return OpaClient(
        host=parts.hostname,
        port=port,
        ssl=parts.scheme == "https",
        retries=0,
        timeout=timeout_ms / 1000,
    )


class OpaEngine:
    """Pushes one bundle to an OPA server and evaluates its decision path there."""

    name = "opa"

    def __init__(
        self,
        url: str,
        bundle: PolicyBundle,
        *,
        timeout_ms: int = 2_000,
        push: bool = True,
        include_tests: bool = False,
    ) -> None:
        self.url = url
        self.bundle = bundle
        self.timeout_ms = timeout_ms
        self._client = _client(url, timeout_ms)
        self._package, _, self._rule = DECISION_PATH.rpartition("/")
        if push:
            self.push(include_tests=include_tests)

    def push(self, *, include_tests: bool = False) -> None:
        """Upload every module (and data file) of the bundle; EngineError if the server refuses."""
        sources = {**self.bundle.modules, **(self.bundle.tests if include_tests else {})}
        try:
            for rel, source in sorted(sources.items()):
                self._client.update_policy_from_string(
                    source, f"{POLICY_ID_PREFIX}/{rel}", rego_compat=False
                )
            for rel, value in sorted(self.bundle.data_files.items()):
                mount = "/".join(PurePosixPath(rel).parent.parts)
                if not isinstance(value, dict) and not mount:
                    raise EngineError(f"{rel}: data at the policy root must be an object")
                self._client.update_or_create_data(value, mount)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"the OPA server at {self.url} refused the policy: {exc}") from exc

    def evaluate(self, document: dict[str, Any], timeout_ms: int = 0) -> Any:
        """POST the input to ``/v1/data/custody/decision``; the result, or None if undefined."""
        return self.query_path(f"{self._package}/{self._rule}", document)

    def query_path(self, path: str, document: dict[str, Any] | None = None) -> Any:
        """The value of ``data.<path>`` (slash-separated) for ``document``; None if undefined."""
        package, _, rule = path.rpartition("/")
        try:
            answer = self._client.query_rule(document or {}, package, rule)
        except Exception as exc:  # requests' timeouts and HTTP errors, and bad JSON
            raise EngineError(f"the OPA server at {self.url} failed: {exc}") from exc
        if not isinstance(answer, dict):
            raise EngineError(f"the OPA server at {self.url} answered something that is not JSON")
        return answer.get("result")

    def close(self) -> None:
        self._client.close_connection()
