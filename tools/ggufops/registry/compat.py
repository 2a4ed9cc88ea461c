"""The compatibility matrix: what a version needs, and whether its environments give it that.

A version file may carry (written by `register`; files without it stay valid)::

    requires:
      llama_cpp_python: ">=0.1.79"        # the oldest runtime able to load the file
      validated_with: {llama_cpp_python: 0.3.16}   # the runtime that loaded it at register
      prompts: [support@1.0.0]             # optional: the prompt configs it was validated with

Its context length and chat template are already in its `gguf:` block. A prompt config is
`prompts/<name>/<X.Y.Z>.yaml` (registry/schema/prompt-config.schema.json), and an environment
entry may pin one (`prompt: support@1.0.0`). `validate` refuses, at the field concerned:
- a pinned prompt config that does not exist, or whose max_prompt_tokens + max_tokens exceed
  a version's gguf.context_length, or that needs a chat template the version lacks, or that
  the version's `requires.prompts` (when present) does not list;
- with host runtimes (`validate --check-fleet`), a version that needs a newer llama-cpp-python
  than a host of its environment reports.

The minimum runtime comes from the tables below. Sources: llama-cpp-python's CHANGELOG.md
("0.1.79: GGUF Support (breaking change requiring new model format)"; "v0.1.59: k-quants
support", so every k-quant predates GGUF). Every architecture and file type not listed is
unknown to this table, and the honest answer for it is the runtime the file was validated
with at register (`validated_with`), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufops import yamlio
from ggufops.registry import schemas
from ggufops.registry.records import EnvEntry, environment_from_data
from ggufops.registry.registry import VersionRef

if TYPE_CHECKING:
    from ggufops.registry.validate import Checker, State

PROMPTS_DIR = "prompts"
SCHEMA = "registry/schema/prompt-config.schema.json"
GGUF = "gguf"  # chattemplate.GGUF (llama/ is above registry/ in the import chain)
NO_CHAT = "none"

# llama-cpp-python 0.1.79 is the first release that reads GGUF (CHANGELOG.md).
GGUF_BASELINE = "0.1.79"
# architecture (general.architecture) -> the first llama-cpp-python that loads it
ARCHITECTURE_MINIMUM: dict[str, str] = {
    "llama": GGUF_BASELINE,  # the architecture GGUF was introduced with
}
# file type (version.quantization) -> the first llama-cpp-python that loads it: the legacy
# quants and the k-quants (llama-cpp-python v0.1.59) all predate GGUF.
FILE_TYPE_MINIMUM: dict[str, str] = dict.fromkeys(
    ("f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m",
     "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"), GGUF_BASELINE)
_RELEASE = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def release_key(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a llama-cpp-python version such as 0.3.16 or 0.3.16+cpu."""
    match = _RELEASE.match(version.strip().removeprefix(">="))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def minimum_runtime(architecture: str, quantization: str,
                    validated_with: str | None) -> str | None:
    """The `requires.llama_cpp_python` minimum (">=X.Y.Z"), or None when nothing is known.

    Both table entries known: the later of the two. Either unknown: the runtime the file was
    validated with, an upper bound we can vouch for; no validation either: None."""
    known = [ARCHITECTURE_MINIMUM.get(architecture), FILE_TYPE_MINIMUM.get(quantization)]
    if all(v is not None for v in known):
        return ">=" + max((str(v) for v in known), key=lambda v: release_key(v) or (0, 0, 0))
    key = release_key(validated_with) if validated_with else None
    return ">={}.{}.{}".format(*key) if key else None


def requires_block(architecture: str, quantization: str,
                   validated_with: str | None) -> dict[str, Any]:
    """The `requires:` mapping `register` writes ({} when nothing is known)."""
    block: dict[str, Any] = {}
    minimum = minimum_runtime(architecture, quantization, validated_with)
    if minimum is not None:
        block["llama_cpp_python"] = minimum
    if validated_with is not None:
        block["validated_with"] = {"llama_cpp_python": validated_with}
    return block


# --- prompt configs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRef:
    name: str
    version: str

    @classmethod
    def parse(cls, text: str) -> PromptRef:
        name, _, version = text.partition("@")
        return cls(name, version)

    @property
    def relpath(self) -> str:
        return f"{PROMPTS_DIR}/{self.name}/{self.version}.yaml"

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class HostRuntime:
    """What one host of an environment reports about its runtime (fleet/<env>/<host>.json)."""

    host: str
    labels: dict[str, str]
    llama_cpp_python: str | None
    where: str  # the object's URL, for messages


