"""Files and directories only their owner may read: the database, keys, blobs.

Custody's state holds prompts, images and signing keys, so every file it creates is 0600 and every
directory 0700, whatever the process umask. A file is created with its mode (``os.open(...,
0o600)``) before a byte is written, never tightened afterwards; a directory is chmod-ed right after
``mkdir`` because ``mkdir``'s mode is filtered by the umask. Directories that already existed are
left alone (the operator chose them), except those Custody made itself.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing directory is kept."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(folder, DIR_MODE)
    return path


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True when this call made it.

    An existing file that others may read (made by an older Custody) is tightened to 0600.
    """
    path = Path(path)
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten(path)
        return False
    os.close(fd)
    os.chmod(path, FILE_MODE)
    return True


def tighten(path: Path) -> None:
    """Drop group and other permissions from an existing file of ours."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
