"""Writing an ``Encoder`` back out as a sentence-transformers folder (the classic 2.x-5.x layout).

The classic layout is the one every loader understands: semserve's own, sentence-transformers 6.x
(which still reads it), and older sentence-transformers installs that a team may evaluate with.
The module stack is kept as it was (pooling modes, Dense layers, Normalize), so a tuned model is
a drop-in replacement for its base; a plain Hugging Face base becomes Transformer -> mean Pooling,
which is how both loaders already treated it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from semserve.models.encoder import Encoder
from semserve.models.heads import Dense, Normalize
from semserve.models.st_folder import MODEL_CONFIG_FILE

ST_PREFIX = "sentence_transformers.models."

# Classic pooling booleans, in the order sentence-transformers concatenates the pooled vectors.
_POOLING_FLAGS = (
    ("cls", "pooling_mode_cls_token"),
    ("max", "pooling_mode_max_tokens"),
    ("mean", "pooling_mode_mean_tokens"),
    ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
    ("weightedmean", "pooling_mode_weightedmean_tokens"),
    ("lasttoken", "pooling_mode_lasttoken"),
)
_ST_MODE_NAMES = {"mean_sqrt_len": "mean_sqrt_len_tokens"}


class ExportError(Exception):
    pass


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pooling_config(modes: tuple[str, ...], hidden: int) -> dict[str, Any]:
    """Classic booleans; plus an explicit ``pooling_mode`` list when the booleans cannot express
    the concatenation order (a 6.x folder that listed its modes in another order)."""
    config: dict[str, Any] = {"word_embedding_dimension": hidden}
    config.update({flag: mode in modes for mode, flag in _POOLING_FLAGS})
    config["include_prompt"] = True
    canonical = tuple(mode for mode, _ in _POOLING_FLAGS if mode in modes)
    if canonical != tuple(modes):
        config["pooling_mode"] = [_ST_MODE_NAMES.get(mode, mode) for mode in modes]
    return config


def _activation_name(module: Any) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _write_dense(layer: Dense, folder: Path) -> None:
    config: dict[str, Any] = {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.linear.bias is not None,
        "activation_function": _activation_name(layer.activation),
    }
    if layer.use_residual:  # omitted at its default so that pre-residual releases still load the folder
        config["use_residual"] = True
    _write_json(folder / "config.json", config)
    state = {key: value.detach().float().cpu().contiguous() for key, value in layer.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def prepare_output(out: Path, overwrite: bool = False) -> None:
    """Refuse to mix a new model into a non-empty folder, which could leave stale module folders."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} is not empty; choose a new folder or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def save_encoder(encoder: Encoder, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` (weights as they are now) to ``out``; returns the folder.

    ``extra`` is stored as ``semserve_finetune.json`` next to the model, to record where the model
    came from; loaders ignore it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.transformer.save_pretrained(str(out), safe_serialization=True)
    encoder.tokenizer.save_pretrained(str(out))
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": encoder.max_tokens, "do_lower_case": bool(encoder.lowercase)},
    )

    hidden = encoder.transformer.config.get_text_config().hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_PREFIX + "Transformer"}]

    def add(kind: str) -> Path:
        index = len(modules)
        name = f"{index}_{kind}"
        modules.append({"idx": index, "name": str(index), "path": name, "type": ST_PREFIX + kind})
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    _write_json(add("Pooling") / "config.json", pooling_config(encoder.pool.modes, hidden))
    for layer in encoder.head:
        if isinstance(layer, Dense):
            _write_dense(layer, add("Dense"))
        elif isinstance(layer, Normalize):
            add("Normalize")  # no files: the classic Normalize module saves nothing
        else:
            raise ExportError(f"cannot save head layer {type(layer).__name__}")
    _write_json(out / "modules.json", modules)

    source_config = Path(encoder.path) / MODEL_CONFIG_FILE
    if source_config.is_file():
        # Prompts, similarity function and truncate_dim carry over unchanged.
        shutil.copyfile(source_config, out / MODEL_CONFIG_FILE)
    if extra is not None:
        _write_json(out / "semserve_finetune.json", extra)
    return out
