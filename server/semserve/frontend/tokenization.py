"""Turning texts (or query/document pairs) into flat token batches, in the front end.

The Rust backend of a fast tokenizer is used directly: ``encode_batch`` releases the GIL and
spreads a request's texts over threads. The front end gets the tokenizer as JSON from the
engine (no model folder, no torch). Two copies are kept, one truncating at the model's limit
and one not, so truncation is reported exactly instead of guessed.

Tokenizing was 59% of the front ends' CPU when two H200s served MiniLM, and BERT's normalizer
is a large share of it, though on ASCII it only maps or drops single characters. ASCII inputs
are therefore normalised by ``str.translate`` with a table read from the normalizer itself,
and tokenized by copies with no normalizer: 32-37% less tokenizer time per input, the same ids
(docs/benchmarks.md, "Several GPUs"; tests/test_tokenization_ascii.py). Short requests of
single printable-ASCII texts then go through a plain-Python copy of the model's WordPiece
(frontend/wordpiece.py), a third of the Rust tokenizer's time for one text.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from tokenizers import Encoding, Tokenizer

from semserve.core.types import TokenBatch, TokenizerSpec
from semserve.frontend.wordpiece import WordPiece, printable_ascii

TextInput = Union[str, tuple[str, str]]


@dataclass(slots=True)
class Tokenized:
    batch: TokenBatch
    # Indexes of the inputs cut at the model's limit.
    truncated: list[int]

    @property
    def lengths(self) -> list[int]:
        return self.batch.lengths.tolist()


def ascii_normalization(tokenizer_json: str) -> dict[int, str | None] | None:
    """What the tokenizer's normalizer makes of each ASCII character, as a ``str.translate``
    table, where that is the whole of its effect on ASCII text; else None.

    Only BERT's normalizer is taken: on ASCII each of its steps (drop control characters, turn
    whitespace into spaces, strip accents, lowercase) acts on one character at a time. The
    table is read from the normalizer itself, and checked on a string of every character, so
    the flags of the model's own normalizer are what count."""
    config = json.loads(tokenizer_json)
    if (config.get("normalizer") or {}).get("type") != "BertNormalizer":
        return None
    normalizer = Tokenizer.from_str(tokenizer_json).normalizer
    table: dict[int, str | None] = {}
    for code in range(128):
        out = normalizer.normalize_str(chr(code))
        if len(out) > 1 or not out.isascii():
            return None
        table[code] = out or None
    every = "".join(map(chr, range(128))) * 2
    return table if normalizer.normalize_str(every) == every.translate(table) else None


def _copy(tokenizer_json: str, max_tokens: int | None, direction: str = "right",
          normalized: bool = True) -> Tokenizer:
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    if max_tokens is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_tokens, strategy="longest_first", direction=direction)
    if not normalized:
        tokenizer.normalizer = None
    return tokenizer


