"""RFC 3161 timestamps of evidence bundles (``SHA256SUMS.tsr``) and checkpoints, and their check.

``TsaClient`` asks the TSA of ``CUSTODY_EVIDENCE_TSA_URL`` for a token over some bytes (SHA-256
imprint, a nonce, the TSA's certificate in the reply) and checks the reply before it is kept:
granted, the imprint and the nonce it asked for. ``verify_token`` checks a token offline with
``rfc3161-client`` against the TSA root a recipient trusts; ``openssl ts -verify`` checks the same
token (VERIFY.md).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from governance.evidence import layout

if TYPE_CHECKING:
    from governance.evidence.verify import BundleReport, ExtraCheck, _Bundle


class TimestampError(RuntimeError):
    """The TSA did not give a usable token, or a token does not verify."""


class TsaClient:
    """An RFC 3161 client of one TSA (HTTP POST of ``application/timestamp-query``)."""

    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def timestamp(self, data: bytes) -> bytes:
        """The DER timestamp response over ``data`` (its SHA-256), checked."""
        request = (
            TimestampRequestBuilder()
            .data(data)
            .hash_algorithm(HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        try:
            resp = httpx.post(
                self.url,
                content=request.as_bytes(),
                headers={"content-type": "application/timestamp-query"},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise TimestampError(f"the TSA at {self.url} did not answer: {exc}") from exc
        if resp.status_code != 200:
            raise TimestampError(f"the TSA at {self.url} answered HTTP {resp.status_code}")
        try:
            token = decode_timestamp_response(resp.content)
        except ValueError as exc:
            raise TimestampError(f"the TSA's answer is not an RFC 3161 response: {exc}") from exc
        if PKIStatus(token.status) != PKIStatus.GRANTED:
            raise TimestampError(f"the TSA refused the request (status {token.status})")
        if token.tst_info.message_imprint.message != hashlib.sha256(data).digest():
            raise TimestampError("the TSA's token is over other data than was sent")
        if token.tst_info.nonce != request.nonce:
            raise TimestampError("the TSA's token does not carry the nonce that was sent")
        return resp.content


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TimestampError(f"the TSA root is not a PEM certificate: {exc}") from exc


def verify_token(token: bytes, data: bytes, root_pem: bytes) -> datetime:
    """When the TSA under ``root_pem`` says ``data`` existed; TimestampError if it does not
    verify. Certificates in the token other than the signer's serve as intermediates."""
    try:
        response = decode_timestamp_response(token)
    except ValueError as exc:
        raise TimestampError(f"not an RFC 3161 timestamp response: {exc}") from exc
    builder = VerifierBuilder()
    roots = _certificates(root_pem)
    for root in roots:
        builder = builder.add_root_certificate(root)
    root_der = {r.public_bytes(Encoding.DER) for r in roots}
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if der not in root_der and cert.subject != cert.issuer:
            try:
                cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
                continue  # the signer's certificate (it carries the timeStamping usage)
            except x509.ExtensionNotFound:
                builder = builder.add_intermediate_certificate(cert)
    try:
        builder.build().verify_message(response, data)
    except (VerificationError, ValueError) as exc:
        raise TimestampError(f"the timestamp does not verify: {exc}") from exc
    return response.tst_info.gen_time


def timestamp_check(root_pem: bytes | None) -> ExtraCheck:
    """The verify-bundle check of ``SHA256SUMS.tsr`` (an ``ExtraCheck``)."""

    def check(bundle: _Bundle, report: BundleReport) -> None:
        _check_checkpoint_token(bundle, report)
        present = bundle.has(layout.TIMESTAMP)
        if not present:
            if root_pem is not None:
                report.fault(
                    layout.TIMESTAMP, None, "you asked for a timestamp, but the bundle has none"
                )
            return
        token = bundle.read(layout.TIMESTAMP)
        sums = bundle.read(layout.SUMS)
        if token is None or sums is None:
            return
        if root_pem is None:
            report.notes.append(
                f"{layout.TIMESTAMP} is present but not checked: give --tsa-root with the TSA's"
                " root certificate"
            )
            return
        try:
            when = verify_token(token, sums, root_pem)
        except TimestampError as exc:
            report.fault(layout.TIMESTAMP, None, f"{exc} (over {layout.SUMS})")
            return
        report.count("timestamp")
        report.notes.append(f"the TSA timestamped {layout.SUMS} at {when.isoformat()}")

    def _check_checkpoint_token(bundle: _Bundle, report: BundleReport) -> None:
        if not bundle.has(layout.CHECKPOINT_TIMESTAMP) or root_pem is None:
            return
        token = bundle.read(layout.CHECKPOINT_TIMESTAMP)
        note = bundle.text(layout.CHECKPOINT)
        if token is None or note is None:
            return
        from storage.ledger.note import NoteError, split_note

        try:
            body = split_note(note)[0].encode()
            when = verify_token(token, body, root_pem)
        except (TimestampError, NoteError) as exc:
            report.fault(layout.CHECKPOINT_TIMESTAMP, None, f"{exc} (over {layout.CHECKPOINT})")
            return
        report.count("timestamp")
        report.notes.append(f"the TSA timestamped the checkpoint at {when.isoformat()}")

    return check
