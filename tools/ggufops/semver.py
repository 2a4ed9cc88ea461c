"""Semantic versions (semver.org 2.0.0), parsed and ordered."""

from __future__ import annotations

import re
from dataclasses import dataclass

SEMVER_PATTERN = (
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_SEMVER = re.compile(rf"^{SEMVER_PATTERN}$")


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __le__(self, other: SemVer) -> bool:
        return self._key() <= other._key()


def is_semver(text: str) -> bool:
    return bool(_SEMVER.match(text))


def parse(text: str) -> SemVer:
    m = _SEMVER.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a semantic version X.Y.Z")
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return SemVer(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)


def sort_key(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    return parse(text)._key()
