"""A DEVELOPMENT signing PKI, made on first run: root CA → intermediate CA → end-entity signer.

Default C2PA verifiers reject self-signed signers and signers without the right extended key
usages, so this mirrors a production chain: ES256 (P-256) keys, an end-entity certificate with key
usage digitalSignature and EKUs emailProtection + C2PA claimSigning + documentSigning, AKI/SKI on
every certificate. Private keys are created with mode 0600 (before the key is written), in a
directory of mode 0700. Every name says DEVELOPMENT: these
credentials prove nothing outside a test bench; production uses the organisation's certificates.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from storage.private_files import make_private_dir

C2PA_CLAIM_SIGNING = ObjectIdentifier("1.3.6.1.4.1.62558.2.1")
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")

ROOT_CERT = "dev-root-ca.pem"
ROOT_KEY = "dev-root-ca.key"
INTERMEDIATE_CERT = "dev-intermediate-ca.pem"
INTERMEDIATE_KEY = "dev-intermediate-ca.key"
SIGNER_CHAIN = "dev-signer-chain.pem"  # end-entity certificate, then the intermediate
SIGNER_KEY = "dev-signer.key"


@dataclass(frozen=True)
class DevPki:
    """Paths of the development PKI's files."""

    folder: Path

    @property
    def root_cert(self) -> Path:
        return self.folder / ROOT_CERT

    @property
    def signer_chain(self) -> Path:
        return self.folder / SIGNER_CHAIN

    @property
    def signer_key(self) -> Path:
        return self.folder / SIGNER_KEY


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "Custody DEVELOPMENT (not for production)"
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT: tighten first
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None,
    days: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,  # CAs sign certificates (and CRLs); the signer only signs claims
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = builder.add_extension(usage, critical=True)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.EMAIL_PROTECTION, C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def ensure_dev_pki(folder: Path) -> DevPki:
    """The development PKI in ``folder``, created on first use and reused afterwards."""
    pki = DevPki(folder)
    if pki.root_cert.exists() and pki.signer_chain.exists() and pki.signer_key.exists():
        return pki
    make_private_dir(folder)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("Custody DEVELOPMENT Root CA")
    inter_name = _name("Custody DEVELOPMENT Intermediate CA")
    root = _cert(root_name, root_name, root_key, root_key, ca=True, path_length=1, days=3650)
    inter = _cert(inter_name, root_name, inter_key, root_key, ca=True, path_length=0, days=1825)
    signer = _cert(
        _name("Custody DEVELOPMENT Content Credentials signer"),
        inter_name,
        signer_key,
        inter_key,
        ca=False,
        path_length=None,
        days=365,
    )
    _write_key(folder / ROOT_KEY, root_key)
    _write_key(folder / INTERMEDIATE_KEY, inter_key)
    _write_key(pki.signer_key, signer_key)
    (folder / INTERMEDIATE_CERT).write_bytes(_pem(inter))
    pki.signer_chain.write_bytes(_pem(signer) + _pem(inter))
    pki.root_cert.write_bytes(_pem(root))  # written last: its presence means "complete"
    return pki
