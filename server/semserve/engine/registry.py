"""The models a server hosts: each with its tokenizer, its replicas (one per device), their
workers and one dynamic batcher. Requests name a model; an empty name means the default of
the kind the RPC needs."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semserve.config import BatchingConfig, ModelSpec
from semserve.core.errors import AlreadyExists, ModelNotFound
from semserve.core.models import find_model
from semserve.core.quantization import RANGES_FILE, QuantizationRanges
from semserve.core.types import CROSS_ENCODER, ENCODER, BatchingInfo, ModelCounters, ModelDescriptor, TokenizerSpec
from semserve.engine.batching import DynamicBatcher
from semserve.engine.runtime import calibration
from semserve.engine.runtime.devices import dtype_name, resolve_dtype
from semserve.engine.runtime.packing import PackedRunner, make_runner
from semserve.engine.runtime.runners import ModelRunner
from semserve.engine.runtime.worker import DeviceWorker
from semserve.engine.stats import ModelStats
from semserve.models.errors import ModelLoadError

log = logging.getLogger(__name__)

# Time a model may spend at load capturing CUDA graphs per device (cheapest shapes first).
GRAPH_CAPTURE_BUDGET_S = 20.0

_LOAD_IDS = itertools.count(1)


@dataclass
class HostedModel:
    name: str
    kind: str
    path: Path
    tokenizer: TokenizerSpec
    batcher: DynamicBatcher
    stats: ModelStats
    devices: list[str]
    dtype: str
    max_tokens: int
    # Embedding dimension for encoders, number of labels for cross-encoders.
    dimension: int
    pooling: str = ""
    # The loaded modules, one per device (kept for heads that act after the batch, e.g. activation).
    replicas: list[Any] = field(default_factory=list)
    load_id: int = 0
    batching: BatchingInfo | None = None
    quantization: QuantizationRanges | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    # Requests currently using this model; an unload waits for them so none is lost.
    active_requests: int = 0
    _idle: asyncio.Event | None = None

    def release(self) -> None:
        """One request that counted itself in ``active_requests`` is done with the model."""
        self.active_requests -= 1
        if self.active_requests == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request uses the model; False if some still do after timeout_s."""
        while self.active_requests:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                return False
        return True


def load_model(
    spec: ModelSpec, devices: list[str], dtype_spec: str, batching: BatchingConfig, cuda_graphs: bool = True,
    calibration_dir: Path | None = None, unpadded: bool = True,
) -> HostedModel:
    """Load one replica per device and build the model's workers and batcher.

    Heavy and blocking: call it before the event loop serves, or in an executor. The batcher
    is created here but started by ``HostedModel.batcher.start()`` on the serving loop.
    """
    stats = ModelStats(model=spec.name)
    replicas, workers = [], []
    for device in devices:
        dtype = resolve_dtype(dtype_spec, device)
        if spec.kind == ENCODER:
            from semserve.models.encoder import load_encoder

            model = load_encoder(spec.path, device=device, dtype=dtype)
        elif spec.kind == CROSS_ENCODER:
            from semserve.models.cross_encoder import load_cross_encoder

            model = load_cross_encoder(spec.path, device=device, dtype=dtype)
        else:
            raise ValueError(f"unknown model kind {spec.kind!r}")
        replicas.append(model)
    first = replicas[0]
    load_id = next(_LOAD_IDS)
    tokenizer = tokenizer_spec(spec.name, load_id, first)
    runners = [make_runner(model, tokenizer.pad_id, cuda_graphs, unpadded) for model in replicas]
    dtype = dtype_name(resolve_dtype(dtype_spec, devices[0]))
    batching, info = choose_batching(spec, runners, devices, dtype, batching, cuda_graphs, calibration_dir)
    for runner in runners:
        graph_sizes = runner.set_batch_limits(batching.max_batch_tokens, batching.max_batch_size)
    info = dataclasses.replace(info, graph_batch_sizes=graph_sizes)
    for runner in runners:
        capture = runner.capture_graphs(GRAPH_CAPTURE_BUDGET_S)
        if capture is not None:
            log.info("CUDA graphs for %s on %s (%s): %d of %d shapes captured ahead in %.1fs%s",
                     spec.name, runner.device, runner.execution, capture[0], capture[1], capture[2],
                     "" if capture[0] == capture[1] else "; the rest on first use")
    workers = [DeviceWorker(runner, stats, batching.worker_pipeline_depth) for runner in runners]
    # A single input may never exceed the batch budget, or it could not be batched at all.
    if batching.max_batch_tokens < first.max_tokens:
        log.warning(
            "max_batch_tokens %d is below %s's max_tokens %d: long inputs will run in batches of one",
            batching.max_batch_tokens, spec.name, first.max_tokens,
        )
    batcher = DynamicBatcher(spec.name, workers, batching, stats)
    batcher.tokens_per_s = info.tokens_per_s
    return HostedModel(
        name=spec.name,
        kind=spec.kind,
        path=Path(spec.path),
        tokenizer=tokenizer,
        batcher=batcher,
        stats=stats,
        devices=list(devices),
        dtype=dtype,
        max_tokens=first.max_tokens,
        dimension=first.dimension if spec.kind == ENCODER else first.num_labels,
        pooling=getattr(first, "pooling", "") if spec.kind == ENCODER else "",
        replicas=replicas,
        load_id=load_id,
        batching=info,
        quantization=quantization_ranges(spec, first.dimension) if spec.kind == ENCODER else None,
        prompts=dict(getattr(first, "prompts", {}) or {}),
        default_prompt_name=default_prompt(spec, first),
    )


