"""Reading sentence-transformers folder metadata without importing sentence-transformers.

Two generations of the format are in circulation and both must load:

* The old one (sentence-transformers 2.x to 5.x): ``modules.json`` types such as
  ``sentence_transformers.models.Pooling``, ``sentence_bert_config.json`` holding
  ``max_seq_length`` and ``do_lower_case``, pooling chosen by ``pooling_mode_*`` booleans.
* The 6.x one: types such as ``sentence_transformers.base.modules.transformer.Transformer``,
  ``sentence_bert_config.json`` holding ``transformer_task`` / ``modality_config`` and no length at
  all (6.x keeps the length as ``model_max_length`` in ``tokenizer_config.json``), pooling chosen by a
  single ``pooling_mode`` string.

Module types are matched on their last dotted component only, which covers both generations and
the re-exports in between.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from semserve.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
# sentence-transformers tries these in order; the non-bert names come from 0.x/1.x releases.
TRANSFORMER_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


@dataclass(frozen=True)
class ModuleEntry:
    """One line of ``modules.json``: what the module is and where its files live."""

    kind: str
    type: str
    folder: Path


@dataclass(frozen=True)
class TransformerSettings:
    """What a Transformer module's config says beyond the Hugging Face files themselves."""

    task: str = "feature-extraction"
    # The output the module exposes, e.g. "token_embeddings" (encoders) or "scores" (cross-encoders).
    module_output_name: str | None = None
    # The model output it reads, e.g. ("last_hidden_state",) or ("logits",); None when not stated.
    method_output_name: tuple[str, ...] | None = None
    method: str = "forward"
    modalities: tuple[str, ...] = ("text",)
    # A length the folder states explicitly. It wins over the tokenizer's model_max_length.
    max_length: int | None = None
    lowercase: bool = False
    processor_kwargs: dict[str, Any] = field(default_factory=dict)


def require_folder(path: str | Path) -> Path:
    """Resolve a model path, refusing anything that is not an existing local directory.

    Refusing early matters: transformers would otherwise take a missing path for a hub id and try
    the network, which fails slowly and with an unhelpful message in an offline deployment.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"model path {folder} is not a folder")
    return folder.resolve()


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every failure into a ModelLoadError that names the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def read_json_object(path: Path) -> dict[str, Any]:
    """Like read_json, but the file must hold a JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_optional_json_object(path: Path) -> dict[str, Any]:
    """An absent file reads as {}: many configs are optional (Normalize has none, old folders lack some)."""
    return read_json_object(path) if path.is_file() else {}


def _inside(root: Path, relative: str) -> Path:
    """Join a path from modules.json onto the root, refusing paths that climb out of it."""
    folder = (root / relative).resolve()
    if folder != root and root not in folder.parents:
        raise ModelLoadError(f"{root / MODULES_FILE}: module path {relative!r} points outside the model folder")
    return folder


def read_modules(root: Path) -> list[ModuleEntry] | None:
    """The module stack from modules.json, or None when the folder is a plain Hugging Face one."""
    path = root / MODULES_FILE
    if not path.is_file():
        return None
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise ModelLoadError(f"{path} must hold a non-empty list of modules")
    modules = []
    # File order, not "idx": sentence-transformers runs the modules in the order they are listed.
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ModelLoadError(f"{path}: every module needs a string 'type', found {entry!r}")
        module_type = entry["type"]
        modules.append(
            ModuleEntry(
                kind=module_type.rsplit(".", 1)[-1],
                type=module_type,
                folder=_inside(root, str(entry.get("path", ""))),
            )
        )
    return modules


def read_model_config(root: Path) -> dict[str, Any]:
    """config_sentence_transformers.json (prompts, activation_fn, truncate_dim, ...), or {}."""
    return read_optional_json_object(root / MODEL_CONFIG_FILE)


def _positive_int(value: Any, source: Path, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{source}: {key} must be a positive integer, found {value!r}")
    return value


def read_transformer_settings(folder: Path) -> TransformerSettings:
    """Parse a Transformer module's sentence_*_config.json, old or 6.x style.

    The explicit length follows sentence-transformers' own precedence: a call-time
    ``processing_kwargs`` max_length ("common" beats "text", because that is the order the kwargs are
    merged in) over a ``processor_kwargs``/``tokenizer_args`` model_max_length over the old
    ``max_seq_length``.
    """
    source = folder / TRANSFORMER_CONFIG_FILES[0]
    config: dict[str, Any] = {}
    for name in TRANSFORMER_CONFIG_FILES:
        if (folder / name).is_file():
            source = folder / name
            config = read_json_object(source)
            break

    processor_kwargs = config.get("processor_kwargs") or config.get("tokenizer_args") or {}
    processing = config.get("processing_kwargs") or {}
    sections = [processing.get("common") or {}, processing.get("text") or {}] if isinstance(processing, dict) else []
    if not isinstance(processor_kwargs, dict) or not sections or not all(isinstance(s, dict) for s in sections):
        raise ModelLoadError(f"{source}: processor_kwargs and processing_kwargs must be JSON objects")
    common, text_kwargs = sections

    max_length = None
    for key, value in (
        ("processing_kwargs.common.max_length", common.get("max_length")),
        ("processing_kwargs.text.max_length", text_kwargs.get("max_length")),
        ("processor_kwargs.model_max_length", processor_kwargs.get("model_max_length")),
        ("max_seq_length", config.get("max_seq_length")),
    ):
        max_length = _positive_int(value, source, key)
        if max_length is not None:
            break
    for name, section in (("common", common), ("text", text_kwargs)):
        ignored = set(section) - {"max_length", "truncation", "padding"}
        if ignored:
            logger.warning("%s: ignoring processing_kwargs.%s keys %s", source, name, sorted(ignored))

    method, method_output_name, modalities = "forward", None, ("text",)
    modality_config = config.get("modality_config")
    if modality_config is not None:
        if not isinstance(modality_config, dict) or not isinstance(modality_config.get("text"), dict):
            raise ModelLoadError(f"{source}: modality_config has no 'text' entry, so it cannot embed text")
        text = modality_config["text"]
        method = text.get("method", "forward")
        output = text.get("method_output_name")
        method_output_name = (output,) if isinstance(output, str) else tuple(output) if output else None
        modalities = tuple(modality_config)

    return TransformerSettings(
        task=config.get("transformer_task", "feature-extraction"),
        module_output_name=config.get("module_output_name"),
        method_output_name=method_output_name,
        method=method,
        modalities=modalities,
        max_length=max_length,
        lowercase=bool(config.get("do_lower_case", False)),
        processor_kwargs=dict(processor_kwargs),
    )


def import_torch_module(dotted: str, source: Path, what: str) -> nn.Module:
    """Instantiate an activation named in a config, e.g. ``torch.nn.modules.activation.Tanh``.

    Only classes under ``torch.`` are accepted. sentence-transformers without trust_remote_code
    silently swaps an untrusted name for its default activation; a server that did the same would
    return different numbers than the model's author intended, so this refuses instead.
    """
    if not isinstance(dotted, str) or not dotted.startswith("torch."):
        raise ModelLoadError(f"{source}: {what} {dotted!r} is not a torch class; refusing to import it")
    module_name, _, attribute = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"{source}: {what} {dotted!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{source}: {what} {dotted!r} is not a torch.nn.Module class")
    return cls()
