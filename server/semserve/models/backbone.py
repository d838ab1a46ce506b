"""Loading the Hugging Face part of a model: weights, fast tokenizer and the input length limit.

Shared by the encoder and the cross-encoder, which differ only in the Auto class and in what they
do with the output.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from semserve.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# A tokenizer without a model_max_length reports transformers' VERY_LARGE_INTEGER (1e30).
# No real model accepts anywhere near a million tokens, so anything above this is "unset".
_PLAUSIBLE_MAX_TOKENS = 1_000_000

# Keys that make sense to sentence-transformers' processor loading but must not reach ours.
_DROPPED_PROCESSOR_KWARGS = {
    "trust_remote_code",
    "model_max_length",
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "subfolder",
}


def load_config(folder: Path) -> PretrainedConfig:
    """The folder's config.json as a transformers config, with errors that name the folder."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json, so it is not a Hugging Face model folder")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError, JSON errors...
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {exc}") from exc


def load_tokenizer(folder: Path, processor_kwargs: dict[str, Any] | None = None) -> PreTrainedTokenizerBase:
    """The folder's fast tokenizer. Slow tokenizers are refused: the batcher relies on offsets and speed."""
    kwargs = {k: v for k, v in (processor_kwargs or {}).items() if k not in _DROPPED_PROCESSOR_KWARGS}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {folder}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{folder} only provides a slow tokenizer; a tokenizer.json is needed")
    return tokenizer


def load_model(folder: Path, auto_class: type, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """Load weights with SDPA attention where the architecture has it, eager attention otherwise."""
    common = {"dtype": dtype, "local_files_only": True}
    try:
        try:
            model = auto_class.from_pretrained(str(folder), attn_implementation="sdpa", **common)
        except (ValueError, ImportError) as exc:
            message = str(exc)
            if not any(hint in message for hint in ("sdpa", "scaled_dot_product_attention", "attn_implementation")):
                raise
            logger.info("%s: SDPA attention unavailable (%s); using the default attention", folder, exc)
            model = auto_class.from_pretrained(str(folder), **common)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load model weights from {folder}: {exc}") from exc
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def accepts_token_type_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether segment ids should reach the model's forward.

    DistilBERT-style models have no segment embeddings and reject the argument. A forward that
    only takes ``**kwargs`` gets the ids when its tokenizer produces them, which is what
    sentence-transformers ends up doing too.
    """
    parameters = inspect.signature(model.forward).parameters
    if "token_type_ids" in parameters:
        return True
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return takes_kwargs and "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def position_limit(model: PreTrainedModel) -> int | None:
    """The longest input the position embeddings can index, or None when positions are unbounded.

    RoBERTa-family models (XLM-R, MPNet, ...) number positions from padding_idx + 1, so two of
    their 514 slots are unusable; sentence-transformers uses the same module scan to find that offset.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:  # XLNet and friends use -1 for "no limit"
        return None
    for module in model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        positions = getattr(module, "position_embeddings", None)
        if isinstance(padding_idx, int) and isinstance(positions, torch.nn.Embedding):
            return limit - (padding_idx + 1)
    return limit


def resolve_max_tokens(
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    explicit: int | None,
) -> int:
    """The longest input (special tokens included) this model will be given.

    An explicit length (the caller's, or the folder's sentence_bert_config) wins over the
    tokenizer's model_max_length, which is where sentence-transformers 6.x persists max_seq_length.
    Either way the result is capped by the position embeddings. sentence-transformers skips that cap
    for explicit lengths, but an input longer than the position table would crash the forward pass,
    so the cap changes nothing except turning a crash into truncation.

    The tokenizer is updated to the result so that plain ``tokenizer(..., truncation=True)`` calls
    agree with it.
    """
    if explicit is not None:
        max_tokens = explicit
    else:
        max_tokens = tokenizer.model_max_length
        if not isinstance(max_tokens, int) or max_tokens <= 0 or max_tokens > _PLAUSIBLE_MAX_TOKENS:
            max_tokens = None
    limit = position_limit(model)
    if limit is not None:
        max_tokens = limit if max_tokens is None else min(max_tokens, limit)
    if max_tokens is None:
        raise ModelLoadError(
            f"cannot tell the maximum input length of {folder}: the tokenizer sets no model_max_length and "
            "the model has no max_position_embeddings; pass max_tokens explicitly"
        )
    tokenizer.model_max_length = max_tokens
    return max_tokens
