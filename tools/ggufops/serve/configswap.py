"""Config-only changes in `ggufops serve`: new inference settings without a model load.

A load request for the version (and role) already in memory whose inference config differs
(temperature, top_p, max_tokens, system_prompt, prompt_template: overrides.KEYS) is not a
load: the new request replaces the old one on the LoadedModel in one assignment under the
table's lock. Each request reads that request once when it starts and uses it to the end
(`pinned`), so a request never mixes two configs and none fails; the chat template, which
lives on the llama.cpp context, is switched under the model's lock by the first request that
runs on the new config (`use_template`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ggufops.errors import ChatTemplateError
from ggufops.httpjson import HttpError
from ggufops.llama import chattemplate, llm
from ggufops.registry import overrides
from ggufops.serve.loadrequest import LoadRequest

if TYPE_CHECKING:
    from ggufops.serve.metrics import Metrics
    from ggufops.serve.modeltable import LoadedModel, ModelTable

log = logging.getLogger("ggufops.serve")

CONFIG_CHANGES = "ggufops_config_changes_total"


def same_model(a: LoadRequest, b: LoadRequest) -> bool:
    """Do `a` and `b` name the same file in the same role (so only config may differ)?"""
    return (a.name, a.version, a.sha256, a.display_id, a.role) == \
        (b.name, b.version, b.sha256, b.display_id, b.role)


def template_for(model: llm.Model, inference: Mapping[str, Any]) -> str:
    """The chat template a config asks for: its prompt_template, else the file's own (or
    no chat when the file has none), as serve_load chooses."""
    wanted = inference.get("prompt_template")
    if isinstance(wanted, str):
        return wanted
    return chattemplate.GGUF if llm.gguf_chat_template(model) else chattemplate.NO_CHAT


def check(loaded: LoadedModel, request: LoadRequest) -> None:
    """HttpError 422 if the loaded model cannot run `request`'s config."""
    template = template_for(loaded.model, request.inference)
    try:
        chattemplate.check(template, where="inference.prompt_template",
                           has_template=llm.gguf_chat_template(loaded.model) is not None)
    except ChatTemplateError as e:
        raise HttpError(422, f"{request.display_id}: {e}", "model_load_error") from None
    max_tokens = request.inference.get("max_tokens")
    if isinstance(max_tokens, int) and not 0 < max_tokens <= loaded.model.n_ctx:
        raise HttpError(422, f"{request.display_id}: inference.max_tokens {max_tokens} is not "
                        f"1..{loaded.model.n_ctx} (the context size); lower it",
                        "model_load_error")


def reconfigure(table: ModelTable, loaded: LoadedModel, request: LoadRequest,
                metrics: Metrics) -> LoadedModel:
    """Give `loaded` the config of `request` (same model): no load, no lock a request holds."""
    check(loaded, request)
    table.reconfigure(loaded, request)
    metrics.inc(CONFIG_CHANGES, (request.name, request.version))
    log.info("config of %s%s changed without a reload: %s", request.display_id,
             " (canary)" if request.role == "canary" else "",
             overrides.config_digest(request.inference))
    return loaded


def pinned(loaded: LoadedModel) -> LoadRequest:
    """The config a request runs on, read once when it starts."""
    return loaded.request


def use_template(loaded: LoadedModel, config: LoadRequest) -> None:
    """Put the chat template of `config` on the model; the caller holds `loaded.lock`."""
    template = template_for(loaded.model, config.inference)
    if loaded.model.chat_template != template:
        llm.use_chat_template(loaded.model, template)


def has_chat(loaded: LoadedModel, config: LoadRequest) -> bool:
    return chattemplate.has_chat(template_for(loaded.model, config.inference))


def with_system_prompt(messages: list[dict[str, Any]],
                       inference: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`messages` with the config's system prompt first, unless they bring their own."""
    prompt = inference.get(overrides.SYSTEM_PROMPT)
    if not isinstance(prompt, str) or not prompt or \
            any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": prompt}, *messages]
