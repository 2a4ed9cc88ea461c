"""Partial rollback: pin a version for the hosts whose labels match a selector, as a
`segments:` entry of the model in the environment file (rollout.py reads it)."""

from __future__ import annotations

import io
from collections.abc import Mapping

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ggufops.errors import EnvironmentFileError
from ggufops.gitops import envfile


def set_segment(text: str, model: str, selector: Mapping[str, str], version: str,
                where: str) -> str:
    """`text` with hosts matching `selector` running model@version (first segment, so it
    wins over older ones; one with the same selector is replaced)."""
    yaml = envfile._yaml(text)  # the environment file's own round-trip style
    doc = envfile._load(text, where)
    entry = envfile._entry_map(envfile._models_map(doc, where), model, where)
    segments = entry.get("segments")
    if segments is None:
        segments = CommentedSeq()
        entry["segments"] = segments
    if not isinstance(segments, list):
        raise EnvironmentFileError(f"{where}: models.{model}.segments is not a list; fix it")
    wanted = {str(k): str(v) for k, v in selector.items()}
    for i in reversed(range(len(segments))):
        if dict(segments[i].get("selector") or {}) == wanted:
            del segments[i]
    segment = CommentedMap()
    segment["selector"] = CommentedMap(sorted(wanted.items()))
    segment["selector"].fa.set_flow_style()
    segment["version"] = version
    segments.insert(0, segment)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
