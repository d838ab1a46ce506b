"""BERT's WordPiece for single texts of printable ASCII, in plain Python, exact to the model's own
tokenizer: a third of its time for a single text.

A single-text call's Python in a front end is mostly gRPC's and the tokenizer's, and the Rust
tokenizer spends 26-29 µs on one short text (pre-tokenizer, model and post-processor objects,
offsets, an ``Encoding``) where splitting words and looking them up in the vocabulary takes 9
(CPU machine, docs/benchmarks.md run 33). On printable ASCII, already normalised
(frontend/tokenization.py), each step is simple:

- BERT's pre-tokenizer splits on whitespace, and every ASCII character that is neither a letter
  nor a digit is punctuation, a token of its own;
- WordPiece takes a word whole when the vocabulary has it, else the longest known prefix, then
  the longest known ``##`` continuations, and a word it cannot cover (or longer than
  ``max_input_chars_per_word``) becomes the unknown token;
- the template adds its special tokens around the text, and truncation cuts the words' ids to
  what the template leaves of ``max_tokens``, from the right or the left.

``WordPiece.build`` takes only tokenizers that are this (a WordPiece model, BERT's
pre-tokenizer, a template of special tokens around one sequence) and checks the copy against
the tokenizer itself on probe texts of every printable ASCII character, words the vocabulary
holds, splits, unknown and over-long words, in every truncation setting; any difference and
the model's own tokenizer does all the work, as it does for pairs and for non-ASCII text.
"""

from __future__ import annotations

import random
import re
import string
from typing import Sequence

from tokenizers import Tokenizer

# BERT's pre-tokenizer on printable ASCII: runs of letters and digits, and single other characters.
_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 ]")


class WordPiece:
    """``encode(text)`` is ``(ids, truncated)`` as the model's tokenizer gives them for a single
    normalised text of printable ASCII, under one truncation setting."""

    def __init__(self, vocab: dict[str, int], prefix: str, unk: int, max_chars: int,
                 before: list[int], after: list[int], max_tokens: int | None, from_left: bool):
        self._vocab = vocab
        self._continuations = {token[len(prefix):]: i for token, i in vocab.items() if token.startswith(prefix)}
        self._unk = unk
        self._max_chars = max_chars
        self._before = before
        self._after = after
        self._room = None if max_tokens is None else max(0, max_tokens - len(before) - len(after))
        self._from_left = from_left

    @classmethod
    def build(cls, config: dict, reference: Tokenizer, max_tokens: int | None,
              from_left: bool) -> "WordPiece | None":
        """The copy of ``reference`` (the model's tokenizer without its normalizer, with this
        truncation; ``config`` its parsed JSON), or None where it is not one this module can
        copy exactly."""
        model = config.get("model") or {}
        if model.get("type") != "WordPiece" or (config.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
            return None
        vocab = model.get("vocab") or {}
        unk = vocab.get(model.get("unk_token"))
        if unk is None:
            return None
        template = _template(config.get("post_processor"))
        if template is None:
            return None
        before, after = template
        copy = cls(vocab, model.get("continuing_subword_prefix", "##"), unk,
                   model.get("max_input_chars_per_word", 100), before, after, max_tokens, from_left)
        probes = _probes(vocab, max_tokens)
        expected = reference.encode_batch_fast(probes)
        for text, encoding in zip(probes, expected):
            if copy.encode(text) != (encoding.ids, bool(encoding.overflowing)):
                return None
        return copy

    def encode(self, text: str) -> tuple[list[int], bool]:
        vocab, ids = self._vocab, []
        for word in _WORDS.findall(text):
            known = vocab.get(word)
            if known is not None:
                ids.append(known)
            else:
                ids.extend(self._pieces(word))
        truncated = self._room is not None and len(ids) > self._room
        if truncated:
            ids = ids[len(ids) - self._room:] if self._from_left else ids[:self._room]
        return self._before + ids + self._after, truncated

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self._max_chars:
            return [self._unk]
        pieces, start, table = [], 0, self._vocab
        while start < len(word):
            for end in range(len(word), start, -1):
                found = table.get(word[start:end])
                if found is not None:
                    break
            else:
                return [self._unk]
            pieces.append(found)
            start, table = end, self._continuations
        return pieces


def _template(post_processor: dict | None) -> tuple[list[int], list[int]] | None:
    """The ids a TemplateProcessing puts before and after a single sequence (type id 0)."""
    if not post_processor or post_processor.get("type") != "TemplateProcessing":
        return None
    special = post_processor.get("special_tokens") or {}
    before: list[int] = []
    after: list[int] = []
    seen_sequence = False
    for piece in post_processor.get("single") or ():
        if "Sequence" in piece:
            if seen_sequence or piece["Sequence"].get("type_id", 0) != 0:
                return None
            seen_sequence = True
        elif "SpecialToken" in piece:
            token = special.get(piece["SpecialToken"].get("id"))
            if token is None or piece["SpecialToken"].get("type_id", 0) != 0:
                return None
            (after if seen_sequence else before).extend(token["ids"])
        else:
            return None
    return (before, after) if seen_sequence else None


def _probes(vocab: dict[str, int], max_tokens: int | None) -> list[str]:
    """Texts that exercise every path: each printable character alone and between words, known
    words, words split into pieces, words no piece covers, over-long words, and texts over
    ``max_tokens``, as normalised text looks (lowercase BERT vocabularies see lowercase)."""
    rng = random.Random(0)
    words = sorted(token for token in vocab if token.isascii() and token.isalnum())
    sample = rng.sample(words, min(200, len(words))) if words else ["a"]
    printable = "".join(map(chr, range(32, 127)))  # space to tilde
    probes = ["", " ", "  a  b  ", "a" * 101, "a" * 100, "x" * 300, "qzxjkvw", "##a", "a##b"]
    probes += [f"{c}" for c in printable] + [f"a{c}b {c}{c} {c}word" for c in printable]
    for _ in range(60):
        chosen = rng.sample(sample, min(len(sample), rng.randint(1, 12)))
        glue = rng.choice(["", " ", "-", ".", "'", " , ", "_"])
        probes.append(glue.join(chosen))
        probes.append("".join(chosen))  # runs of known words glued: splits into pieces
        probes.append(" ".join(w + rng.choice(string.ascii_letters + string.digits) * rng.randint(1, 3) for w in chosen))
    if max_tokens is not None:
        probes.append(" ".join(rng.choice(sample) for _ in range(max_tokens + 5)))
        probes.append(" ".join(rng.choice(sample) for _ in range(max_tokens - 3)))
        probes.append(" ".join(rng.choice(sample) for _ in range(max_tokens - 2)))
    return [p for p in probes if p.isascii() and p.isprintable()]


def printable_ascii(texts: Sequence[str]) -> bool:
    return all(text.isascii() and text.isprintable() for text in texts)
