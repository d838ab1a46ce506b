"""Embedding models served without sentence-transformers at run time.

``load_encoder`` reads a model folder (sentence-transformers old or 6.x layout, or a plain Hugging
Face one) and builds an ``Encoder``: transformer -> pooling -> Dense layers -> optional Normalize,
in the order ``modules.json`` lists them. The result is a plain ``torch.nn.Module`` whose forward
takes already-padded tensors, so batching, tokenisation threads and device transfers stay under
the server's control instead of ``SentenceTransformer.encode``'s.

Things the caller must do, because sentence-transformers does them outside the modules:

* lowercase texts first when ``lowercase`` is set (old ``do_lower_case`` folders; sentence-transformers
  does it with a tokenizer normaliser, which agrees with ``str.lower`` except for a few exotic
  characters);
* prepend a prompt when the model has one it applies by default (``prompts`` /
  ``default_prompt_name``). Pooling configs with ``include_prompt: false`` only differ from plain
  pooling when a prompt is used, which this module never does;
* tokenize with ``tokenizer(texts, padding=True, truncation=True, max_length=max_tokens)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from semserve.models.backbone import (
    accepts_token_type_ids,
    load_config,
    load_model,
    load_tokenizer,
    resolve_max_tokens,
)
from semserve.models.errors import ModelLoadError
from semserve.models.heads import Normalize, load_dense, load_normalize
from semserve.models.packed import PackedBert, PackedInputs, packing_refusal, pool_packed
from semserve.models.pooling import Pooling, parse_pooling_config
from semserve.models.st_folder import (
    ModuleEntry,
    TransformerSettings,
    read_model_config,
    read_modules,
    read_optional_json_object,
    read_transformer_settings,
    require_folder,
)

SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


class Encoder(nn.Module):
    """A sentence embedding model: padded token ids in, one vector per text out."""

    def __init__(
        self,
        *,
        transformer: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: Pooling,
        head: list[nn.Module],
        max_tokens: int,
        dimension: int,
        path: Path,
        lowercase: bool = False,
        truncate_dim: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.pool = pooling
        self.head = nn.ModuleList(head)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.dimension = dimension
        self.path = path
        self.lowercase = lowercase
        # Some folders ask for Matryoshka-style truncation; it happens after Normalize, as in
        # SentenceTransformer.encode, so a truncated output is no longer unit length.
        self.truncate_dim = truncate_dim
        self.prompts = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        self.has_normalize = any(isinstance(layer, Normalize) for layer in head)
        self._pass_token_type_ids = accepts_token_type_ids(transformer, tokenizer)
        # Serving never trains: dropout off, and no autograd bookkeeping on the weights.
        self.eval()
        self.requires_grad_(False)

    @property
    def pooling(self) -> str:
        """"cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken", or several joined by '+'."""
        return self.pool.name

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Embed a padded batch: [batch, tokens] LongTensors -> [batch, dimension].

        Pooling only reads attended positions, so a text's vector does not depend on how much
        padding its batch companions forced on it.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._pass_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        tokens = self.transformer(**inputs, return_dict=True).last_hidden_state
        return self._finish(self.pool(tokens, attention_mask))

    def packing_refusal(self) -> str | None:
        """Why this model cannot run unpadded on its device (packed.py), or None."""
        return packing_refusal(self.transformer, self.device, self.dtype)

    def enable_packing(self) -> None:
        """Build the packed forward (fused attention projections) once, before ``forward_packed``."""
        # Kept out of the module tree: it shares the transformer's modules.
        self.__dict__["_packed"] = PackedBert(self.transformer)

    def forward_packed(self, inputs: PackedInputs) -> Tensor:
        """Embed a packed batch: [slots, dimension], one row per slot (packed.py)."""
        tokens = self.__dict__["_packed"](inputs)
        return self._finish(pool_packed(self.pool.modes, tokens, inputs))

    def _finish(self, embeddings: Tensor) -> Tensor:
        for layer in self.head:
            embeddings = layer(embeddings)
        if self.truncate_dim is not None:
            embeddings = embeddings[..., : self.truncate_dim]
        return embeddings


def load_encoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
) -> Encoder:
    """Load an embedding model folder, in eval mode, on ``device`` in ``dtype``.

    ``max_tokens`` overrides the folder's own input length limit (it is still capped by the
    position embeddings). Anything the folder asks for that cannot be served exactly raises
    ModelLoadError naming the folder, rather than serving different numbers than
    sentence-transformers would.
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise ModelLoadError(f"max_tokens must be a positive integer, found {max_tokens!r}")
    root = require_folder(path)
    device = torch.device(device)
    modules = read_modules(root)
    if modules is None:
        return _load_plain(root, device, dtype, max_tokens)
    return _load_sentence_transformers(root, modules, device, dtype, max_tokens)


