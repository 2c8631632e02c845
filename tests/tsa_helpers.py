"""A local RFC 3161 TSA for tests: a tiny HTTP server whose replies ``openssl ts -reply`` makes.

The TSA has its own PKI (a root, an intermediate, the TSA certificate with the critical
``timeStamping`` extended key usage), made here with ``cryptography``; the reply carries the
TSA certificate and the intermediate (see ``start_tsa`` on their order).
"""

from __future__ import annotations

import datetime as dt
import http.server
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    tsa: bool = False,
    padding: int = 0,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if padding:
        blob = b"p" * padding  # an OCTET STRING of ``padding`` bytes (< 64 KiB)
        value = b"\x04\x82" + len(blob).to_bytes(2, "big") + blob
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.32473.1"), value),
            critical=False,
        )
    if tsa:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


CONFIG = """[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {dir}
serial = {dir}/serial
crypto_device = builtin
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass
class LocalTsa:
    url: str
    folder: Path
    root_pem: Path
    chain_pem: Path  # TSA certificate, then the intermediate
    server: http.server.ThreadingHTTPServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_tsa(folder: Path) -> LocalTsa:
    folder.mkdir(parents=True, exist_ok=True)
    root_key, inter_key, tsa_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test TSA Root", root_key, "Test TSA Root", root_key, ca=True)
    # The token's certificates are a DER SET OF, which must be sorted by encoding; openssl writes
    # them in the order given (signer, chain) and rfc3161-client refuses an unsorted set. A
    # padded intermediate encodes longer than the TSA certificate, so signer-first is sorted.
    inter = _cert(
        "Test TSA Intermediate", inter_key, "Test TSA Root", root_key, ca=True, padding=400
    )
    tsa = _cert("Test TSA", tsa_key, "Test TSA Intermediate", inter_key, ca=False, tsa=True)
    assert tsa.public_bytes(serialization.Encoding.DER) < inter.public_bytes(
        serialization.Encoding.DER
    )
    (folder / "root.pem").write_bytes(_pem(root))
    (folder / "tsa.pem").write_bytes(_pem(tsa))
    (folder / "inter.pem").write_bytes(_pem(inter))
    (folder / "chain.pem").write_bytes(_pem(tsa) + _pem(inter))
    (folder / "tsa.key").write_bytes(
        tsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "serial").write_text("01\n")
    (folder / "tsa.cnf").write_text(CONFIG.format(dir=folder))
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers["content-length"]))
            with lock, tempfile.TemporaryDirectory() as tmp:
                q, r = Path(tmp) / "q.tsq", Path(tmp) / "r.tsr"
                q.write_bytes(query)
                done = subprocess.run(
                    [
                        "openssl",
                        "ts",
                        "-reply",
                        "-config",
                        str(folder / "tsa.cnf"),
                        "-queryfile",
                        str(q),
                        "-inkey",
                        str(folder / "tsa.key"),
                        "-signer",
                        str(folder / "tsa.pem"),
                        "-chain",
                        str(folder / "inter.pem"),
                        "-out",
                        str(r),
                    ],
                    capture_output=True,
                    timeout=30,
                )
                body = r.read_bytes() if done.returncode == 0 else done.stderr
            self.send_response(200 if done.returncode == 0 else 500)
            self.send_header("content-type", "application/timestamp-reply")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    ).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    return LocalTsa(url, folder, folder / "root.pem", folder / "chain.pem", server)


def openssl_verify(data: Path, token: Path, tsa: LocalTsa) -> subprocess.CompletedProcess[str]:
    """``openssl ts -verify`` of ``token`` over the file ``data`` under the TSA's root."""
    return subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-data",
            str(data),
            "-in",
            str(token),
            "-CAfile",
            str(tsa.root_pem),
            "-untrusted",
            str(tsa.chain_pem),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
