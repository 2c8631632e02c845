"""``custody doctor``: what this installation resolves to, without secrets, and whether it is there.

It prints the settings in force and where each came from (env, file, argument, default), the
upstream in use, the data dir and database, the ledger's size, root and latest checkpoint, the
note verifier key, the C2PA trust anchors and signer certificate, and the policy revision. It
opens state read-only (``create=False``): a doctor that created an installation to examine would
hide exactly the mistake it is for. Exit status 1 when there is no installation where it looked.
Secrets are never printed: for the upstream key only whether it is set and from where.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.settings import GOOGLE_GEMINI_URL, Settings, config_file

if TYPE_CHECKING:  # the report's parts import what they read: building the parser stays cheap
    from cryptography import x509


def _certificate(cert: x509.Certificate) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "subject": cert.subject.rfc4514_string(),
        "sha256": hashlib.sha256(der).hexdigest(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _upstream(settings: Settings) -> dict[str, Any]:
    key = settings.upstream_key()
    if settings.uses_emulator and not settings.upstream_base_url:
        target = "built-in emulator (in process, on a loopback port)"
    else:
        target = settings.upstream_base_url or GOOGLE_GEMINI_URL
    return {
        "target": target,
        "emulator": settings.uses_emulator,
        "key_set": bool(key.value),
        "key_source": key.source or None,
        "ignored_sdk_variables": settings.ignored_sdk_key_variables,
    }


def _provenance(settings: Settings) -> dict[str, Any]:
    from cryptography import x509

    from governance.state import trust_anchors_pem

    anchors_pem = trust_anchors_pem(settings)
    anchors = (
        [_certificate(c) for c in x509.load_pem_x509_certificates(anchors_pem.encode())]
        if anchors_pem.strip()
        else []
    )
    if settings.signing_cert_file is not None:
        chain_path: Path = Path(settings.signing_cert_file)
        mode = "configured certificate"
    else:
        chain_path = settings.data_dir / "pki" / "dev-signer-chain.pem"
        mode = "DEVELOPMENT PKI"
    signer = None
    if chain_path.is_file():
        signer = _certificate(x509.load_pem_x509_certificates(chain_path.read_bytes())[0])
    return {
        "mode": mode,
        "trust_anchors": anchors,
        "signer": signer,
        "signer_chain": str(chain_path),
    }


def _policy(settings: Settings) -> dict[str, Any]:
    from governance.policy.bundle import BundleError, load_bundle

    try:
        revision = load_bundle(Path(settings.policy_dir)).revision
    except BundleError as exc:
        return {"dir": str(settings.policy_dir), "revision": None, "error": str(exc)}
    engine = f"OPA at {settings.opa_url}" if settings.opa_url else "in-process (regopy)"
    return {"dir": str(settings.policy_dir), "revision": revision, "engine": engine}


def _ledger(settings: Settings) -> dict[str, Any]:
    from sqlalchemy import text

    from governance.state import open_state

    state = open_state(settings, create=False)
    try:
        ledger = state.ledger
        size = ledger.size()
        with ledger.read_engine.connect() as conn:
            row = conn.execute(
                text("SELECT size, root FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
            ).first()
        checkpoint = None if row is None else {"size": int(row[0]), "root": bytes(row[1]).hex()}
        return {
            "origin": settings.log_origin,
            "size": size,
            "root": ledger.root(size).hex(),
            "latest_checkpoint": checkpoint,
            "verifier_key": state.signer.verifier_key(),
            "note_key_file": str(settings.note_key_path),
        }
    finally:
        state.close()


def _unread_config_here(in_force: Path | None) -> str | None:
    """A ``custody.toml`` in the current directory, which Custody never reads, if there is one."""
    here = Path.cwd() / "custody.toml"
    return str(here) if here.is_file() and here != in_force else None


def diagnose(settings: Settings) -> dict[str, Any]:
    """The whole report as a JSON-able dict; ``installation`` says whether one was found."""
    from governance.state import StateError

    path = config_file()
    report: dict[str, Any] = {
        "config_file": str(path) if path else None,
        "unread_config_file": _unread_config_here(path),
        "data_dir": str(settings.data_dir),
        "database_url": settings.masked_database_url,
        "blob_store": settings.blob_store,
        "listen": f"http://{settings.host}:{settings.port}",
        "upstream": _upstream(settings),
        "provenance": _provenance(settings),
        "policy": _policy(settings),
        "settings": settings.public_dict(),
        "sources": settings.setting_sources(),
    }
    try:
        report["ledger"] = _ledger(settings)
        report["installation"] = {"found": True, "problem": None}
    except StateError as exc:
        report["ledger"] = None
        report["installation"] = {"found": False, "problem": str(exc)}
    return report


def _lines(report: dict[str, Any]) -> list[str]:
    src = report["sources"]
    up = report["upstream"]
    out = [
        f"config file:   {report['config_file'] or '(none: environment and defaults only)'}",
        *(
            [f"               {unread} is not read; set CUSTODY_CONFIG={unread} to use it"]
            if (unread := report["unread_config_file"])
            else []
        ),
        f"data dir:      {report['data_dir']}  [{src['data_dir']}]",
        f"database:      {report['database_url']}  [{src['database_url']}]",
        f"blob store:    {report['blob_store']}  [{src['blob_store']}]",
        f"listen:        {report['listen']}",
        f"upstream:      {up['target']}",
        "upstream key:  "
        + (f"set, from {up['key_source']}" if up["key_set"] else "not set (emulator unless a URL)"),
    ]
    for name in up["ignored_sdk_variables"]:
        out.append(f"               {name} is set in this shell; Custody never uses it upstream")
    ledger = report["ledger"]
    if ledger is None:
        out.append(f"installation:  MISSING — {report['installation']['problem']}")
    else:
        cp = ledger["latest_checkpoint"]
        out += [
            f"ledger:        {ledger['size']} entries, root {ledger['root']}",
            f"  origin:      {ledger['origin']}",
            "  checkpoint:  "
            + (f"size {cp['size']}, root {cp['root']}" if cp else "none issued yet"),
            f"  verifier:    {ledger['verifier_key']}",
        ]
    prov = report["provenance"]
    out.append(f"C2PA signing:  {prov['mode']}")
    for anchor in prov["trust_anchors"]:
        out.append(f"  anchor:      {anchor['subject']} (SHA-256 {anchor['sha256']})")
    if not prov["trust_anchors"]:
        out.append("  anchor:      none")
    signer = prov["signer"]
    out.append(
        f"  signer:      {signer['subject']}, expires {signer['not_after']}"
        if signer
        else f"  signer:      none yet ({prov['signer_chain']} is created by `custody serve`)"
    )
    changed = [
        f"  {name} = {json.dumps(value)}  [{src[name]}]"
        for name, value in sorted(report["settings"].items())
        if src.get(name, "default") != "default"
    ]
    out += ["settings not at their default:", *changed] if changed else []
    pol = report["policy"]
    revision = pol["revision"] or f"UNREADABLE: {pol.get('error')}"
    out.append(f"policy:        {pol['dir']}  [{src['policy_dir']}], revision {revision}")
    if pol.get("engine"):
        out.append(f"  engine:      {pol['engine']}")
    return out


def _run(args: argparse.Namespace) -> int:
    report = diagnose(Settings())
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(_lines(report)))
    return 0 if report["installation"]["found"] else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody doctor``."""
    doctor = sub.add_parser(
        "doctor", help="print the resolved configuration and the state of this installation"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_run)
