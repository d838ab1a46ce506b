"""Token-to-sentence pooling with the exact arithmetic of sentence-transformers 6.x.

Every mode reads the attention mask, so padding never leaks into an embedding: a text embeds to
the same vector whichever batch it is padded into. The formulas mirror
``sentence_transformers.sentence_transformer.modules.pooling.Pooling._forward_padded`` term by term
(including the clamp of the token count at 1e-9 and the fp32 accumulation for half-precision
inputs) because parity with sentence-transformers is checked to 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from semserve.models.errors import ModelLoadError

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken")

# sentence-transformers spellings -> ours. "mean_sqrt_len_tokens" is the only one that differs.
_ST_MODE_NAMES = {"mean_sqrt_len_tokens": "mean_sqrt_len", **{mode: mode for mode in POOLING_MODES}}

# Old configs pick modes with booleans. Their order is the order the pooled vectors were
# concatenated in, which sentence-transformers 6.x keeps for backward compatibility.
_LEGACY_BOOLEANS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def parse_pooling_config(config: dict[str, Any], source: Path) -> tuple[tuple[str, ...], int | None]:
    """Return (modes, input dimension) from a Pooling config.json of either generation.

    As in sentence-transformers, an explicit ``pooling_mode`` wins over the booleans, and a config
    with no mode at all means mean pooling.
    """
    raw = config.get("pooling_mode")
    if raw is None:
        modes = tuple(mode for key, mode in _LEGACY_BOOLEANS if config.get(key, False))
        modes = modes or ("mean",)
    else:
        names = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, (list, tuple)) else None
        if not names or not all(isinstance(name, str) and name in _ST_MODE_NAMES for name in names):
            raise ModelLoadError(f"{source}: unsupported pooling_mode {raw!r}; supported: {POOLING_MODES}")
        modes = tuple(_ST_MODE_NAMES[name] for name in names)
    dimension = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if dimension is not None and (isinstance(dimension, bool) or not isinstance(dimension, int) or dimension <= 0):
        raise ModelLoadError(f"{source}: embedding_dimension must be a positive integer, found {dimension!r}")
    return modes, dimension


class Pooling(nn.Module):
    """Reduce [batch, tokens, hidden] to [batch, hidden * len(modes)] over the attended tokens."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        super().__init__()
        unknown = [mode for mode in modes if mode not in POOLING_MODES]
        if not modes or unknown:
            raise ValueError(f"unsupported pooling modes {unknown or modes}; supported: {POOLING_MODES}")
        self.modes = tuple(modes)

    @property
    def name(self) -> str:
        """One mode's name, or several joined by '+' in concatenation order."""
        return "+".join(self.modes)

    def forward(self, token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
        outputs = [self._pool(mode, token_embeddings, attention_mask) for mode in self.modes]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    @staticmethod
    def _pool(mode: str, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        half = tokens.dtype in (torch.float16, torch.bfloat16)
        accumulate = torch.float32 if half else tokens.dtype

        if mode == "cls":
            # The first attended position: token 0 with right padding, and still the [CLS] token if
            # a tokenizer pads on the left.
            first = attention_mask.to(torch.int).argmax(dim=1)
            index = first.view(-1, 1, 1).expand(-1, 1, tokens.shape[-1])
            return torch.gather(tokens, 1, index).squeeze(1)

        if mode == "max":
            mask = attention_mask.unsqueeze(-1).expand_as(tokens).to(tokens.dtype)
            return tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values

        if mode in ("mean", "mean_sqrt_len"):
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            total = (tokens * mask).sum(dim=1, dtype=accumulate)
            count = torch.clamp(mask.sum(dim=1, dtype=accumulate), min=1e-9)
            pooled = total / (count if mode == "mean" else torch.sqrt(count))
            return pooled.to(tokens.dtype)

        if mode == "weightedmean":
            # Position weights 1..n counted from the first real token, so left padding does not shift them.
            mask = attention_mask.unsqueeze(-1).to(accumulate)
            weights = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=accumulate).view(1, -1, 1)
            weights = weights - attention_mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1)
            weighted_mask = mask * weights
            total = (tokens * weighted_mask).sum(dim=1)
            return (total / torch.clamp(weighted_mask.sum(dim=1), min=1e-9)).to(tokens.dtype)

        # lasttoken: the last attended position, found from the right so either padding side works.
        batch, length, hidden = tokens.shape
        values, from_end = attention_mask.flip(1).max(1)
        from_end = torch.where(values == 0, length - 1, from_end)
        index = (length - from_end - 1).view(-1, 1, 1).expand(-1, 1, hidden)
        mask = attention_mask.unsqueeze(-1).expand_as(tokens).to(tokens.dtype)
        return torch.gather(tokens * mask, 1, index).squeeze(1)
