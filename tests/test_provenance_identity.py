"""The manifest names Google only when the facts do; Custody's own manifest is recognised as such.

Identity comes from the upstream endpoint and the answer's ``modelVersion``
(``governance.upstream.identity``), wired through ``pipeline.signing.OutputSigning.context``;
whose credentials an image carries comes from what verifies (assertion, Trusted state, our
signing certificate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.auth.principal import Principal
from governance.pipeline import policy_facts
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.response import ResponseSummary
from governance.pipeline.signing import OutputSigning
from governance.pipeline.turn_types import StoredRequest, TurnRequest, TurnState
from governance.policy.decision import Decision
from governance.provenance import signer as signer_module
from governance.provenance.credentials import carries_content_credentials
from governance.provenance.pki import DevPki, ensure_dev_pki
from governance.provenance.signer import FileKeyBackend, OutputSigner
from governance.provenance.types import InputImage
from governance.provenance.verify import _chain, verify_image
from governance.settings import GOOGLE_GEMINI_URL, Settings
from governance.upstream.identity import UpstreamIdentity, identify_upstream
from tests.test_provenance_signing import active_manifest, assertion, make_ctx, make_signer

GOOGLE_VERSION = "gemini-2.5-flash-image-preview-09-2025"
EMULATOR_VERSION = "custody-emulator-0.1 (emulating gemini-2.5-flash-image)"


GL = "generativelanguage.googleapis.com"
G = GOOGLE_VERSION
E = EMULATOR_VERSION


@pytest.mark.parametrize(
    ("base_url", "model_version", "is_emulator", "kind", "host"),
    [
        (f"https://{GL}", G, False, "google", GL),
        ("https://us-central1-aiplatform.googleapis.com", G, False, "google", None),
        ("https://aiplatform.googleapis.com/", None, False, "google", None),
        # Google's endpoint but the emulator's answer, or the emulator flag: the emulator.
        (f"https://{GL}", E, False, "custody-emulator", None),
        (f"https://{GL}", G, True, "custody-emulator", None),
        ("http://127.0.0.1:9000", E, False, "custody-emulator", "127.0.0.1"),
        # Not Google's endpoint, whatever the modelVersion says.
        ("http://127.0.0.1:9000", G, False, "unknown", "127.0.0.1"),
        (f"http://{GL}", G, False, "unknown", None),
        (f"https://{GL}.evil.example", G, False, "unknown", None),
        (f"https://{GL}@evil.example", G, False, "unknown", "evil.example"),
        (f"https://{GL}:8443", G, False, "unknown", None),
        ("https://gemini-proxy.example.net/v1", G, False, "unknown", "gemini-proxy.example.net"),
        ("https://evil-aiplatform.googleapis.com.example", G, False, "unknown", None),
    ],
)
def test_identity_follows_the_endpoint_and_the_model_version(
    base_url: str, model_version: str | None, is_emulator: bool, kind: str, host: str | None
) -> None:
    found = identify_upstream(base_url, is_emulator=is_emulator, model_version=model_version)
    assert found.kind == kind
    if host is not None:
        assert found.host == host


def _turn_context(base_url: str, *, is_emulator: bool, model_version: str | None):  # type: ignore[no-untyped-def]
    """``pipeline.signing.OutputSigning.context`` for one turn against ``base_url``."""
    signing = OutputSigning(
        None,  # type: ignore[arg-type]  # the context needs no signer
        upstream_base_url=base_url,
        is_emulator=is_emulator,
        log_origin=Settings(data_dir=Path("/nonexistent")).log_origin,
        training_mining="notAllowed",
    )
    decision = Decision(
        decision_id="d1",
        path="custody/turn",
        outcome="allow",
        reasons=(),
        obligations={},
        bundle_revision="r1",
        signals={},
        input_masked={},
        elapsed_us=0,
        engine="regopy",
    )
    request = TurnRequest("v1beta", "gemini-2.5-flash-image", "generateContent", b"{}", {}, {})
    state = TurnState(
        request,
        Principal("k1", "acme", "editor@acme", frozenset({"editor"})),
        "t1",
        None,  # type: ignore[arg-type]  # no content is committed here
        parsed=ParsedRequest(body=b"{}", document={}, prompt="teal"),
        stored=StoredRequest("salted-sha256:req", "0" * 64, "salted-sha256:abc", "1" * 64, [], []),
        decision=decision,
        summary=ResponseSummary(model_version=model_version),
        first_index=0,
    )
    return signing.context(state)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def signer(pki: DevPki) -> OutputSigner:
    return make_signer(pki)


def _signed_manifest(signer: OutputSigner, fixtures_dir: Path, ctx) -> dict:  # type: ignore[no-untyped-def,type-arg]
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    parent = InputImage(data, "image/png", "0" * 64, "parent", "in")
    ctx = ctx.__class__(**{**ctx.__dict__, "inputs": [parent]})
    out = signer.sign_output(data, "image/png", ctx)
    return active_manifest(out.data, "image/png", signer.trust_anchors_pem())


def test_google_endpoint_and_google_model_version_give_googles_statement(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    ctx = _turn_context(GOOGLE_GEMINI_URL, is_emulator=False, model_version=GOOGLE_VERSION)
    assert ctx.upstream == UpstreamIdentity("google", "generativelanguage.googleapis.com")
    manifest = _signed_manifest(signer, fixtures_dir, ctx)
    custody = assertion(manifest, "com.custody.turn")
    assert custody["generator"] == "google-gemini" and custody["emulator"] is False
    assert custody["synthid"]["provider"] == "Google"
    assert custody["synthid"]["statement"].startswith("Google states that images from this model")
    edited = assertion(manifest, "c2pa.actions.v2")["actions"][1]
    assert edited["softwareAgent"] == {"name": "gemini-2.5-flash-image", "version": GOOGLE_VERSION}


def test_an_unknown_upstream_is_named_by_its_host_with_no_watermark_claim(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    ctx = _turn_context(
        "https://gemini-proxy.example.net", is_emulator=False, model_version=GOOGLE_VERSION
    )
    manifest = _signed_manifest(signer, fixtures_dir, ctx)
    custody = assertion(manifest, "com.custody.turn")
    assert custody["upstream"] == {"kind": "unknown", "host": "gemini-proxy.example.net"}
    assert (
        custody["generator"] != "google-gemini"
        and "gemini-proxy.example.net" in (custody["generator"])
    )
    assert custody["synthid"] == {
        "statement": "not stated: the upstream gemini-proxy.example.net is not Google's endpoint;"
        " Custody makes no watermark claim",
        "verified": False,
    }
    for action in assertion(manifest, "c2pa.actions.v2")["actions"]:
        if "softwareAgent" in action:
            assert action["softwareAgent"]["name"] == "model served by gemini-proxy.example.net"


def test_the_emulators_model_version_behind_any_url_is_the_emulator(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    ctx = _turn_context("http://127.0.0.1:9000", is_emulator=False, model_version=EMULATOR_VERSION)
    custody = assertion(_signed_manifest(signer, fixtures_dir, ctx), "com.custody.turn")
    assert custody["emulator"] is True and custody["generator"].startswith("custody-emulator")
    assert "no SynthID" in custody["synthid"]["statement"] and "provider" not in custody["synthid"]


def _earlier_output(signer: OutputSigner, fixtures_dir: Path, turn: str) -> bytes:
    photo = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    parent = InputImage(photo, "image/png", "0" * 64, "parent", "in")
    return signer.sign_output(photo, "image/png", make_ctx([parent], turn_id=turn)).data


def test_an_upstream_echo_of_an_earlier_custody_output_is_one_ingredient(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    earlier = _earlier_output(signer, fixtures_dir, "turn-a")
    parent = InputImage(earlier, "image/png", "1" * 64, "parent", "input 1 (image/png)")
    out = signer.sign_output(earlier, "image/png", make_ctx([parent], turn_id="turn-b"))
    assert out.upstream_had_credentials is False and out.upstream_credentials == "custody"
    (state,) = out.ingredient_states
    assert state.title == "earlier Custody output (turn turn-a)"
    assert (state.relationship, state.credentials, state.custody_turn) == (
        "parentOf",
        "custody",
        "turn-a",
    )
    assert state.also_input == "parent"
    result = verify_image(out.data, "image/png", signer.trust_anchors_pem())
    assert result.state == "Trusted"
    assert [(link.depth, link.title) for link in result.ingredients] == [
        (1, "earlier Custody output (turn turn-a)"),
        (2, "parent: in"),
    ]
    assert result.custody is not None and result.custody["upstream_credentials_kind"] == "custody"


def test_an_input_that_is_an_earlier_custody_output_is_named_so(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    earlier = _earlier_output(signer, fixtures_dir, "turn-a")
    fresh = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    parent = InputImage(earlier, "image/png", "1" * 64, "parent", "input 1 (image/png)")
    out = signer.sign_output(fresh, "image/jpeg", make_ctx([parent], turn_id="turn-b"))
    assert out.upstream_credentials == "none"
    (state,) = out.ingredient_states
    assert state.title == "parent: earlier Custody output (turn turn-a)"
    assert (state.credentials, state.custody_turn, state.state) == ("custody", "turn-a", "Trusted")


def test_a_forged_custody_label_is_not_taken_for_ours(
    pki: DevPki, fixtures_dir: Path, tmp_path: Path
) -> None:
    """Another signer writing ``com.custody.turn`` — even under an anchor we trust — is not us."""
    forger_pki = ensure_dev_pki(tmp_path / "forger")
    forged = _earlier_output(make_signer(forger_pki), fixtures_dir, "turn-forged")
    anchors = pki.root_cert.read_text() + forger_pki.root_cert.read_text()
    backend = FileKeyBackend(pki.signer_chain.read_bytes(), pki.signer_key.read_bytes())
    ours = OutputSigner(backend, anchors, development=True)
    assert verify_image(forged, "image/png", anchors).state == "Trusted"
    out = ours.sign_output(forged, "image/png", make_ctx([]))
    assert out.upstream_credentials == "provider" and out.upstream_had_credentials is True
    (state,) = out.ingredient_states
    assert state.credentials == "provider" and "earlier Custody output" not in state.title
    as_input = InputImage(forged, "image/png", "2" * 64, "parent", "input 1 (image/png)")
    fresh = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    (state,) = ours.sign_output(fresh, "image/jpeg", make_ctx([as_input])).ingredient_states
    assert state.credentials == "other" and state.title == "parent: input 1 (image/png)"


def test_policy_and_signing_use_one_check_for_content_credentials(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    earlier = _earlier_output(signer, fixtures_dir, "turn-a")
    credentialed = (fixtures_dir / "credentialed" / "C.jpg").read_bytes()
    photo = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    # A plain PNG whose pixels happen to spell both words: a byte scan says yes, the structure no.
    decoy = photo[:-12] + b"\x00\x00\x00\x08tEXtjumbc2pa\x00\x00\x00\x00" + photo[-12:]
    assert carries_content_credentials(earlier) and carries_content_credentials(credentialed)
    assert not carries_content_credentials(decoy)
    # One function answers for both: the policy facts and the signer hold the same object.
    assert policy_facts.carries_content_credentials is signer_module.carries_content_credentials


def test_the_chain_shows_a_shared_manifest_once() -> None:
    """Two ingredients naming one manifest (and a credential-less repeat) are listed once."""
    manifests = {
        "top": {
            "ingredients": [
                {"title": "earlier", "relationship": "parentOf", "active_manifest": "m1"},
                {"title": "echo", "relationship": "inputTo", "active_manifest": "m1"},
                {"title": "older", "relationship": "inputTo", "active_manifest": "m0"},
            ]
        },
        "m1": {
            "ingredients": [
                {"title": "older", "relationship": "parentOf", "active_manifest": "m0"},
                {"title": "photo", "relationship": "inputTo"},
                {"title": "photo", "relationship": "inputTo"},
            ]
        },
        "m0": {"ingredients": [{"title": "photo", "relationship": "parentOf"}]},
    }
    links = [(link.depth, link.title, link.manifest) for link in _chain(manifests, "top", {})]
    assert links == [
        (1, "earlier", "m1"),
        (2, "photo", None),
        (1, "older", "m0"),
        (2, "photo", None),
    ]


def test_a_hidden_duplicate_still_taints_its_parent() -> None:
    manifests = {
        "top": {
            "ingredients": [
                {"title": "a", "relationship": "parentOf", "active_manifest": "m1", "label": "i1"},
                {"title": "b", "relationship": "inputTo", "active_manifest": "m2", "label": "i2"},
            ]
        },
        "m1": {"ingredients": [{"title": "bad", "active_manifest": "mx", "label": "ix"}]},
        "m2": {"ingredients": [{"title": "bad again", "active_manifest": "mx", "label": "iy"}]},
        "mx": {},
    }
    failure = {"code": "claimSignature.mismatch"}
    manifests["m1"]["ingredients"][0]["validation_status"] = [failure]
    manifests["m2"]["ingredients"][0]["validation_status"] = [failure]
    links = _chain(manifests, "top", {})
    assert [(link.title, link.state) for link in links] == [
        ("a", "Invalid"),
        ("bad", "Invalid"),
        ("b", "Invalid"),
    ]
    assert links[2].reasons == ["its ingredient 'bad again' is Invalid"]