def default_prompt(spec: ModelSpec, model: Any) -> str | None:
    """The prompt applied when a request names none: the flag's, else the folder's, else none."""
    prompts = getattr(model, "prompts", {}) or {}
    name = spec.default_prompt_name or getattr(model, "default_prompt_name", None)
    if spec.default_prompt_name and spec.default_prompt_name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ModelLoadError(f"model {spec.name!r} has no prompt named {spec.default_prompt_name!r}; its prompts: {known}")
    return name if name in prompts else None


def quantization_ranges(spec: ModelSpec, dimension: int) -> QuantizationRanges:
    try:
        return QuantizationRanges.for_model(Path(spec.path), dimension)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model {spec.name!r}: {RANGES_FILE} is not usable: {exc}") from None


def choose_batching(
    spec: ModelSpec, runners: list[ModelRunner | PackedRunner], devices: list[str], dtype: str, batching: BatchingConfig,
    cuda_graphs: bool, calibration_dir: Path | None,
) -> tuple[BatchingConfig, BatchingInfo]:
    """The batcher's budget and size cap: measured on every device (engine/runtime/calibration.py)
    unless the policy is fixed; values given explicitly are kept. One line per model and device."""
    if batching.policy != "measured":
        return batching, BatchingInfo("fixed", batching.max_batch_tokens, batching.max_batch_size)
    choices = []
    for runner, device in zip(runners, devices):
        cache_file = None
        if calibration_dir is not None:
            key = calibration.cache_key(spec.path, device, calibration.device_name(device), dtype, cuda_graphs,
                                        runner.execution)
            cache_file = calibration_dir / f"{spec.name}-{key}.json"
        choice = calibration.calibrate(
            runner.forward_shape, max_tokens=runner.model.max_tokens, budget_s=batching.calibration_seconds,
            cache_file=cache_file,
        )
        choices.append(choice)
    # One batcher feeds every replica: the first device's shape, the devices' summed throughput.
    first = choices[0]
    effective = dataclasses.replace(
        batching,
        max_batch_tokens=batching.max_batch_tokens if "max_batch_tokens" in batching.explicit else first.max_batch_tokens,
        max_batch_size=batching.max_batch_size if "max_batch_size" in batching.explicit else first.max_batch_size,
    )
    kept = " and ".join(f"--{name.replace('_', '-')}" for name in sorted(batching.explicit))
    for choice, device in zip(choices, devices):
        log.info(
            "batching %s on %s: max_batch_tokens %d, max_batch_size %d (measured: %d tokens / %d items, "
            "%.0f tokens/s there, best %.0f%s); %s",
            spec.name, device, effective.max_batch_tokens, effective.max_batch_size, choice.max_batch_tokens,
            choice.max_batch_size, choice.tokens_per_s, choice.best_tokens_per_s,
            f"; {kept} given, kept" if kept else "",
            "measurement from the cache" if choice.cached else f"measured in {choice.seconds:.1f}s",
        )
    info = BatchingInfo(
        policy="measured", max_batch_tokens=effective.max_batch_tokens, max_batch_size=effective.max_batch_size,
        tokens_per_s=sum(c.tokens_per_s for c in choices), calibration_s=sum(c.seconds for c in choices),
        from_cache=all(c.cached for c in choices),
    )
    return effective, info


