"""The OPA engine against a small in-test server speaking OPA's /v1/policies and /v1/data API.

The stand-in evaluates the pushed modules with regopy, so this proves the push, the query, the
result handling, the timeout and fail-closed paths of the REST engine — not OPA itself (there is
no OPA binary here; run the same tests with CUSTODY_OPA_URL set against a real server).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from governance.policy.bundle import load_bundle
from governance.policy.engine_opa import OpaEngine
from governance.policy.service import PolicyService
from tests.test_policy_service import POLICIES, facts


class _FakeOpa:
    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.delay_s = 0.0
        self.queries = 0

    def decide(self, path: str, document: dict[str, Any]) -> Any:
        from regopy import Input, Interpreter

        interp = Interpreter()
        for name, source in self.policies.items():
            interp.add_module(name, source)
        interp.add_data_json(json.dumps(self.data))
        interp.set_input(Input(document))
        output = interp.query("data." + path.replace("/", "."))
        return output.results[0].expressions[0] if output.results else None


def _handler(opa: _FakeOpa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _send(self, code: int, doc: Any = None) -> None:
            raw = b"" if doc is None else json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_PUT(self) -> None:
            body = self._body()
            if self.path.startswith("/v1/policies/"):
                opa.policies[self.path[len("/v1/policies/") :]] = body.decode()
                self._send(200, {})
            elif self.path.startswith("/v1/data/"):
                node = opa.data
                parts = [p for p in self.path[len("/v1/data/") :].split("/") if p]
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = json.loads(body)
                self._send(204)
            else:
                self._send(404, {"code": "not_found"})

        def do_POST(self) -> None:
            document = json.loads(self._body() or b"{}").get("input", {})
            opa.queries += 1
            time.sleep(opa.delay_s)
            result = opa.decide(self.path[len("/v1/data/") :], document)
            self._send(200, {} if result is None else {"result": result})

    return Handler


@pytest.fixture()
def fake_opa() -> Iterator[tuple[_FakeOpa, str]]:
    opa = _FakeOpa()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(opa))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield opa, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _service(url: str, timeout_ms: int = 2000) -> PolicyService:
    def factory(bundle: Any) -> OpaEngine:
        return OpaEngine(url, bundle, timeout_ms=timeout_ms)

    return PolicyService(POLICIES, engine_factory=factory, timeout_ms=timeout_ms)


def test_opa_engine_pushes_the_bundle_and_decides(fake_opa: tuple[_FakeOpa, str]) -> None:
    opa, url = fake_opa
    service = _service(url)
    assert set(opa.policies) == {f"custody/{rel}" for rel in load_bundle(POLICIES).modules}
    assert "ratelimited" in opa.data["custody"]["tenants"]
    allowed = service.decide_request(facts("make the sofa teal"))
    denied = service.decide_request(facts("make him look like Barack Obama"))
    assert (allowed.outcome, allowed.engine) == ("allow", "opa")
    assert denied.outcome == "deny" and "public figure" in denied.reasons[0]
    assert opa.queries == 2


def test_opa_timeout_denies(fake_opa: tuple[_FakeOpa, str]) -> None:
    opa, url = fake_opa
    service = _service(url, timeout_ms=100)
    opa.delay_s = 0.5
    decision = service.decide_request(facts("make the sofa teal"))
    assert decision.outcome == "deny" and decision.engine == "error"
    assert "policy engine failed" in decision.reasons[0]


def test_unreachable_opa_denies(tmp_path: Path) -> None:
    service = _service("http://127.0.0.1:9", timeout_ms=200)
    decision = service.decide_request(facts("make the sofa teal"))
    assert decision.outcome == "deny" and decision.engine == "error"


def test_settings_select_the_opa_engine(fake_opa: tuple[_FakeOpa, str]) -> None:
    from governance.settings import Settings

    _, url = fake_opa
    service = PolicyService.from_settings(Settings(opa_url=url, policy_dir=POLICIES))
    decision = service.decide_request(facts("make the sofa teal"))
    assert decision.engine == "opa" and decision.outcome == "allow"
