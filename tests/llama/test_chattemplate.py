"""Chat templates: what register records, what validate and the schema accept, and the smoke
test's chat turn (real llama.cpp; real git, DVC and SeaweedFS for register)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ggufops.artifacts.register import RegisterRequest, register
from ggufops.cli import main
from ggufops.errors import ChatTemplateError, LlamaError
from ggufops.llama import chattemplate, llm
from ggufops.registry.registry import Registry
from ggufops.registry.validate import validate_repo
from testing.repos import write_version
from testing.s3 import write_tiny_gguf

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"


def tiny(tmp_path: Path, template: str | None) -> Path:
    return write_tiny_gguf(tmp_path / f"m-{random.randrange(1 << 30)}.gguf", file_type=7,
                           seed=random.randrange(1 << 30), chat_template=template)


def registered(root: Path, path: Path, version: str, **kwargs: object) -> dict[str, object]:
    request = RegisterRequest(path, "m", version, push=False, **kwargs)  # type: ignore[arg-type]
    inference = register(Registry(root), request).doc["inference"]
    assert isinstance(inference, dict)
    return inference


def test_register_records_the_files_own_template_with_its_sha256(s3_registry: Path,
                                                                 tmp_path: Path) -> None:
    result = register(Registry(s3_registry),
                      RegisterRequest(tiny(tmp_path, TEMPLATE), "m", "1.0.0", push=False))
    assert result.doc["inference"]["prompt_template"] == "gguf"
    assert result.doc["gguf"]["chat_template_sha256"] == hashlib.sha256(
        TEMPLATE.encode()).hexdigest()
    assert validate_repo(s3_registry) == []


def test_a_file_without_a_template_is_never_given_one(s3_registry: Path,
                                                      tmp_path: Path) -> None:
    assert registered(s3_registry, tiny(tmp_path, None), "1.0.0")["prompt_template"] == "none"
    chatml = registered(s3_registry, tiny(tmp_path, None), "1.1.0", parent="1.0.0",
                        chat_format="chatml")
    assert chatml["prompt_template"] == "chatml"
    # a template belongs to its file: the child of a chatml version gets its own choice
    child = registered(s3_registry, tiny(tmp_path, TEMPLATE), "1.2.0", parent="1.1.0")
    assert child["prompt_template"] == "gguf"
    assert validate_repo(s3_registry) == []


@pytest.mark.parametrize(("flag", "has_template", "message"), [
    ("llama3", True, "--chat-format: 'llama3' is not a chat template (did you mean llama-3?)"),
    ("gpt-4", True, "use gguf (the file's own), none, or a llama-cpp-python chat format: "),
    ("gguf", False, "--chat-format: gguf names the file's own chat template, but the GGUF has "
                    "no tokenizer.chat_template"),
])
def test_unknown_or_impossible_chat_formats_are_refused_before_anything_is_written(
        s3_registry: Path, tmp_path: Path, flag: str, has_template: bool, message: str) -> None:
    with pytest.raises(ChatTemplateError) as info:
        registered(s3_registry, tiny(tmp_path, TEMPLATE if has_template else None), "1.0.0",
                   chat_format=flag)
    assert message in str(info.value)
    assert not (s3_registry / "registry" / "m").exists()


def test_cli_register_takes_chat_format(s3_registry: Path, tmp_path: Path) -> None:
    path = tiny(tmp_path, None)
    args = ["--repo", str(s3_registry), "register", str(path), "--model", "m", "--version",
            "1.0.0", "--no-push", "--json"]
    bad = CliRunner().invoke(main, [*args, "--chat-format", "llama3"])
    assert bad.exit_code == 1 and "did you mean llama-3?" in bad.output
    good = CliRunner().invoke(main, [*args, "--chat-format", "llama-3"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["version"]["inference"]["prompt_template"] == "llama-3"


def _edit(path: Path, **inference: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["inference"].update(inference)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_validate_keeps_old_chatml_files_and_refuses_unknown_names(registry_repo: Path) -> None:
    old = write_version(registry_repo, "m", "1.0.0")
    _edit(old, prompt_template="chatml")  # what register wrote before templates were chosen
    assert validate_repo(registry_repo) == []
    _edit(old, prompt_template="llama3")  # the README's old example: not a llama-cpp name
    (problem,) = [str(p) for p in validate_repo(registry_repo)]
    assert problem.startswith("registry/m/1.0.0.yaml:")
    assert "inference.prompt_template: 'llama3' is not a chat template: use gguf" in problem


def test_validate_needs_the_template_sha256_for_gguf(registry_repo: Path) -> None:
    path = write_version(registry_repo, "m", "1.0.0")
    _edit(path, prompt_template="gguf")  # but gguf.chat_template_sha256 is null
    (problem,) = [str(p) for p in validate_repo(registry_repo)]
    assert "gguf.chat_template_sha256: None must be the sha256 of the file's " \
        "tokenizer.chat_template" in problem
    doc = yaml.safe_load(path.read_text())
    doc["gguf"]["chat_template_sha256"] = "a" * 64
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert validate_repo(registry_repo) == []


def test_schemas_list_exactly_llama_cpp_pythons_plain_chat_formats() -> None:
    root = Path(__file__).resolve().parents[2] / "registry" / "schema"
    for name, path in (("model-version", ("properties", "inference")),
                       ("environment", ("$defs", "deployment", "properties", "overrides"))):
        node = json.loads((root / f"{name}.schema.json").read_text())
        for key in path:
            node = node[key]
        assert node["properties"]["prompt_template"]["enum"] == list(chattemplate.CHOICES)
    assert set(chattemplate.FORMATS) == llm.chat_formats() - chattemplate.EXCLUDED_FORMATS


# --- the smoke test's chat turn -------------------------------------------------------------


def test_the_smoke_chat_turn_of_an_instruct_model_stops_by_itself(smollm2: Path) -> None:
    smoke = llm.smoke_test_isolated(smollm2, n_tokens=4, n_threads=1, chat_template="gguf")
    assert smoke.ok, smoke.error
    assert smoke.chat_template == "gguf"
    assert 0 < smoke.chat_tokens < llm.CHAT_SMOKE_TOKENS


def test_a_chat_turn_that_runs_to_the_limit_fails_the_smoke_test(
        toy_models: dict[str, Path]) -> None:
    smoke = llm.smoke_test_isolated(toy_models["baseline"], n_tokens=4, n_threads=1,
                                    chat_template="chatml")
    assert not smoke.ok
    assert smoke.error.startswith(f"a chat turn through the chatml template ran to the "
                                  f"{llm.CHAT_SMOKE_TOKENS}-token limit")
    assert smoke.chat_tokens == llm.CHAT_SMOKE_TOKENS
    no_chat = llm.smoke_test_isolated(toy_models["baseline"], n_tokens=4, n_threads=1,
                                      chat_template="none")
    assert no_chat.ok and no_chat.chat_tokens == 0
    missing = llm.smoke_test_isolated(toy_models["baseline"], n_tokens=4, n_threads=1,
                                      chat_template="gguf")
    assert not missing.ok and "has no tokenizer.chat_template" in missing.error


def test_a_template_that_does_not_compile_is_a_clear_load_error(
        toy_models: dict[str, Path]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=64) as model:
        model.llama.metadata["tokenizer.chat_template"] = "{% for m in messages %}"
        with pytest.raises(LlamaError, match=r"is not a valid Jinja2 template .*--chat-format"):
            llm.use_chat_template(model, "gguf")
        llm.use_chat_template(model, "chatml")  # a named format does not read it
        assert model.chat_template == "chatml"