def tokenizer_spec(name: str, load_id: int, model) -> TokenizerSpec:
    """The model's fast tokenizer as JSON, so front ends tokenize without loading the model."""
    hf_tokenizer = model.tokenizer
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"model {name!r}: a fast (Rust) tokenizer is required: the folder needs a tokenizer.json")
    return TokenizerSpec(
        name=name, load_id=load_id, tokenizer_json=backend.to_str(), max_tokens=model.max_tokens,
        lowercase=bool(getattr(model, "lowercase", False)), pad_id=hf_tokenizer.pad_token_id or 0,
    )


def describe(model: HostedModel, is_default: bool, with_counters: bool = False) -> ModelDescriptor:
    counters = None
    if with_counters:
        s = model.stats
        counters = ModelCounters(s.batches, s.items, s.tokens, s.padded_tokens, model.batcher.queued_items,
                                 s.rejected_requests, model.active_requests)
    return ModelDescriptor(
        name=model.name, kind=model.kind, load_id=model.load_id, dimension=model.dimension,
        max_tokens=model.max_tokens, devices=list(model.devices), dtype=model.dtype, path=str(model.path),
        pooling=model.pooling, is_default=is_default, counters=counters, batching=model.batching,
        quantization=model.quantization, prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name,
    )


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, HostedModel] = {}
        self._defaults: dict[str, str] = {}
        # Names being loaded at run time, so two loads cannot race for one name.
        self._reserved: set[str] = set()

    def reserve(self, name: str) -> None:
        if name in self._models or name in self._reserved:
            raise AlreadyExists(f"a model named {name!r} is already loaded or loading")
        self._reserved.add(name)

    def release(self, name: str) -> None:
        self._reserved.discard(name)

    def add(self, model: HostedModel) -> None:
        if model.name in self._models:
            raise AlreadyExists(f"a model named {model.name!r} is already loaded")
        self._models[model.name] = model
        self._defaults.setdefault(model.kind, model.name)

    def remove(self, name: str) -> HostedModel:
        model = self._models.pop(name, None)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}; loaded: {', '.join(self._models) or 'none'}")
        if self._defaults.get(model.kind) == name:
            del self._defaults[model.kind]
            same_kind = [m.name for m in self._models.values() if m.kind == model.kind]
            if same_kind:
                self._defaults[model.kind] = same_kind[0]
        return model

    def get(self, name: str, kind: str) -> HostedModel:
        return find_model(self._models, self._defaults, name, kind)

    def find(self, name: str) -> HostedModel:
        """The model of that name, whatever its kind."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name!r}")
        return model

    def is_default(self, model: HostedModel) -> bool:
        return self._defaults.get(model.kind) == model.name

    def __iter__(self):
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    async def stop_all(self, wait_s: float | None = None) -> None:
        await asyncio.gather(*(m.batcher.stop(wait_s) for m in self._models.values()), return_exceptions=True)
