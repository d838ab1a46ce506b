"""The layers that may follow pooling in a sentence-transformers stack: Dense and Normalize.

Both work on the pooled [batch, dimension] tensor. Configs that point them at other features
(``module_input_name`` = "token_embeddings", as multi-vector models do) describe something a
single-vector encoder cannot serve, so they are refused rather than silently misapplied.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from semserve.models.errors import ModelLoadError
from semserve.models.st_folder import import_torch_module, read_optional_json_object

_POOLED = "sentence_embedding"
_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"


def _require_pooled_io(config: dict, source: Path, kind: str) -> None:
    for key in ("module_input_name", "module_output_name"):
        value = config.get(key)
        if value is not None and value != _POOLED:
            raise ModelLoadError(
                f"{source}: {kind} reads or writes {value!r} ({key}); only {_POOLED!r} can be served"
            )


class Dense(nn.Module):
    """activation(linear(x)), plus an optional residual, as sentence-transformers' Dense computes it."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: nn.Module | None = None,
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation if activation is not None else nn.Tanh()
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.in_features == self.out_features else self.residual(x))
        return out


class Normalize(nn.Module):
    """L2 normalisation with torch's default epsilon, which is what sentence-transformers uses."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2, dim=-1)


def _int_field(config: dict, key: str, source: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{source}: Dense {key} must be a positive integer, found {value!r}")
    return value


def _load_weights(folder: Path) -> dict[str, Tensor]:
    safetensors_path, bin_path = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if safetensors_path.is_file():
            return load_file(str(safetensors_path))
        if bin_path.is_file():
            # weights_only: a .bin is a pickle, and a model folder is not trusted code.
            return torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and pickle raise a zoo of types for a corrupt file
        raise ModelLoadError(f"cannot read Dense weights in {folder}: {exc}") from exc
    raise ModelLoadError(f"Dense folder {folder} has neither model.safetensors nor pytorch_model.bin")


def load_dense(folder: Path) -> Dense:
    """Build a Dense layer from its folder (config.json + weights)."""
    source = folder / "config.json"
    if not source.is_file():
        raise ModelLoadError(f"Dense folder {folder} has no config.json")
    config = read_optional_json_object(source)
    _require_pooled_io(config, source, "Dense")
    layer = Dense(
        in_features=_int_field(config, "in_features", source),
        out_features=_int_field(config, "out_features", source),
        bias=bool(config.get("bias", True)),
        activation=import_torch_module(
            config.get("activation_function") or _DEFAULT_ACTIVATION, source, "activation_function"
        ),
        use_residual=bool(config.get("use_residual", False)),
    )
    state = _load_weights(folder)
    expected = set(layer.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ModelLoadError(
            f"Dense weights in {folder} do not match its config: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    try:
        layer.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatch between config and weights
        raise ModelLoadError(f"Dense weights in {folder} do not match its config: {exc}") from exc
    return layer


def load_normalize(folder: Path) -> Normalize:
    """Normalize usually has no files at all; a 6.x config only matters if it redirects the input."""
    source = folder / "config.json"
    _require_pooled_io(read_optional_json_object(source), source, "Normalize")
    return Normalize()
