"""Cross-encoders (rerankers) served without sentence-transformers at run time.

Loads the folders ``sentence_transformers.CrossEncoder`` loads: a plain Hugging Face
``*ForSequenceClassification`` folder (what 2.x-5.x saved, possibly with the activation in
``config.json``), or a 6.x save, which is the same folder plus ``modules.json`` (a single
Transformer with ``transformer_task: sequence-classification``) and
``config_sentence_transformers.json`` (``model_type: CrossEncoder``, ``activation_fn``).

How scores are made, mirroring ``CrossEncoder.predict`` in sentence-transformers 6.2:

* The activation comes from, in order: the ``activation`` argument, ``activation_fn`` in
  config_sentence_transformers.json, ``sentence_transformers.activation_fn`` in config.json,
  ``sbert_ce_default_activation_function`` in config.json, else Sigmoid for one label and
  Identity for several. Only ``torch.*`` classes are accepted; sentence-transformers would quietly
  fall back to its default for other names, this refuses to load.
* One label: ``activation(logits)[:, 0]``. Several labels: ``softmax(activation(logits))`` at
  ``score_label``, which equals ``predict(pairs, apply_softmax=True)[:, score_label]``; plain
  ``predict`` returns all the (Identity-activated) logits instead, for which ``raw_scores`` is the
  counterpart.
* Half-precision logits are upcast to float32 before the activation, as predict does.

Tokenisation: predict calls the tokenizer with the list of (query, document) tuples,
``padding=True, truncation="longest_first"`` and no explicit max_length, so the tokenizer's
``model_max_length`` applies. This loader sets ``model_max_length`` to ``max_tokens``, so the
caller's ``tokenizer(queries, documents, truncation="longest_first", max_length=max_tokens)``
produces the same ids. The only difference: predict sorts pairs by length and batches them 32 at a
time, which only changes padding, and padding does not change scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from semserve.models.backbone import (
    accepts_token_type_ids,
    load_config,
    load_model,
    load_tokenizer,
    resolve_max_tokens,
)
from semserve.models.errors import ModelLoadError
from semserve.models.packed import PackedBert, PackedInputs, packing_refusal, pool_packed
from semserve.models.st_folder import (
    import_torch_module,
    read_json_object,
    read_model_config,
    read_modules,
    read_transformer_settings,
    require_folder,
)

_NAMED_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "identity": nn.Identity, "none": nn.Identity}


class CrossEncoder(nn.Module):
    """Scores (query, document) pairs: padded pair ids in, one relevance score per pair out."""

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int,
        activation: nn.Module,
        score_label: int,
        path: Path,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.activation_fn = activation
        self.num_labels: int = model.config.num_labels
        id2label = getattr(model.config, "id2label", None) or {}
        self.label_names: list[str] = [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.num_labels)]
        self.score_label = score_label
        self.lowercase = False
        self.path = path
        self._pass_token_type_ids = accepts_token_type_ids(model, tokenizer)
        # Serving never trains: dropout off, and no autograd bookkeeping on the weights.
        self.eval()
        self.requires_grad_(False)

    @property
    def activation(self) -> str:
        """The activation's class name, e.g. "Sigmoid", for model info pages."""
        return type(self.activation_fn).__name__

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Classifier logits [batch, num_labels] for a padded batch of pairs."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._pass_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs, return_dict=True).logits

    def packing_refusal(self) -> str | None:
        """Why this model cannot run unpadded on its device (packed.py), or None."""
        if type(self.model).__name__ != "BertForSequenceClassification":
            return f"{type(self.model).__name__} is not a BertForSequenceClassification"
        if getattr(self.model.bert, "pooler", None) is None:
            return "the model has no pooler"
        return packing_refusal(self.model.bert, self.device, self.dtype)

    def enable_packing(self) -> None:
        """Build the packed forward (fused attention projections) once, before ``forward_packed``."""
        # Kept out of the module tree: it shares the model's modules.
        self.__dict__["_packed"] = PackedBert(self.model.bert)

    def forward_packed(self, inputs: PackedInputs) -> Tensor:
        """Classifier logits [slots, num_labels] for a packed batch of pairs: the first token
        of each slot through BERT's pooler and the classifier, as the padded forward does."""
        first = pool_packed(("cls",), self.__dict__["_packed"](inputs), inputs)
        pooler = self.model.bert.pooler
        return self.model.classifier(pooler.activation(pooler.dense(first)))

    def activate(self, logits: Tensor) -> Tensor:
        """Turn logits into one score per pair, exactly as CrossEncoder.predict would."""
        if torch.is_floating_point(logits) and torch.finfo(logits.dtype).bits < 32:
            logits = logits.float()
        scores = self.activation_fn(logits)
        if self.num_labels == 1:
            return scores.squeeze(-1)
        return torch.softmax(scores, dim=-1)[:, self.score_label]

    def raw_scores(self, logits: Tensor) -> Tensor:
        """The un-activated logit that ``activate`` ranks by, one per pair."""
        return logits[:, self.score_label]


