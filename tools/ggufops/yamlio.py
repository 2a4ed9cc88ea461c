"""Reading YAML safely, with positions, and refusing what pyyaml would accept silently.

pyyaml keeps the last of two duplicate keys without a word; a registry must not, so
duplicates are an error naming both lines. YAML's `.inf` and `.nan` are numbers to pyyaml
and to JSON Schema alike, yet no threshold, weight or count can use them, so they are an
error naming their line too: caught by `validate` in CI, not by an agent at run time.
Parsing uses libyaml when available; the positions of keys are kept on the node tree and
looked up only when a problem is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ggufops.errors import YamlError

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based

    @classmethod
    def of(cls, node: yaml.Node) -> Mark:
        return cls(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass
class Document:
    """Parsed YAML plus its text, from which the position of any key is found on demand.

    Node trees are not kept: holding ten thousand of them costs more in garbage
    collection than parsing again the one file that has a problem.
    """

    path: Path
    data: Any
    text: str | bytes | None = None  # None: read from `path` when a position is needed

    def mark(self, json_path: tuple[str | int, ...] | list[str | int]) -> Mark:
        """Position of the deepest node on `json_path` (its key, for a mapping entry)."""
        text = self.text if self.text is not None else self.path.read_bytes()
        node = yaml.compose(text, Loader=_Loader)
        best = Mark.of(node) if node is not None else Mark(1, 1)
        for part in json_path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if getattr(key_node, "value", None) == str(part):
                        best, node = Mark.of(key_node), value_node
                        break
                else:
                    return best
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return best
                node = node.value[part]
                best = Mark.of(node)
            else:
                return best
        return best


class _Loader(_BaseLoader):  # type: ignore[misc]
    pass


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [getattr(k, "value", None) for k, _ in node.value]
    if len(set(map(str, keys))) != len(keys):  # cheap test first; the slow path names lines
        _raise_duplicate(loader, node)
    return loader.construct_mapping(node, deep=deep)


def _raise_duplicate(loader: Any, node: yaml.MappingNode) -> None:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first}); remove one of them",
                key_node.start_mark,
            )
        seen[key] = key_node


def _construct_float(loader: Any, node: yaml.ScalarNode) -> float:
    value: float = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value!r} is not a finite number; write a finite number, "
            "or leave the key out (or null) where that turns a rule off", node.start_mark)
    return value


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse(text: str | bytes, path: Path) -> Document:
    """Parse one YAML document; raise YamlError naming path:line:column."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        if not isinstance(e, yaml.constructor.ConstructorError):
            problem += "; fix the YAML syntax"
        raise YamlError(f"{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{path}: invalid YAML: {e}") from None
    finally:
        loader.dispose()
    return Document(path=path, data=data, text=text)


def read(path: Path) -> Document:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise YamlError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    return parse(text, path)


def load(path: Path) -> Any:
    return read(path).data


def dump(data: Any) -> str:
    """Block-style YAML with keys in the given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
