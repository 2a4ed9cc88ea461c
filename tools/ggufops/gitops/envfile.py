"""Editing environment files as text, keeping every comment, key order and quote style.

An environment file is reviewed line by line in pull requests, so a deploy must change
exactly the line it means to. Edits go through ruamel.yaml's round-trip mode; the result
is checked against the plain data it must hold before anyone commits it.
"""

from __future__ import annotations

import copy
import difflib
import io
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.tokens import CommentToken

from ggufops import yamlio
from ggufops.errors import EnvironmentFileError, YamlError
from ggufops.registry.records import EnvEntry

_INDENT = re.compile(r"^models:[^\n]*\n(?:\s*#[^\n]*\n)*( +)\S", re.MULTILINE)


def read_models(text: str | bytes, where: str) -> dict[str, dict[str, Any]]:
    """model name -> its entry, from an environment file's text (plain data)."""
    try:
        data = yamlio.parse(text, Path(where)).data
    except YamlError as e:
        raise EnvironmentFileError(f"{e}; fix the environment file first") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EnvironmentFileError(f"{where}: must be a mapping with a `models:` key")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise EnvironmentFileError(f"{where}: `models:` must be a mapping of model -> entry")
    return {str(m): dict(e) if isinstance(e, dict) else {} for m, e in models.items()}


def read_entries(text: str | bytes, where: str) -> dict[str, EnvEntry]:
    """model name -> its entry as a record, from an environment file's text."""
    return {m: EnvEntry.from_doc(e) for m, e in read_models(text, where).items()}


def versions(text: str | bytes, where: str) -> dict[str, str]:
    """model name -> the version the environment runs."""
    return primary_versions(read_models(text, where))


def primary_versions(models: dict[str, Any]) -> dict[str, str]:
    """model name -> the version each entry of `models` (from `read_models`) runs."""
    return {m: str(e["version"]) for m, e in models.items() if "version" in e}


def canary_versions(models: dict[str, Any]) -> dict[str, str]:
    """model name -> its canary's version, for the entries of `models` that have one."""
    return {m: found[0] for m, e in models.items() if (found := canary(e)) is not None}


def canary(entry: dict[str, Any]) -> tuple[str, int] | None:
    """(version, weight) of an entry's canary (plain data from `read_models`), or None."""
    found = EnvEntry.from_doc(entry).canary
    return (found.version, found.weight) if found is not None else None


def set_canary(text: str, model: str, version: str, weight: int, where: str, *,
               analysis: dict[str, Any] | None = None, drop_analysis: bool = False) -> str:
    """`text` with `model`'s `canary:` set to `version` at `weight` percent.

    An existing block is updated in place (its comments and quotes kept, and its
    `analysis:` plan unless `analysis` replaces it or `drop_analysis` removes it); a new one
    goes right after the entry's `version:`. The model must already run a primary version.
    """
    def edit(doc: CommentedMap) -> None:
        entry = _entry_map(_models_map(doc, where), model, where)
        block = entry.get("canary")
        if isinstance(block, CommentedMap):
            block["version"] = _same_style(block.get("version"), version)
            block["weight"] = weight
        else:
            block = CommentedMap([("version", version), ("weight", weight)])
            if entry.fa.flow_style():
                block.fa.set_flow_style()
            _insert_after(entry, "version", "canary", block)
        if analysis is not None:
            block["analysis"] = _flow_map(analysis)
        elif drop_analysis and "analysis" in block:
            _delete_key(block, "analysis")

    return _checked_edit(text, where, edit, model)


def remove_canary(text: str, model: str, where: str) -> str:
    """`text` without `model`'s `canary:` block (comments after it are kept)."""
    def edit(doc: CommentedMap) -> None:
        entry = _entry_map(_models_map(doc, where), model, where)
        if "canary" in entry:
            _delete_key(entry, "canary")

    return _checked_edit(text, where, edit, model)


def set_version(text: str, model: str, version: str, where: str) -> str:
    """`text` with `model` set to run `version` (an entry is added if the model is new).

    A canary of that same version is promoted: its `canary:` block is removed. Every
    other byte of the file stays as it was.
    """
    def edit(doc: CommentedMap) -> None:
        models = _models_map(doc, where)
        entry = models.get(model)
        if entry is None:
            models[model] = CommentedMap([("version", version)])
            return
        if not isinstance(entry, CommentedMap):
            raise EnvironmentFileError(f"{where}: models.{model} must be a mapping with "
                                       "`version:`; fix it by hand first")
        entry["version"] = _same_style(entry.get("version"), version)
        canary = entry.get("canary")
        if isinstance(canary, dict) and str(canary.get("version")) == version:
            _delete_key(entry, "canary")

    return _checked_edit(text, where, edit, model)


def set_overrides(text: str, model: str, values: dict[str, Any], where: str) -> str:
    """`text` with `model`'s `overrides:` set to `values` (removed when empty); keys kept in
    place where they stay, new ones appended."""
    def edit(doc: CommentedMap) -> None:
        entry = _entry_map(_models_map(doc, where), model, where)
        block = entry.get("overrides")
        if not values:
            if "overrides" in entry:
                _delete_key(entry, "overrides")
            return
        if not isinstance(block, CommentedMap):
            block = CommentedMap()
            if entry.fa.flow_style():
                block.fa.set_flow_style()
            entry["overrides"] = block
        for key in [k for k in block if k not in values]:
            del block[key]
        for key, value in values.items():
            block[key] = value

    return _checked_edit(text, where, edit, model)


def restore_entry(text: str, model: str, old_entry: Any, where: str) -> str:
    """`text` with `model`'s entry replaced by `old_entry` (a ruamel node or plain dict)."""
    def edit(doc: CommentedMap) -> None:
        models = _models_map(doc, where)
        models[model] = copy.deepcopy(old_entry)

    return _checked_edit(text, where, edit, model)


