"""Contrastive fine-tuning of a loaded ``Encoder`` with plain torch.

The server's own module is trained rather than a sentence-transformers copy of it, so what is
measured after training is exactly the computation that will be served.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from semserve.models.encoder import Encoder
from semserve.training.batches import group_batches
from semserve.training.embedding import forward_texts
from semserve.training.loss import symmetric_infonce
from semserve.training.pairs import Pair, synonym_groups


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-5
    # 1/temperature of the softmax over cosines; 20 is sentence-transformers' MNRL default.
    scale: float = 20.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    # Embeddings plus this many bottom transformer layers stay fixed: cheaper steps, and less
    # drift from the general-purpose model on a small dictionary.
    freeze_layers: int = 0
    # Dropout stays on while training, as in sentence-transformers; off only for experiments.
    dropout: bool = True


@dataclass
class FinetuneResult:
    steps: int
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0


def _layer_stack(transformer: nn.Module) -> nn.ModuleList | None:
    """The ModuleList holding the transformer blocks, found by its length rather than its name."""
    config = transformer.config.get_text_config() if hasattr(transformer.config, "get_text_config") else transformer.config
    count = getattr(config, "num_hidden_layers", None)
    for module in transformer.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    return None


def freeze_lower_layers(encoder: Encoder, layers: int) -> None:
    """Freeze the input embeddings and the first ``layers`` transformer blocks."""
    if layers <= 0:
        return
    stack = _layer_stack(encoder.transformer)
    if stack is None:
        raise ValueError("cannot find the transformer's layer stack, so --freeze-layers cannot be applied")
    if layers > len(stack):
        raise ValueError(f"--freeze-layers {layers} exceeds the model's {len(stack)} layers")
    embeddings = getattr(encoder.transformer, "embeddings", None) or encoder.transformer.get_input_embeddings()
    embeddings.requires_grad_(False)
    for block in stack[:layers]:
        block.requires_grad_(False)


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then linear decay to zero, the usual schedule for fine-tuning BERT-style models."""
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def finetune(
    encoder: Encoder,
    pairs: list[Pair],
    config: FinetuneConfig,
    progress: bool = True,
) -> FinetuneResult:
    """Train ``encoder`` in place on ``pairs``; it is left in eval mode with gradients off.

    Deterministic for a given seed on CPU: batch order comes from ``random.Random(seed)`` and
    dropout from a torch generator seeded inside a forked RNG state, so a caller's own random
    state is neither used nor disturbed.
    """
    if len(pairs) < 2:
        raise ValueError("contrastive training needs at least two synonym pairs")
    groups = synonym_groups(pairs)
    if len(set(groups)) < 2:
        raise ValueError("all pairs are synonyms of each other, so there are no negatives to learn from")
    rng = random.Random(config.seed)
    device = encoder.device
    fork_devices = [device.index or 0] if device.type == "cuda" else []

    encoder.requires_grad_(True)
    freeze_lower_layers(encoder, config.freeze_layers)
    parameters = [p for p in encoder.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]  # biases and LayerNorm weights
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    epochs = [group_batches(groups, config.batch_size, rng) for _ in range(config.epochs)]
    total = sum(len(batches) for batches in epochs)
    scheduler = _schedule(optimizer, total, config.warmup_ratio)
    result = FinetuneResult(steps=total, trainable_parameters=sum(p.numel() for p in parameters))

    started = time.perf_counter()
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        encoder.train(config.dropout)
        bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress, dynamic_ncols=True)
        try:
            for epoch, batches in enumerate(epochs, start=1):
                running, counted = 0.0, 0
                for batch in batches:
                    if len(batch) < 2:  # a lone pair has no negative: nothing to learn, skip the step
                        scheduler.step()
                        bar.update(1)
                        continue
                    terms = forward_texts(encoder, [pairs[i].term for i in batch])
                    synonyms = forward_texts(encoder, [pairs[i].synonym for i in batch])
                    loss = symmetric_infonce(terms, synonyms, config.scale)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    running += loss.item() * len(batch)
                    counted += len(batch)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch}/{config.epochs}", loss=f"{loss.item():.4f}")
                result.epoch_losses.append(running / max(1, counted))
        finally:
            bar.close()
            encoder.eval()
            encoder.requires_grad_(False)
    result.seconds = time.perf_counter() - started
    return result
