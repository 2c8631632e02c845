"""A policy bundle: the Rego modules and data files of one policy directory, and its revision.

Layout follows OPA's own loader, so ``opa run --server policies/`` and ``opa test policies/``
read the same files: every ``*.rego`` file is a module; every file named ``data.json`` is mounted
at its directory path (``custody/tenants/data.json`` → ``data.custody.tenants``).

Revision: SHA-256 over the sorted list of ``<relative path>\\n<sha256 hex of the file bytes>\\n``
lines of every module and data file (tests included: they are part of what was reviewed).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_FILE = "data.json"
TEST_SUFFIX = "_test.rego"
EMPTY_REVISION = hashlib.sha256(b"").hexdigest()
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)


class BundleError(Exception):
    """The policy directory cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class PolicyBundle:
    """The files of one policy directory, parsed enough to hand to an engine."""

    root: Path
    modules: dict[str, str]  # relative path → Rego source (tests excluded)
    tests: dict[str, str]  # relative path → Rego source of *_test.rego files
    data: dict[str, Any]  # every data.json merged at its mount point
    data_files: dict[str, Any]  # relative path → the JSON of that file
    file_hashes: dict[str, str] = field(default_factory=dict)  # relative path → sha256 hex
    revision: str = EMPTY_REVISION

    def data_at(self, *path: str, default: Any = None) -> Any:
        """The merged data at ``path`` (``("custody", "tenants")``), or ``default``."""
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node


def policy_files(root: Path) -> list[Path]:
    """Every module and data file under ``root``, sorted; hidden directories are skipped."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and (p.suffix == ".rego" or p.name == DATA_FILE)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def revision_of(file_hashes: dict[str, str]) -> str:
    """The bundle revision of a set of files, from their relative paths and SHA-256 digests."""
    outer = hashlib.sha256()
    for rel in sorted(file_hashes):
        outer.update(f"{rel}\n{file_hashes[rel]}\n".encode())
    return outer.hexdigest()


def scan_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap change detector: (relative path, mtime ns, size) of every policy file."""
    out = []
    for p in policy_files(root):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


def load_bundle(root: Path) -> PolicyBundle:
    """Read and hash every policy file under ``root``; ``BundleError`` if it cannot be used."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"the policy directory {root} does not exist")
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    data: dict[str, Any] = {}
    data_files: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    for path in policy_files(root):
        rel = path.relative_to(root).as_posix()
        raw = path.read_bytes()
        hashes[rel] = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"{rel} is not UTF-8 text ({exc})") from exc
        if path.suffix == ".rego":
            if not _PACKAGE.search(text):
                raise BundleError(f"{rel} has no package declaration")
            (tests if path.name.endswith(TEST_SUFFIX) else modules)[rel] = text
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{rel} is not valid JSON: {exc}") from exc
        data_files[rel] = value
        mount = [part for part in Path(rel).parent.parts if part]
        _merge_at(data, mount, value, rel)
    if not modules:
        raise BundleError(f"the policy directory {root} holds no Rego module")
    return PolicyBundle(root, modules, tests, data, data_files, hashes, revision_of(hashes))


def revision_of_dir(root: Path) -> str:
    """The revision of whatever policy files ``root`` holds now (the empty digest if none)."""
    return revision_of(
        {p.relative_to(root).as_posix(): _sha256_file(p) for p in policy_files(Path(root))}
    )


def _sha256_file(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def package_of(source: str) -> str | None:
    """The package a Rego module declares (``custody.decision_test``), or None."""
    match = _PACKAGE.search(source)
    return match.group(1) if match else None


def _merge_at(tree: dict[str, Any], mount: list[str], value: Any, rel: str) -> None:
    node = tree
    for key in mount[:-1] if mount else []:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BundleError(f"{rel} is mounted under a path that already holds a value")
    if not mount:
        if not isinstance(value, dict):
            raise BundleError(f"{rel} at the policy root must hold a JSON object")
        _deep_merge(node, value, rel)
        return
    last = mount[-1]
    if last in node:
        if isinstance(node[last], dict) and isinstance(value, dict):
            _deep_merge(node[last], value, rel)
            return
        raise BundleError(f"{rel} overlaps data already mounted at {'/'.join(mount)}")
    node[last] = value


def _deep_merge(into: dict[str, Any], value: dict[str, Any], rel: str) -> None:
    for key, item in value.items():
        if key in into:
            if isinstance(into[key], dict) and isinstance(item, dict):
                _deep_merge(into[key], item, rel)
                continue
            raise BundleError(f"{rel} redefines data key {key!r}")
        into[key] = item
