"""Texts to model inputs and embeddings, exactly the way the server prepares them.

Training and evaluation must see texts the way serving will: lowercased when the folder says so,
truncated at the model's limit, no prompt prepended. Any difference would make the measured
improvement one that the served model does not have.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from semserve.models.encoder import Encoder


def tokenize(encoder: Encoder, texts: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    """Pad a batch to its longest text and move it to ``device``."""
    prepared = [text.lower() for text in texts] if encoder.lowercase else list(texts)
    batch = encoder.tokenizer(
        prepared,
        padding=True,
        truncation=True,
        max_length=encoder.max_tokens,
        return_tensors="pt",
    )
    return {key: value.to(device) for key, value in batch.items()}


def forward_texts(encoder: Encoder, texts: Sequence[str]) -> Tensor:
    """Embed with whatever grad and train/eval mode the caller has set."""
    inputs = tokenize(encoder, texts, encoder.device)
    return encoder(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))


@torch.inference_mode()
def embed(encoder: Encoder, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Unit-length float32 CPU embeddings in eval mode, batched in length order.

    Sorting by length keeps padding (and time) down; the order is restored before returning.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), encoder.dimension, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            vectors = forward_texts(encoder, [texts[i] for i in chunk])
            out[chunk] = F.normalize(vectors.float(), dim=-1).cpu()
        return out
    finally:
        encoder.train(was_training)