class _Backend:
    """One tokenizer setting (truncation), with a copy for ASCII inputs that skips the
    normalizer where ``ascii_normalization`` found a table for it, and the plain-Python
    WordPiece (frontend/wordpiece.py) for short requests of single printable-ASCII texts."""

    def __init__(self, tokenizer_json: str, config: dict, table: dict[int, str | None] | None,
                 added: tuple[str, ...], max_tokens: int | None, direction: str = "right"):
        self.tokenizer = _copy(tokenizer_json, max_tokens, direction)
        self._table = table
        self._added = added
        self._plain = _copy(tokenizer_json, max_tokens, direction, normalized=False) if table else None
        self._wordpiece = (WordPiece.build(config, self._plain, max_tokens, direction == "left")
                           if self._plain is not None else None)

    @property
    def copies_wordpiece(self) -> bool:
        return self._wordpiece is not None

    def _normalized(self, text: str) -> str | None:
        """``text`` as the normalizer would make it, or None where only the normalizer may
        say: non-ASCII text, or text holding an added token's content (those are matched
        before normalising, so on the raw text)."""
        if not text.isascii():
            return None
        out = text.translate(self._table)
        lowered = out.lower()
        if any(token in lowered for token in self._added):
            return None
        return out

    def encode(self, inputs: list[TextInput], small: bool = False) -> tuple[list[list[int]], list[int], list | None]:
        """Each input's ids, the indexes of those truncated, and each input's type ids for pairs
        (None for single texts). ``small``: a request short enough for plain Python."""
        if small and self._wordpiece is not None and not isinstance(inputs[0], tuple):
            normalized = [self._normalized(text) for text in inputs]
            if None not in normalized and printable_ascii(normalized):
                ids, truncated = [], []
                for index, text in enumerate(normalized):
                    one, cut = self._wordpiece.encode(text)
                    ids.append(one)
                    if cut:
                        truncated.append(index)
                return ids, truncated, None
        encodings = self._encodings(inputs)
        types = [e.type_ids for e in encodings] if isinstance(inputs[0], tuple) else None
        return [e.ids for e in encodings], [i for i, e in enumerate(encodings) if e.overflowing], types

    def _encodings(self, inputs: list[TextInput]) -> list[Encoding]:
        if self._plain is None:
            return self.tokenizer.encode_batch_fast(inputs)
        plain: list[TextInput] = []
        where: list[int] = []
        for index, item in enumerate(inputs):
            if isinstance(item, tuple):
                parts = tuple(map(self._normalized, item))
                if None not in parts:
                    plain.append(parts)
                    where.append(index)
            else:
                out = self._normalized(item)
                if out is not None:
                    plain.append(out)
                    where.append(index)
        if len(plain) == len(inputs):
            return self._plain.encode_batch_fast(plain)
        encodings: list[Encoding] = [None] * len(inputs)  # type: ignore[list-item]
        if plain:
            for index, encoding in zip(where, self._plain.encode_batch_fast(plain)):
                encodings[index] = encoding
        rest = [i for i, e in enumerate(encodings) if e is None]
        for index, encoding in zip(rest, self.tokenizer.encode_batch_fast([inputs[i] for i in rest])):
            encodings[index] = encoding
        return encodings


class TextTokenizer:
    def __init__(self, spec: TokenizerSpec):
        self.max_tokens = spec.max_tokens
        self.lowercase = spec.lowercase
        self.pad_id = spec.pad_id
        table = ascii_normalization(spec.tokenizer_json)
        config = json.loads(spec.tokenizer_json)
        added = tuple(token["content"].lower() for token in config.get("added_tokens") or ())
        self._truncating = _Backend(spec.tokenizer_json, config, table, added, spec.max_tokens)
        # Cuts the start instead (TRUNCATION_DIRECTION_LEFT): a copy, as settings are per tokenizer.
        self._truncating_left = _Backend(spec.tokenizer_json, config, table, added, spec.max_tokens, "left")
        self._full = _Backend(spec.tokenizer_json, config, table, added, None)

    def _prepare(self, inputs: Sequence[TextInput]) -> list[TextInput]:
        if not self.lowercase:
            return list(inputs)
        return [tuple(p.lower() for p in x) if isinstance(x, tuple) else x.lower() for x in inputs]

    def encode(self, inputs: Sequence[TextInput], truncate: bool, truncate_left: bool = False,
               small: bool = False) -> Tokenized:
        """Token ids of every input as one flat batch; with truncate=False over-long inputs are
        returned whole (the caller refuses them, naming their index); ``truncate_left`` keeps
        the end of an over-long input instead of its start. ``small`` (a request tokenized on
        the event loop) lets single printable-ASCII texts take the plain-Python WordPiece."""
        if not truncate:
            backend = self._full
        else:
            backend = self._truncating_left if truncate_left else self._truncating
        prepared = self._prepare(inputs)
        # Otherwise the batch call that skips character offsets: the ids, type ids and overflow
        # are all this path reads (20% less time for 32 texts, and 15-20% less for a lone text
        # or pair than ``encode``, docs/benchmarks.md).
        ids, truncated, type_ids = backend.encode(prepared, small)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=total)
        types = None
        if type_ids is not None:
            types = np.fromiter(itertools.chain.from_iterable(type_ids), dtype=np.int8, count=total)
        return Tokenized(TokenBatch(flat, offsets, types, lengths), truncated)

    def describe(self, inputs: Sequence[TextInput], truncate: bool) -> list[tuple[Encoding, int]]:
        """Full encodings (pieces, offsets, special mask) and each input's untruncated length."""
        prepared = self._prepare(inputs)
        full = self._full.tokenizer.encode_batch(prepared)
        shown = self._truncating.tokenizer.encode_batch(prepared) if truncate else full
        return [(e, len(f.ids)) for e, f in zip(shown, full)]
