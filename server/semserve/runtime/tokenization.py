"""Turning texts (or query/document pairs) into token ids, off the event loop.

The Rust backend of a fast tokenizer is used directly: ``encode_batch`` releases the GIL
and spreads a request's texts over threads. Two copies are kept, one truncating at the
model's limit and one not, so truncation is reported exactly instead of guessed.
"""

from __future__ import annotations

from typing import Sequence, Union

from tokenizers import Encoding, Tokenizer

TextInput = Union[str, tuple[str, str]]


class Encoded:
    """Token ids of one input, ready for padding.

    A plain slotted class: one is made per text on the hot path, and a frozen dataclass's
    ``__init__`` costs several times more.
    """

    __slots__ = ("ids", "type_ids", "truncated", "length")

    def __init__(self, ids: list[int], type_ids: list[int] | None, truncated: bool):
        self.ids = ids
        self.type_ids = type_ids
        self.truncated = truncated
        self.length = len(ids)

    def __repr__(self) -> str:
        return f"Encoded(ids={self.ids}, type_ids={self.type_ids}, truncated={self.truncated})"


class TextTokenizer:
    def __init__(self, hf_tokenizer, max_tokens: int, lowercase: bool = False):
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("a fast (Rust) tokenizer is required: the folder needs a tokenizer.json")
        serialized = backend.to_str()
        self.max_tokens = max_tokens
        self.lowercase = lowercase
        self.pad_id = hf_tokenizer.pad_token_id or 0
        self._truncating = Tokenizer.from_str(serialized)
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_tokens, strategy="longest_first")
        self._full = Tokenizer.from_str(serialized)
        self._full.no_padding()
        self._full.no_truncation()

    def _prepare(self, inputs: Sequence[TextInput]) -> list[TextInput]:
        if not self.lowercase:
            return list(inputs)
        return [tuple(p.lower() for p in x) if isinstance(x, tuple) else x.lower() for x in inputs]

    def encode(self, inputs: Sequence[TextInput], truncate: bool) -> list[Encoded]:
        """Token ids per input; with truncate=False over-long inputs are returned whole
        (the caller refuses them, naming their index)."""
        backend = self._truncating if truncate else self._full
        prepared = self._prepare(inputs)
        if len(prepared) == 1:  # skips the batch path's thread-pool fan-out for a lone text
            single = prepared[0]
            encodings = [backend.encode(*single) if isinstance(single, tuple) else backend.encode(single)]
        else:
            encodings = backend.encode_batch(prepared)
        if isinstance(prepared[0], tuple):
            return [Encoded(e.ids, e.type_ids, bool(e.overflowing)) for e in encodings]
        # A single segment's type ids are all zero: the runner fills them without copying.
        return [Encoded(e.ids, None, bool(e.overflowing)) for e in encodings]

    def describe(self, inputs: Sequence[TextInput], truncate: bool) -> list[tuple[Encoding, int]]:
        """Full encodings (pieces, offsets, special mask) and each input's untruncated length."""
        prepared = self._prepare(inputs)
        full = self._full.encode_batch(prepared)
        shown = self._truncating.encode_batch(prepared) if truncate else full
        return [(e, len(f.ids)) for e, f in zip(shown, full)]
