"""S3 settings of a DVC remote, read from .dvc/config, .dvc/config.local and the environment.

DVC's config files are INI files written by configobj: sections such as
`['remote "models"']` with indented `key = value` lines. They are parsed here with
configparser (importing dvc takes seconds). Precedence, lowest first: .dvc/config,
.dvc/config.local, then AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from
the environment for the credentials.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ggufops.atomic import atomic_open
from ggufops.errors import S3ConfigError

DEFAULT_REMOTE = "models"
CONFIG = ".dvc/config"
CONFIG_LOCAL = ".dvc/config.local"
ENV_KEYS = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}

Sections = dict[str, dict[str, str]]


@dataclass(frozen=True)
class S3Settings:
    """Where a remote's objects live and how to sign requests to it."""

    remote: str
    url: str
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None

    def key(self, relkey: str) -> str:
        """Object key of `relkey` (e.g. files/md5/ab/cd...) under the remote's prefix."""
        return f"{self.prefix}/{relkey}" if self.prefix else relkey

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def where(self) -> str:
        """The endpoint for messages: the URL if set, else the AWS default."""
        return self.endpoint_url or "AWS S3 (no endpointurl set)"


def section_name(remote: str) -> str:
    return f'remote "{remote}"'


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_config_text(text: str, source: str) -> Sections:
    """DVC (configobj) INI text -> {section: {key: value}}; quotes around names removed."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise S3ConfigError(f"{source}: cannot parse DVC config ({first}); fix the file") from None
    return {
        _unquote(name): {k: _unquote(v) for k, v in parser.items(name, raw=True)}
        for name in parser.sections()
    }


def read_config_file(path: Path) -> Sections:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise S3ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config_text(text, str(path))


def merged_config(root: Path) -> Sections:
    """.dvc/config overlaid with .dvc/config.local (per key)."""
    merged: Sections = {}
    for rel in (CONFIG, CONFIG_LOCAL):
        for name, values in read_config_file(root / rel).items():
            merged.setdefault(name, {}).update(values)
    return merged


def resolve(
    root: Path, remote: str = DEFAULT_REMOTE, environ: Mapping[str, str] | None = None
) -> S3Settings:
    """The S3 settings of DVC remote `remote` in the repository at `root`."""
    env = os.environ if environ is None else environ
    values = merged_config(root).get(section_name(remote))
    if values is None:
        raise S3ConfigError(
            f"{root / CONFIG}: no DVC remote {remote!r}; add it with "
            f"`dvc remote add {remote} s3://models` "
            f"(and `dvc remote modify {remote} endpointurl URL`)"
        )
    bucket, prefix = _split_url(root, remote, values.get("url", ""))
    creds = {k: env.get(var) or values.get(k) for k, var in ENV_KEYS.items()}
    return S3Settings(
        remote=remote,
        url=values["url"],
        bucket=bucket,
        prefix=prefix,
        endpoint_url=values.get("endpointurl") or None,
        region=values.get("region") or None,
        profile=values.get("profile") or None,
        **creds,
    )


def _split_url(root: Path, remote: str, url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise S3ConfigError(
            f"{root / CONFIG}: remote {remote!r} has url {url!r}, not s3://bucket[/prefix]; "
            f"fix it with `dvc remote modify {remote} url s3://BUCKET`"
        )
    return bucket, prefix.strip("/")


def render_config(sections: Sections) -> str:
    """{section: {key: value}} -> DVC's own INI style."""
    lines: list[str] = []
    for name, values in sections.items():
        header = f"['{name}']" if " " in name else f"[{name}]"
        lines.append(header)
        lines.extend(f"    {key} = {value}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def update_local_config(root: Path, remote: str, values: Mapping[str, str]) -> Path:
    """Set keys of remote `remote` in .dvc/config.local (mode 0600, atomic); keep the rest."""
    path = root / CONFIG_LOCAL
    sections = read_config_file(path)
    sections.setdefault(section_name(remote), {}).update(values)
    with atomic_open(path, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(render_config(sections))
    return path
