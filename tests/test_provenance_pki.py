"""The development PKI: the chain and usages default C2PA verifiers require, made once."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from governance.provenance.pki import C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING, ensure_dev_pki
from governance.provenance.signer import OutputSigner
from governance.settings import Settings


def test_development_pki_has_the_chain_and_usages_verifiers_require(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki")
    signer_cert, intermediate = x509.load_pem_x509_certificates(pki.signer_chain.read_bytes())
    root = x509.load_pem_x509_certificate(pki.root_cert.read_bytes())
    assert signer_cert.issuer == intermediate.subject and intermediate.issuer == root.subject
    assert signer_cert.issuer != signer_cert.subject, "never self-signed"
    eku = set(signer_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.EMAIL_PROTECTION, C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING} <= eku
    usage = signer_cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not signer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert, issuer in ((signer_cert, intermediate), (intermediate, root)):
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
    for cert in (signer_cert, intermediate, root):
        assert "DEVELOPMENT" in cert.subject.rfc4514_string()
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
    keys = sorted(p.name for p in pki.folder.glob("*.key"))
    assert keys and all("dev" in k for k in keys)
    for key in pki.folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_pki_is_made_once_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = OutputSigner.from_settings(settings).trust_anchors_pem()
    chain = (tmp_path / "pki" / "dev-signer-chain.pem").read_bytes()
    second = OutputSigner.from_settings(settings).trust_anchors_pem()
    assert first == second and "BEGIN CERTIFICATE" in first
    assert (tmp_path / "pki" / "dev-signer-chain.pem").read_bytes() == chain