def load_cross_encoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    score_label: int | str | None = None,
    activation: str | None = None,
    max_tokens: int | None = None,
) -> CrossEncoder:
    """Load a cross-encoder folder, in eval mode, on ``device`` in ``dtype``.

    ``score_label`` picks the label whose probability is the score for multi-label models (index or
    label name); it defaults to 1 for two labels and must be given for more. ``activation``
    overrides the folder's: "sigmoid", "identity", or a ``torch.*`` class path. ``max_tokens``
    overrides the folder's length limit (still capped by the position embeddings).
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise ModelLoadError(f"max_tokens must be a positive integer, found {max_tokens!r}")
    root = require_folder(path)
    device = torch.device(device)
    folder, explicit, processor_kwargs, model_config = _locate_classifier(root)
    load_config(folder)  # a clear error for a missing or broken config.json before the heavier loads
    raw_config = read_json_object(folder / "config.json")
    if not any(str(a).endswith("ForSequenceClassification") for a in raw_config.get("architectures") or []):
        # sentence-transformers would bolt a randomly initialised head onto such a model.
        raise ModelLoadError(
            f"{folder} is not a sequence-classification model (architectures: {raw_config.get('architectures')})"
        )

    tokenizer = load_tokenizer(folder, processor_kwargs)
    model = load_model(folder, AutoModelForSequenceClassification, device, dtype)
    num_labels = model.config.num_labels
    return CrossEncoder(
        model=model,
        tokenizer=tokenizer,
        max_tokens=resolve_max_tokens(folder, tokenizer, model, max_tokens if max_tokens is not None else explicit),
        activation=_resolve_activation(root, folder, activation, model_config, raw_config, num_labels),
        score_label=_resolve_score_label(root, score_label, num_labels, getattr(model.config, "label2id", None)),
        path=root,
    )


def _locate_classifier(root: Path) -> tuple[Path, int | None, dict[str, Any], dict[str, Any]]:
    """Where the Hugging Face files are, plus the explicit length, tokenizer kwargs and ST model config."""
    modules = read_modules(root)
    if modules is None:
        return root, None, {}, {}
    model_config = read_model_config(root)
    model_type = model_config.get("model_type", "SentenceTransformer")
    if model_type != "CrossEncoder":
        raise ModelLoadError(f"{root} holds a {model_type} model, not a CrossEncoder")
    if len(modules) != 1 or modules[0].kind != "Transformer":
        raise ModelLoadError(
            f"{root}: only a single Transformer module can be served as a cross-encoder, "
            f"found {[m.type for m in modules]}"
        )
    folder = modules[0].folder
    settings = read_transformer_settings(folder)
    if settings.task != "sequence-classification":
        raise ModelLoadError(f"{folder}: transformer_task {settings.task!r} is not a sequence classifier")
    if settings.method != "forward" or settings.method_output_name not in (None, ("logits",)):
        raise ModelLoadError(f"{folder}: scores come from {settings.method}() -> {settings.method_output_name}")
    if "message" in settings.modalities:
        raise ModelLoadError(f"{folder}: the model formats pairs with a chat template, which is not supported")
    return folder, settings.max_length, settings.processor_kwargs, model_config


def _resolve_activation(
    root: Path,
    folder: Path,
    requested: str | None,
    model_config: dict[str, Any],
    raw_config: dict[str, Any],
    num_labels: int,
) -> nn.Module:
    if requested is not None:
        named = _NAMED_ACTIVATIONS.get(requested.lower())
        return named() if named is not None else import_torch_module(requested, root, "activation")
    legacy = raw_config.get("sentence_transformers")
    for source, dotted in (
        (root / "config_sentence_transformers.json", model_config.get("activation_fn")),
        (folder / "config.json", legacy.get("activation_fn") if isinstance(legacy, dict) else None),
        (folder / "config.json", raw_config.get("sbert_ce_default_activation_function")),
    ):
        if dotted is not None:
            return import_torch_module(dotted, source, "activation_fn")
    return nn.Sigmoid() if num_labels == 1 else nn.Identity()


def _resolve_score_label(
    root: Path, requested: int | str | None, num_labels: int, label2id: dict[str, int] | None
) -> int:
    if isinstance(requested, str):
        if not label2id or requested not in label2id:
            raise ModelLoadError(f"{root}: no label named {requested!r}; labels: {sorted(label2id or {})}")
        requested = int(label2id[requested])
    if requested is None:
        if num_labels > 2:
            raise ModelLoadError(f"{root} has {num_labels} labels; pass score_label to choose the one to rank by")
        requested = 0 if num_labels == 1 else 1
    if isinstance(requested, bool) or not isinstance(requested, int) or not 0 <= requested < num_labels:
        raise ModelLoadError(f"{root}: score_label {requested!r} is out of range for {num_labels} labels")
    return requested


__all__ = ["CrossEncoder", "load_cross_encoder"]