def entry_node(text: str, model: str, where: str) -> Any:
    """The round-trip node of `model`'s entry in `text` (None if absent)."""
    doc = _load(text, where)
    models = doc.get("models") if isinstance(doc, CommentedMap) else None
    return models.get(model) if isinstance(models, CommentedMap) else None


def unified_diff(old: str, new: str, path: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"a/{path}", tofile=f"b/{path}")
    return "".join(lines)


def changed_models(old: str | bytes, new: str | bytes, where: str) -> list[str]:
    """Models whose entry differs between two versions of an environment file."""
    before, after = read_models(old, where), read_models(new, where)
    return sorted(m for m in set(before) | set(after) if before.get(m) != after.get(m))


def _yaml(text: str) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    match = _INDENT.search(text)
    indent = len(match.group(1)) if match else 2
    y.indent(mapping=indent, sequence=indent + 2, offset=indent)
    y.explicit_start = text.lstrip().startswith("---")
    return y


def _load(text: str, where: str) -> Any:
    try:
        return _yaml(text).load(text)
    except YAMLError as e:
        raise EnvironmentFileError(f"{where}: not valid YAML ({e}); fix it first") from None


def _models_map(doc: Any, where: str) -> CommentedMap:
    if not isinstance(doc, CommentedMap):
        raise EnvironmentFileError(f"{where}: must be a mapping with a `models:` key")
    models = doc.get("models")
    if models is None or (isinstance(models, CommentedMap) and not models):
        models = CommentedMap()  # block style, even where the file said `models: {}`
        doc["models"] = models
    if not isinstance(models, CommentedMap):
        raise EnvironmentFileError(f"{where}: `models:` must be a mapping of model -> entry")
    return models


def _entry_map(models: CommentedMap, model: str, where: str) -> CommentedMap:
    entry = models.get(model)
    if not isinstance(entry, CommentedMap) or "version" not in entry:
        raise EnvironmentFileError(f"{where}: models.{model} must be a mapping with "
                                   "`version:`; deploy a version of it first")
    return entry


def _insert_after(mapping: CommentedMap, after: str, key: str, value: CommentedMap) -> None:
    """Insert `key` right after `after`; whole-line comments that followed `after` follow
    the new block instead (they were about what comes next)."""
    keys = list(mapping)
    mapping.insert(keys.index(after) + 1, key, value)
    slot = mapping.ca.items.get(after)
    token = slot[2] if slot and len(slot) > 2 else None
    if token is None or "\n" not in str(token.value):
        return
    own, rest = str(token.value).split("\n", 1)
    if not rest.strip():
        return
    if own.strip():
        token.value = own + "\n"
    else:
        slot[2] = None
    _append_comment(mapping, key, rest)


def _delete_key(mapping: CommentedMap, key: str) -> None:
    """Delete `key`, keeping the full-line comments that followed its block."""
    keys = list(mapping)
    trailing = _trailing_comment(mapping[key])
    del mapping[key]
    position = keys.index(key)
    kept = trailing.split("\n", 1)[1] if "\n" in trailing else ""
    if kept.strip() and position > 0:
        _append_comment(mapping, keys[position - 1], kept)


def _trailing_comment(node: Any) -> str:
    """Comment text after the last scalar of `node` (its own line's, then whole lines)."""
    if not isinstance(node, CommentedMap) or not node:
        return ""
    last = list(node)[-1]
    if isinstance(node[last], CommentedMap) and node[last]:
        return _trailing_comment(node[last])
    token = (node.ca.items.get(last) or [None, None, None])[2]
    return str(token.value) if token is not None else ""


def _append_comment(mapping: CommentedMap, key: str, lines: str) -> None:
    value = mapping[key]
    if isinstance(value, CommentedMap) and value:
        _append_comment(value, list(value)[-1], lines)
        return
    slot = mapping.ca.items.setdefault(key, [None, None, None, None])
    if slot[2] is None:
        slot[2] = CommentToken("\n" + lines, CommentMark(0), None)
    else:
        slot[2].value += lines


def _flow_map(values: dict[str, Any]) -> CommentedMap:
    """`{steps: [10, 25, 50, 100], interval: 60}` on one line."""
    block = CommentedMap((k, _flow_seq(v) if isinstance(v, list) else v)
                         for k, v in values.items())
    block.fa.set_flow_style()
    return block


def _flow_seq(values: list[Any]) -> CommentedSeq:
    seq = CommentedSeq(values)
    seq.fa.set_flow_style()
    return seq


def _same_style(old: Any, new: str) -> Any:
    """`new` quoted the way `old` was (a ScalarString keeps its quotes on dump)."""
    return type(old)(new) if isinstance(old, ScalarString) else new


def _checked_edit(text: str, where: str, edit: Any, model: str) -> str:
    doc = _load(text, where)
    edit(doc)
    stream = io.StringIO()
    _yaml(text).dump(doc, stream)
    new_text = stream.getvalue()
    _check_only_model_changed(text, new_text, model, where)
    return new_text


def _check_only_model_changed(old: str, new: str, model: str, where: str) -> None:
    before, after = _plain(old, where), _plain(new, where)
    before_models = before.pop("models", None) or {}
    after_models = after.pop("models", None) or {}
    before_models.pop(model, None)
    after_models.pop(model, None)
    if before != after or before_models != after_models:
        raise EnvironmentFileError(f"{where}: editing {model} would change other entries; "
                                   "edit the file by hand (this is a ggufops bug)")


def _plain(text: str, where: str) -> dict[str, Any]:
    data = yamlio.parse(text, Path(where)).data
    return dict(data) if isinstance(data, dict) else {}
