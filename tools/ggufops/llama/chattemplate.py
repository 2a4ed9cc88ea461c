"""Which chat template a model version uses, as its version file records it.

`inference.prompt_template` holds one of:

* `gguf`: the GGUF file's own `tokenizer.chat_template` (its sha256 is recorded as
  `gguf.chat_template_sha256`), rendered with llama-cpp-python's Jinja2 chat formatter,
  with the vocabulary's end-of-turn and end-of-sequence tokens as stops. `register`
  chooses it when the file has a template.
* `none`: the version has no chat. `/v1/chat/completions` answers 400 and
  `/v1/completions` works. `register` chooses it when the file has no template: a
  template is never given silently.
* a llama-cpp-python chat format name (`register --chat-format NAME`), e.g. `chatml` or
  `llama-3`. Older version files that say `prompt_template: chatml` mean this.

Any other value is refused by the schema (so by `validate`), by `register`, and by the
server's load API. It is never skipped silently.
"""

from __future__ import annotations

from ggufops.errors import ChatTemplateError

GGUF = "gguf"
NO_CHAT = "none"

# llama-cpp-python 0.3.36's named chat formats, minus the function-calling handlers
# (functionary*, chatml-function-calling), which need tools or a Hugging Face tokenizer.
# The model-version and environment schemas list the same names; a test keeps them equal
# to llama-cpp-python's registry.
FORMATS = (
    "alpaca", "baichuan", "baichuan-2", "chatglm3", "chatml", "gemma", "intel", "llama-2",
    "llama-3", "mistral-instruct", "mistrallite", "oasst_llama", "open-orca", "openbuddy",
    "openchat", "phind", "pygmalion", "qwen", "redpajama-incite", "saiga", "snoozy",
    "vicuna", "zephyr",
)  # fmt: skip
EXCLUDED_FORMATS = frozenset({"chatml-function-calling", "functionary", "functionary-v1",
                              "functionary-v2"})
CHOICES = (GGUF, NO_CHAT, *FORMATS)
_ALIASES = {"llama3": "llama-3", "llama2": "llama-2", "mistral": "mistral-instruct"}


def default_for(has_template: bool) -> str:
    """What `register` records without --chat-format: the file's own template, or no chat."""
    return GGUF if has_template else NO_CHAT


def check(value: object, *, where: str, has_template: bool | None = None) -> str:
    """`value` if it names a usable template; ChatTemplateError naming `where` otherwise.

    `has_template` (when known) is whether the GGUF file carries a template."""
    if not isinstance(value, str) or value not in CHOICES:
        raise ChatTemplateError(f"{where}: {value!r} is not a chat template{_hint(value)}; "
                                f"use {GGUF} (the file's own), {NO_CHAT}, or a llama-cpp-python "
                                f"chat format: {', '.join(FORMATS)}")
    if value == GGUF and has_template is False:
        raise ChatTemplateError(f"{where}: {GGUF} names the file's own chat template, but the "
                                "GGUF has no tokenizer.chat_template; pass a chat format "
                                f"(e.g. chatml) or {NO_CHAT}")
    return value


def _hint(value: object) -> str:
    alias = _ALIASES.get(str(value))
    return f" (did you mean {alias}?)" if alias else ""


def has_chat(value: str | None) -> bool:
    return value != NO_CHAT
