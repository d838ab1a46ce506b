"""The path every model call takes in the front end: find the model, tokenize (off the event
loop for long requests), check lengths, then one core call with the flat token batch."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Awaitable, Hashable, Sequence

import numpy as np

from semserve.config import BatchingConfig
from semserve.core.api import Core
from semserve.core.types import CROSS_ENCODER, ENCODER, ModelDescriptor, Timing, TokenBatch
from semserve.frontend.call_metrics import CallMetrics
from semserve.frontend.errors import invalid_argument
from semserve.frontend.merging import CallMerger, EngineCall
from semserve.frontend.models import ModelDirectory
from semserve.frontend.prompts import prompted, resolve_prompt
from semserve.frontend.tracing import Tracing, now_ns
from semserve.frontend.tokenization import TextInput, TextTokenizer, Tokenized

# How many offending indexes an error message lists before summarising.
_LISTED = 5
# Requests up to this many characters are tokenized on the event loop (tens of microseconds).
INLINE_TOKENIZE_CHARS = 1024


def _chars(inputs: Sequence[TextInput]) -> int:
    return sum(len(x) if isinstance(x, str) else len(x[0]) + len(x[1]) for x in inputs)


def deadline_of(context) -> float | None:
    """The call's deadline on the monotonic clock, or None when the client set none."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Same as torch.nn.functional.normalize (eps 1e-12), which sentence-transformers uses."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


@dataclass
class Outcome:
    model: ModelDescriptor
    values: np.ndarray
    tokenized: Tokenized
    timing: Timing


class Inference:
    def __init__(self, core: Core, models: ModelDirectory, tokenize_pool: Executor, metrics: CallMetrics | None = None,
                 tracing: Tracing | None = None, merger: CallMerger | None = None):
        self.core = core
        self.merger = merger or CallMerger()
        self.models = models
        self._pool = tokenize_pool
        self._metrics = metrics
        self._tracing = tracing or Tracing()

    async def tokenize(
        self, model: ModelDescriptor, tokenizer: TextTokenizer, inputs: Sequence[TextInput], truncate: bool, what: str,
        truncate_left: bool = False,
    ) -> tuple[Tokenized, float]:
        started = time.monotonic()
        if _chars(inputs) <= INLINE_TOKENIZE_CHARS:
            # A thread hop costs more than tokenizing a few short texts on the loop itself.
            tokenized = tokenizer.encode(inputs, truncate, truncate_left, small=True)
        else:
            tokenized = await asyncio.get_running_loop().run_in_executor(
                self._pool, tokenizer.encode, inputs, truncate, truncate_left)
        if not truncate:
            lengths = tokenized.batch.lengths
            over = np.flatnonzero(lengths > model.max_tokens).tolist()
            if over:
                listed = ", ".join(f"{what} {i} has {lengths[i]} tokens" for i in over[:_LISTED])
                more = f" and {len(over) - _LISTED} more" if len(over) > _LISTED else ""
                raise invalid_argument(
                    f"{listed}{more}, over model {model.name!r}'s max_tokens {model.max_tokens}; "
                    "shorten it or send truncate=true"
                )
        seconds = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.observe_tokenize(model.name, seconds)
        return tokenized, seconds

    async def _tokenize_and_run(self, model: ModelDescriptor, tokenizer: TextTokenizer, inputs: Sequence[TextInput],
                                truncate: bool, what: str, run, truncate_left: bool = False):
        """Tokenize, then ``run(batch)`` on the engine, each in its trace span; the result's Timing
        includes the tokenization."""
        with self._tracing.span("tokenize", {"semserve.model": model.name, "semserve.inputs": len(inputs)}):
            tokenized, tokenization_s = await self.tokenize(model, tokenizer, inputs, truncate, what, truncate_left)
        with self._tracing.span("engine", {"semserve.model": model.name}) as span:
            started = now_ns()
            result = await run(tokenized.batch)
            self._tracing.engine_phases(span, started, result.timing)
        result.timing.tokenization_s += tokenization_s
        return tokenized, result

    def _merged(self, kind: Hashable, model: ModelDescriptor, batch: TokenBatch, deadline: float | None,
                run: EngineCall) -> Awaitable:
        """The engine call, merged with this process's concurrent calls of the lane
        (frontend/merging.py); a group holds at most one batch."""
        batching = model.batching or BatchingConfig()  # a table without batching info: the defaults
        return self.merger.call(model.name, kind, batch, deadline, run, batching.max_batch_size,
                                 batching.max_batch_tokens)

    async def embed(
        self, model_name: str, texts: Sequence[str], truncate: bool, normalize: bool, deadline: float | None,
        dimensions: int | None = None, truncate_left: bool = False, prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> Outcome:
        """Embeddings as a float32 matrix: the first ``dimensions`` of each (all when None), then
        normalised when asked. The prompt (frontend/prompts.py) is prepended to every text."""
        model, tokenizer = await self.models.get(model_name, ENCODER)
        texts = prompted(texts, resolve_prompt(model, prompt_name, prompt))
        if dimensions is not None and not 1 <= dimensions <= model.dimension:
            raise invalid_argument(
                f"dimensions must be in 1..{model.dimension} (model {model.name!r}'s dimension), got {dimensions}")
        tokenized, result = await self._tokenize_and_run(
            model, tokenizer, texts, truncate, "text",
            lambda batch: self._merged("encode", model, batch, deadline,
                                       lambda b, d: self.core.encode(model.name, b, d)),
            truncate_left)
        vectors = result.vectors if dimensions is None else result.vectors[:, :dimensions]
        vectors = l2_normalize(vectors) if normalize else vectors
        return Outcome(model, vectors, tokenized, result.timing)

    async def score(
        self, model_name: str, query: str, documents: Sequence[str], truncate: bool, raw: bool,
        deadline: float | None,
    ) -> Outcome:
        """One relevance score per document, in input order."""
        model, tokenizer = await self.models.get(model_name, CROSS_ENCODER)
        pairs = [(query, d) for d in documents]
        tokenized, result = await self._tokenize_and_run(
            model, tokenizer, pairs, truncate, "pair",
            lambda batch: self._merged(("score", raw), model, batch, deadline,
                                       lambda b, d: self.core.score(model.name, b, raw, d)))
        return Outcome(model, result.scores, tokenized, result.timing)
