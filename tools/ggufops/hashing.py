"""sha256, once: the pattern of a digest and a file's digest read in bounded chunks."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, streamed: memory stays at one chunk."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