def _load_plain(root: Path, device: torch.device, dtype: torch.dtype, max_tokens: int | None) -> Encoder:
    """A bare Hugging Face folder, pooled the way SentenceTransformer pools one it has to wrap."""
    config = load_config(root)
    architectures = getattr(config, "architectures", None) or [""]
    # Decoder LMs get last-token pooling (the only position that has seen the whole text) unless
    # their config says attention is bidirectional.
    causal = architectures[0].endswith("ForCausalLM") and getattr(config, "is_causal", True)
    tokenizer = load_tokenizer(root)
    transformer = load_model(root, AutoModel, device, dtype)
    hidden = _hidden_size(transformer, root)
    return Encoder(
        transformer=transformer,
        tokenizer=tokenizer,
        pooling=Pooling(("lasttoken",) if causal else ("mean",)),
        head=[],
        max_tokens=resolve_max_tokens(root, tokenizer, transformer, max_tokens),
        dimension=hidden,
        path=root,
    )


def _load_sentence_transformers(
    root: Path,
    modules: list[ModuleEntry],
    device: torch.device,
    dtype: torch.dtype,
    max_tokens: int | None,
) -> Encoder:
    model_config = read_model_config(root)
    model_type = model_config.get("model_type", "SentenceTransformer")
    if model_type != "SentenceTransformer":
        raise ModelLoadError(f"{root} holds a {model_type} model, not a SentenceTransformer embedding model")
    _check_module_types(root, modules)

    first, *rest = modules
    if first.kind != "Transformer":
        raise ModelLoadError(f"{root}: the first module must be a Transformer, found {first.type}")
    settings = read_transformer_settings(first.folder)
    _check_text_embedding_transformer(first.folder, settings)

    tokenizer = load_tokenizer(first.folder, settings.processor_kwargs)
    transformer = load_model(first.folder, AutoModel, device, dtype)
    dimension = _hidden_size(transformer, first.folder)

    if not rest or rest[0].kind != "Pooling":
        found = rest[0].type if rest else "nothing"
        raise ModelLoadError(f"{root}: the Transformer must be followed by a Pooling module, found {found}")
    pooling_source = rest[0].folder / "config.json"
    modes, pooled_from = parse_pooling_config(read_optional_json_object(pooling_source), pooling_source)
    if pooled_from is not None and pooled_from != dimension:
        raise ModelLoadError(
            f"{pooling_source}: pools {pooled_from}-dimensional tokens but the transformer outputs {dimension}"
        )
    pooling = Pooling(modes)
    dimension *= len(modes)

    head: list[nn.Module] = []
    for entry in rest[1:]:
        if entry.kind == "Pooling":
            raise ModelLoadError(f"{root}: a second Pooling module ({entry.folder}) cannot be served")
        if entry.kind == "Normalize":
            head.append(load_normalize(entry.folder))
            continue
        dense = load_dense(entry.folder)
        if dense.in_features != dimension:
            raise ModelLoadError(
                f"{entry.folder}: Dense expects {dense.in_features} inputs but receives {dimension}"
            )
        head.append(dense)
        dimension = dense.out_features
    for layer in head:
        layer.to(device=device, dtype=dtype)
        layer.eval()
        layer.requires_grad_(False)

    truncate_dim = _truncate_dim(root, model_config, dimension)
    explicit = max_tokens if max_tokens is not None else settings.max_length
    prompts = model_config.get("prompts") or {}
    return Encoder(
        transformer=transformer,
        tokenizer=tokenizer,
        pooling=pooling,
        head=head,
        max_tokens=resolve_max_tokens(first.folder, tokenizer, transformer, explicit),
        dimension=truncate_dim or dimension,
        path=root,
        lowercase=settings.lowercase,
        truncate_dim=truncate_dim,
        prompts={k: v for k, v in prompts.items() if isinstance(v, str)} if isinstance(prompts, dict) else {},
        default_prompt_name=model_config.get("default_prompt_name"),
    )


def _check_module_types(root: Path, modules: list[ModuleEntry]) -> None:
    for entry in modules:
        if entry.kind not in SUPPORTED_MODULES:
            raise ModelLoadError(
                f"{root}: module {entry.type} (in {entry.folder}) is not supported; "
                f"this server can run {', '.join(SUPPORTED_MODULES)}"
            )


def _check_text_embedding_transformer(folder: Path, settings: TransformerSettings) -> None:
    """Refuse Transformer configs whose output is not per-token hidden states of plain text."""
    if settings.task != "feature-extraction":
        raise ModelLoadError(f"{folder}: transformer_task {settings.task!r} is not an embedding model")
    if settings.module_output_name not in (None, "token_embeddings"):
        raise ModelLoadError(
            f"{folder}: the Transformer outputs {settings.module_output_name!r}; only token_embeddings can be pooled"
        )
    if settings.method != "forward" or settings.method_output_name not in (None, ("last_hidden_state",)):
        raise ModelLoadError(
            f"{folder}: text goes through {settings.method}() -> {settings.method_output_name}; "
            "only forward() -> last_hidden_state is supported"
        )
    if "message" in settings.modalities:
        raise ModelLoadError(f"{folder}: the model formats text with a chat template, which is not supported")


def _hidden_size(model: PreTrainedModel, folder: Path) -> int:
    config: Any = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int) or hidden <= 0:
        raise ModelLoadError(f"{folder}: the model config has no hidden_size, so the embedding size is unknown")
    return hidden


def _truncate_dim(root: Path, model_config: dict[str, Any], dimension: int) -> int | None:
    value = model_config.get("truncate_dim")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{root}: truncate_dim must be a positive integer, found {value!r}")
    return value if value < dimension else None


__all__ = ["Encoder", "load_encoder"]
