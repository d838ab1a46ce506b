"""Prompts: text prepended to every input before tokenization, as sentence-transformers does with
``encode(prompt_name=..., prompt=...)`` (E5's "query: " / "passage: ", instruction prefixes).

A request names one of the model's prompts (``config_sentence_transformers.json``) or gives one
literally; with neither, the model's default prompt applies (``--default-prompt-name``, else the
folder's ``default_prompt_name``). The prompt's tokens count against max_tokens and appear in
Tokenize and ``token_counts``, as they do in sentence-transformers. Pooling configs with
``include_prompt: false`` (which leave the prompt's tokens out of the mean) are not honoured: the
prompt's tokens are pooled with the text's.
"""

from __future__ import annotations

from typing import Sequence

from semserve.core.types import ModelDescriptor
from semserve.frontend.errors import invalid_argument


def resolve_prompt(model: ModelDescriptor, prompt_name: str | None, prompt: str | None) -> str:
    """The text to prepend for a request; INVALID_ARGUMENT for a name the model lacks."""
    if prompt_name is not None and prompt is not None:
        raise invalid_argument("give prompt_name or prompt, not both")
    if prompt is not None:
        return prompt
    if prompt_name is not None:
        if prompt_name not in model.prompts:
            known = ", ".join(sorted(model.prompts)) or "none"
            raise invalid_argument(f"model {model.name!r} has no prompt named {prompt_name!r}; its prompts: {known}")
        return model.prompts[prompt_name]
    if model.default_prompt_name:
        return model.prompts.get(model.default_prompt_name, "")
    return ""


def prompted(texts: Sequence[str], prompt: str) -> list[str]:
    return [prompt + text for text in texts] if prompt else list(texts)


def optional_string(message, field: str) -> str | None:
    return getattr(message, field) if message.HasField(field) else None