# env -> the hosts that report in it (the fleet room reads them from S3)
HostRuntimes = Callable[[str], list[HostRuntime]]


@dataclass(frozen=True)
class EnvScope:
    """One environment file being checked, and where its problems go."""

    checker: Checker
    state: State
    doc: yamlio.Document
    env: str


def check_repo(checker: Checker, state: State, host_runtimes: HostRuntimes | None,
               warnings: Checker) -> None:
    """Every compatibility problem: prompt configs, pins, and (with hosts) runtimes; hosts
    whose runtime cannot be checked go to `warnings`."""
    prompts = _read_prompt_configs(checker, state.root)
    _check_version_prompt_lists(checker, state, prompts)
    for env, doc in state.environments.items():
        scope = EnvScope(checker, state, doc, env)
        for model, entry in environment_from_data(env, doc.data).models.items():
            if entry.prompt is not None:
                _check_pin(scope, prompts, model, entry)
        if host_runtimes is not None:
            _check_hosts(scope, host_runtimes(env), warnings)


def is_prompt_config(relpath: str) -> bool:
    """Whether a repository path is a prompt config (immutable once merged, like versions)."""
    parts = relpath.split("/")
    return len(parts) == 3 and parts[0] == PROMPTS_DIR and parts[2].endswith(".yaml")


def _prompt_paths(root: Path) -> Iterator[tuple[PromptRef, Path]]:
    for path in sorted((root / PROMPTS_DIR).glob("*/*.yaml")):
        yield PromptRef(path.parent.name, path.stem), path


def _read_prompt_configs(checker: Checker, root: Path) -> dict[PromptRef, yamlio.Document]:
    """Every prompt config that parses and fits its schema (the others are problems)."""
    paths = list(_prompt_paths(root))
    if not paths:
        return {}
    validator = schemas.optional_validator(root, SCHEMA, "prompt configs")
    found: dict[PromptRef, yamlio.Document] = {}
    for ref, path in paths:
        doc = checker.read(path)
        if doc is not None and checker.schema(doc, validator) and _named_well(checker, ref, doc):
            found[ref] = doc
    return found


def _named_well(checker: Checker, ref: PromptRef, doc: yamlio.Document) -> bool:
    reference = f"{ref.name}@{ref.version}"
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}@\d+\.\d+\.\d+", reference):
        return True
    checker.add(doc, [], f"{ref.relpath}: the path must be {PROMPTS_DIR}/<name>/<X.Y.Z>.yaml "
                "(a lower-case name and a semantic version); rename the file", "path")
    return False


def _check_version_prompt_lists(checker: Checker, state: State,
                                prompts: Mapping[PromptRef, yamlio.Document]) -> None:
    for doc in state.versions.values():
        listed = (doc.data.get("requires") or {}).get("prompts") or []
        for i, text in enumerate(listed):
            ref = PromptRef.parse(text)
            if ref not in prompts:
                checker.add(doc, ["requires", "prompts", i], f"requires.prompts: {ref} has no "
                            f"valid {ref.relpath}; add the prompt config or remove it from the "
                            "list", "compat")


def _check_pin(scope: EnvScope, prompts: Mapping[PromptRef, yamlio.Document], model: str,
               entry: EnvEntry) -> None:
    checker, state, doc, env = scope.checker, scope.state, scope.doc, scope.env
    ref = PromptRef.parse(str(entry.prompt))
    where = ["models", model, "prompt"]
    prompt = prompts.get(ref)
    if prompt is None:
        checker.add(doc, where, f"models.{model}.prompt: {env} pins {ref}, but {ref.relpath} "
                    "does not exist or is invalid; add it or pin another prompt config",
                    "compat")
        return
    for version in entry.versions():
        version_doc = state.versions.get(VersionRef(model, version))
        if version_doc is not None:
            for message in _misfits(checker, ref, prompt, version_doc, entry):
                checker.add(doc, where, f"models.{model}.prompt: {env} pins {ref} for "
                            f"{model}@{version}, but {message}", "compat")


def _misfits(checker: Checker, ref: PromptRef, prompt: yamlio.Document,
             version: yamlio.Document, entry: EnvEntry) -> Iterator[str]:
    yield from _context_misfit(checker, prompt, version)
    yield from _template_misfit(checker, prompt, version, entry)
    listed = (version.data.get("requires") or {}).get("prompts")
    if listed is not None and str(ref) not in listed:
        at = _at(checker, version, ["requires", "prompts"])
        yield (f"{at} requires.prompts lists only {', '.join(listed) or 'none'}; pin one of "
               "those or register a version validated with it")


