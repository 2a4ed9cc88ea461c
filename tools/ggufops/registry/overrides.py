"""Per-environment inference overrides: the settings a host may change without reloading.

An environment entry may override, for its version and its canary alike::

    models:
      llama3-instruct:
        version: 2.1.0
        overrides:
          temperature: 0.2          # 0..5
          top_p: 0.9                # (0, 1]
          max_tokens: 256           # 1..the version's context length
          system_prompt: "Be brief." # chat requests without a system message get it first
          prompt_template: chatml   # gguf (the file's own, if it has one), none, or a format

The schema (registry/schema/environment.schema.json) holds the keys and ranges; this module
holds the checks that need the version file too, and the digest by which a host tells
whether the server runs the config the environment asks for. Every key here is applied by
the server without loading the model again (configswap.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ggufops.registry.records import EnvEntry

GGUF = "gguf"  # chattemplate.GGUF (llama/ is above registry/ in the import chain)
KEYS = ("temperature", "top_p", "max_tokens", "system_prompt", "prompt_template")
SYSTEM_PROMPT = "system_prompt"


@dataclass(frozen=True)
class OverrideProblem:
    """What is wrong with one override, and where (the path of the key in the env file)."""

    where: tuple[str, ...]
    message: str


def config_digest(inference: Mapping[str, Any]) -> str:
    """A short, order-independent fingerprint of an inference config (what /v1/models shows
    as `config_sha256`, and the agent compares with what the environment asks for)."""
    text = json.dumps(dict(inference), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides of an environment entry ({} without any)."""
    return EnvEntry.from_doc(dict(entry)).overrides


def problems(env: str, models: Mapping[str, EnvEntry],
             versions: Mapping[tuple[str, str], Mapping[str, Any]]) -> Iterator[OverrideProblem]:
    """Overrides that do not fit the versions they apply to (`versions`: (model, version) ->
    version file data); the schema has already checked keys and ranges."""
    for model, entry in models.items():
        if not entry.overrides:
            continue
        for version in entry.running():
            doc = versions.get((model, version))
            if doc is not None:
                yield from _fit(env, model, version, entry.overrides, doc)


def _fit(env: str, model: str, version: str, values: Mapping[str, Any],
         doc: Mapping[str, Any]) -> Iterator[OverrideProblem]:
    gguf = doc.get("gguf") if isinstance(doc.get("gguf"), dict) else {}
    where = ("models", model, "overrides")
    context = gguf.get("context_length") if isinstance(gguf, dict) else None
    max_tokens = values.get("max_tokens")
    if isinstance(max_tokens, int) and isinstance(context, int) and max_tokens > context:
        yield OverrideProblem((*where, "max_tokens"), (
            f"{env}: overrides.max_tokens {max_tokens} is more than {model}@{version}'s "
            f"context length {context}; lower it to {context} or less"))
    has_template = isinstance(gguf, dict) and bool(gguf.get("chat_template_sha256"))
    if values.get("prompt_template") == GGUF and not has_template:
        yield OverrideProblem((*where, "prompt_template"), (
            f"{env}: overrides.prompt_template gguf names the file's own chat template, but "
            f"{model}@{version}'s GGUF has none; use none or a chat format such as chatml"))
