"""Unpadded ("packed") execution of BERT encoders: a batch's tokens in one flat sequence.

A padded batch spends the model's FLOPs on padding: 1.4x the real tokens for the benchmark's
32-text requests, more for mixed lengths (docs/benchmarks.md), and once a GPU is kept busy those
FLOPs are the limit. Here every layer runs on a ``[tokens, hidden]`` matrix of real tokens only;
attention stays within each text through variable-length flash attention, whose cumulative
sequence lengths (``cu_seqlens``, as text-embeddings-inference's flat batches carry) mark where each
text starts. Linear layers, layer norms and activations are per token, so they give what the padded
model gives; the query, key and value projections are fused into one matrix product.

Only what can be reproduced exactly is packed: Hugging Face ``BertModel`` with absolute positions
and no cross-attention (BERT, MiniLM, most sentence-transformers and cross-encoder checkpoints),
on a CUDA device in float16 or bfloat16, where the flash kernel runs. Everything else keeps the
padded path. On other devices ``varlen_attention`` falls back to a block-diagonal mask, which
tests use to check the packed arithmetic against the padded model on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class PackedInputs:
    """A batch as flat token arrays (``tokens`` long), on the model's device.

    ``segments[i]`` is the slot of token i; ``cu_seqlens`` (int32, slots + 1) the slots' starts
    and end; ``max_seqlen`` bounds every slot's length. Slots past the real texts hold padding
    tokens or nothing, and their outputs are dropped by the caller.
    """

    input_ids: Tensor
    token_type_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    cu_seqlens: Tensor
    max_seqlen: int

    @property
    def slots(self) -> int:
        return self.cu_seqlens.shape[0] - 1


def packing_refusal(model: nn.Module, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str | None:
    """Why ``model`` (a transformers BertModel) cannot run packed, or None when it can.

    With ``device``/``dtype`` given, also whether the flash kernel exists for them.
    """
    from transformers import BertModel

    if type(model) is not BertModel:
        return f"{type(model).__name__} is not a BertModel"
    config = model.config
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} is not absolute"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "the model is a decoder or has cross-attention"
    head_dim = config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size or head_dim % 8 or head_dim > 256:
        return f"head size {head_dim} is not one the flash kernel takes"
    if device is not None and device.type != "cuda":
        return f"variable-length flash attention needs a CUDA device, not {device.type}"
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"variable-length flash attention needs float16 or bfloat16, not {dtype}"
    return None


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, inputs: PackedInputs, scale: float) -> Tensor:
    """Attention of ``[tokens, heads, head_dim]`` tensors within each slot of ``inputs``."""
    if q.is_cuda:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, inputs.cu_seqlens, inputs.cu_seqlens, inputs.max_seqlen, inputs.max_seqlen,
            0.0, False, False, scale=scale,
        )[0]
        return out
    # Reference path (tests on a CPU): one attention over all tokens, masked block-diagonally.
    same = inputs.segments[:, None] == inputs.segments[None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=same, scale=scale,
    )
    return out.transpose(0, 1)


class PackedBert(nn.Module):
    """A BertModel's forward on packed tokens: ``[tokens]`` ids in, ``[tokens, hidden]`` out.

    Shares the model's weights except for the fused query/key/value matrices (a copy of
    3 x hidden^2 per layer, a few percent of the model).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        refusal = packing_refusal(bert)
        if refusal is not None:
            raise ValueError(f"cannot pack: {refusal}")
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        config = bert.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        fused = []
        for layer in self.layers:
            attention = layer.attention.self
            weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
            bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
            fused.append((weight.detach().clone(), bias.detach().clone()))
        self._qkv = fused

    def forward(self, inputs: PackedInputs) -> Tensor:
        embeddings = self.embeddings
        hidden = (embeddings.word_embeddings(inputs.input_ids)
                  + embeddings.token_type_embeddings(inputs.token_type_ids)
                  + embeddings.position_embeddings(inputs.position_ids))
        hidden = embeddings.LayerNorm(hidden)
        tokens = hidden.shape[0]
        for layer, (qkv_weight, qkv_bias) in zip(self.layers, self._qkv):
            qkv = F.linear(hidden, qkv_weight, qkv_bias).view(tokens, 3, self.heads, self.head_dim)
            context = varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], inputs, self.scale)
            attention_output = layer.attention.output
            hidden = attention_output.LayerNorm(attention_output.dense(context.reshape(tokens, -1)) + hidden)
            intermediate = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
            hidden = layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)
        return hidden

    def _apply(self, fn, recurse=True):
        """Keep the fused copies on the model's device and dtype when it moves."""
        result = super()._apply(fn, recurse)
        self._qkv = [(fn(w), fn(b)) for w, b in self._qkv]
        return result


def pool_packed(modes: tuple[str, ...], tokens: Tensor, inputs: PackedInputs) -> Tensor:
    """Pool ``[tokens, hidden]`` per slot: ``[slots, hidden * len(modes)]``, with the arithmetic
    of ``Pooling`` (pooling.py) on the padded batch: fp32 sums for half-precision inputs, the
    count clamp, position weights counted from each text's first token."""
    outputs = [_pool_packed(mode, tokens, inputs) for mode in modes]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


def _pool_packed(mode: str, tokens: Tensor, inputs: PackedInputs) -> Tensor:
    slots, hidden = inputs.slots, tokens.shape[1]
    half = tokens.dtype in (torch.float16, torch.bfloat16)
    accumulate = torch.float32 if half else tokens.dtype
    cu = inputs.cu_seqlens.long()
    last = tokens.shape[0] - 1
    if mode == "cls":
        return tokens[cu[:-1].clamp(max=last)]
    if mode == "lasttoken":
        return tokens[(cu[1:] - 1).clamp(min=0, max=last)]
    if mode == "max":
        out = torch.full((slots, hidden), float("-inf"), dtype=tokens.dtype, device=tokens.device)
        index = inputs.segments[:, None].expand(-1, hidden)
        return out.scatter_reduce(0, index, tokens, "amax", include_self=True)
    counts = (cu[1:] - cu[:-1]).to(accumulate)[:, None]
    if mode in ("mean", "mean_sqrt_len"):
        total = torch.zeros((slots, hidden), dtype=accumulate, device=tokens.device)
        total.index_add_(0, inputs.segments, tokens.to(accumulate))
        count = torch.clamp(counts, min=1e-9)
        return (total / (count if mode == "mean" else torch.sqrt(count))).to(tokens.dtype)
    if mode == "weightedmean":
        weights = (inputs.position_ids + 1).to(accumulate)[:, None]
        total = torch.zeros((slots, hidden), dtype=accumulate, device=tokens.device)
        total.index_add_(0, inputs.segments, tokens.to(accumulate) * weights)
        weight_sums = counts * (counts + 1) / 2
        return (total / torch.clamp(weight_sums, min=1e-9)).to(tokens.dtype)
    raise ValueError(f"unsupported pooling mode {mode!r}")