def _at(checker: Checker, doc: yamlio.Document, path: list[str | int]) -> str:
    mark = doc.mark(tuple(path))
    return f"{checker.rel(doc.path)}:{mark.line}"


def _context_misfit(checker: Checker, prompt: yamlio.Document,
                    version: yamlio.Document) -> Iterator[str]:
    need = prompt.data["max_prompt_tokens"] + prompt.data["max_tokens"]
    context = version.data["gguf"]["context_length"]
    if need > context:
        yield (f"its max_prompt_tokens {prompt.data['max_prompt_tokens']} + max_tokens "
               f"{prompt.data['max_tokens']} = {need} ({_at(checker, prompt, ['max_tokens'])}) "
               f"exceed gguf.context_length {context} "
               f"({_at(checker, version, ['gguf', 'context_length'])}); lower them to fit or "
               "deploy a version with a longer context")


def _template_misfit(checker: Checker, prompt: yamlio.Document, version: yamlio.Document,
                     entry: EnvEntry) -> Iterator[str]:
    template = effective_template(prompt.data, entry, version.data)
    has_own = bool(version.data["gguf"].get("chat_template_sha256"))
    if template == GGUF and not has_own:
        yield (f"it needs the file's own chat template (prompt_template gguf) and the GGUF "
               f"has none (gguf.chat_template_sha256 is null at "
               f"{_at(checker, version, ['gguf', 'chat_template_sha256'])}); set the prompt "
               "config's prompt_template to a chat format such as chatml")
    elif template == NO_CHAT and prompt.data["system_prompt"]:
        yield (f"its system_prompt needs a chat template and {checker.rel(version.path)} runs "
               "without one (prompt_template none); set prompt_template in the prompt config "
               "or the environment's overrides")


def effective_template(prompt: Mapping[str, Any], entry: EnvEntry,
                       version: Mapping[str, Any]) -> str:
    """The chat template a pinned prompt config runs with: its own, else the environment's
    override, else the version's."""
    return str(prompt.get("prompt_template") or entry.overrides.get("prompt_template")
               or version["inference"]["prompt_template"])


# --- hosts ------------------------------------------------------------------------------------


def _check_hosts(scope: EnvScope, hosts: list[HostRuntime], warnings: Checker) -> None:
    for host in hosts:
        if host.llama_cpp_python is None or release_key(host.llama_cpp_python) is None:
            warnings.add(scope.doc, [], f"host {host.host} ({host.where}) reports no usable "
                         "llama-cpp-python version; its runtime was not checked", "compat")
            continue
        for model, entry in environment_from_data(scope.env, scope.doc.data).models.items():
            for version, where in runs_on(entry, host.labels):
                _check_host_version(scope, host, model, version, where)


def runs_on(entry: EnvEntry, labels: Mapping[str, str]
            ) -> list[tuple[str, list[str | int]]]:
    """(version, path in the entry) of what a host with `labels` may run for this entry:
    primary, canary and shadow everywhere, a segment's version only where it matches."""
    found: list[tuple[str, list[str | int]]] = [(entry.version, ["version"])]
    if entry.canary is not None:
        found.append((entry.canary.version, ["canary", "version"]))
    if entry.shadow is not None:
        found.append((entry.shadow.version, ["shadow", "version"]))
    for i, segment in enumerate(entry.segments):
        if segment.runs_on(labels):
            found.append((segment.version, ["segments", i, "version"]))
    return found


def _check_host_version(scope: EnvScope, host: HostRuntime, model: str, version: str,
                        where: list[str | int]) -> None:
    checker, doc, env = scope.checker, scope.doc, scope.env
    version_doc = scope.state.versions.get(VersionRef(model, version))
    needed = ((version_doc.data.get("requires") or {}).get("llama_cpp_python")
              if version_doc is not None else None)
    need_key, have_key = release_key(needed or ""), release_key(host.llama_cpp_python or "")
    if version_doc is None or need_key is None or have_key is None or have_key >= need_key:
        return
    checker.add(doc, ["models", model, *where], (
        f"models.{model}.{'.'.join(map(str, where))}: {env} runs {model}@{version}, which "
        f"needs llama-cpp-python {needed} (requires.llama_cpp_python at "
        f"{_at(checker, version_doc, ['requires', 'llama_cpp_python'])}), but host {host.host} "
        f"reports {host.llama_cpp_python} ({host.where}); upgrade the host's llama-cpp-python "
        "or deploy a version it can load"), "runtime")
