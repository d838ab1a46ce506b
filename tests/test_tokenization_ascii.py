"""ASCII inputs skip BERT's normalizer (frontend/tokenization.py), and short requests of
printable ASCII take the plain-Python WordPiece (frontend/wordpiece.py): the ids, type ids and
the truncation report must be what the model's own tokenizer gives, for every input."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer

from model_factory import _bundled_dir
from semserve.core.types import TokenizerSpec
from semserve.frontend.tokenization import TextTokenizer, _copy, ascii_normalization
from semserve.frontend.wordpiece import WordPiece

MAX_TOKENS = 48
# Every ASCII character, the added tokens in several cases, and characters the normalizer
# changes beyond ASCII (accents, CJK, no-break space, a replacement character, an emoji).
PIECES = [chr(c) for c in range(128)] + ["[CLS]", "[cls]", "[MASK]", "[Sep]", "[PAD]", "[UNK]",
                                         "Café", "naïve", "中文", "\u00a0", "\ufffd", "😀", " hello ",
                                         "World", "e-mail", "3.14", "don't", "\t\n", "  "]


def bundled_json(**normalizer) -> str:
    config = json.loads((_bundled_dir() / "tokenizer.json").read_text())
    if normalizer:
        config["normalizer"] = normalizer
    return json.dumps(config)


def spec(tokenizer_json: str) -> TokenizerSpec:
    return TokenizerSpec(name="m", load_id=1, tokenizer_json=tokenizer_json, max_tokens=MAX_TOKENS,
                         lowercase=False, pad_id=0)


def reference(tokenizer_json: str, max_tokens: int | None, direction: str = "right") -> Tokenizer:
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    if max_tokens is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_tokens, strategy="longest_first", direction=direction)
    return tokenizer


def random_texts(rng: random.Random, count: int, ascii_only: bool) -> list[str]:
    pool = [p for p in PIECES if p.isascii()] if ascii_only else PIECES
    words = ["the", "Server", "batch", "GPU", "embedding", "Rerank", "x", "42", "(a)", "!?"]
    return ["".join(rng.choice(pool) if rng.random() < 0.3 else rng.choice(words) + " "
                    for _ in range(rng.randint(0, 80))) for _ in range(count)]


def assert_same_as_reference(tokenizer_json: str, inputs: list, small: bool = False) -> None:
    ours = TextTokenizer(spec(tokenizer_json))
    for truncate, left, limit, direction in ((True, False, MAX_TOKENS, "right"), (True, True, MAX_TOKENS, "left"),
                                             (False, False, None, "right")):
        expected = reference(tokenizer_json, limit, direction).encode_batch(inputs)
        got = ours.encode(inputs, truncate=truncate, truncate_left=left, small=small)
        offsets = got.batch.offsets
        for i, encoding in enumerate(expected):
            assert got.batch.ids[offsets[i]:offsets[i + 1]].tolist() == encoding.ids, (inputs[i], truncate, left)
            if got.batch.type_ids is not None:
                assert got.batch.type_ids[offsets[i]:offsets[i + 1]].tolist() == encoding.type_ids
        assert got.truncated == [i for i, e in enumerate(expected) if e.overflowing]


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("lowercase", [True, False])
def test_texts_get_the_ids_of_the_models_own_tokenizer(ascii_only, lowercase, small):
    tokenizer_json = bundled_json(type="BertNormalizer", clean_text=True, handle_chinese_chars=True,
                                  strip_accents=None, lowercase=lowercase)
    rng = random.Random(7 + lowercase + 2 * ascii_only)
    for _ in range(4):
        assert_same_as_reference(tokenizer_json, random_texts(rng, 64, ascii_only), small)


def printable_texts(rng: random.Random, count: int) -> list[str]:
    """Printable ASCII as people and programs write it: words of the vocabulary and not, glued
    words, punctuation inside and between words, digits, over-long words (over 100 characters)."""
    printable = [chr(c) for c in range(32, 127)]
    words = ["the", "Server", "batch", "GPU", "embeddings", "unbelievably", "xqzvk", "don't", "e-mail",
             "3.14", "a_b", "URL/path?q=1", "#hashtag", "##x", "CamelCaseWord", "x" * 101, "ab" * 60]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 40)):
            roll = rng.random()
            parts.append(rng.choice(printable) if roll < 0.25 else
                         rng.choice(words) + rng.choice(words) if roll < 0.35 else rng.choice(words))
            parts.append(rng.choice([" ", " ", "  ", "", ", ", "."]))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("lowercase", [True, False])
def test_single_texts_through_the_python_wordpiece_get_the_models_own_ids(lowercase):
    tokenizer_json = bundled_json(type="BertNormalizer", clean_text=True, handle_chinese_chars=True,
                                  strip_accents=None, lowercase=lowercase)
    rng = random.Random(17 + lowercase)
    texts = printable_texts(rng, 400)
    assert_same_as_reference(tokenizer_json, texts, small=True)
    ours, expected = TextTokenizer(spec(tokenizer_json)), reference(tokenizer_json, MAX_TOKENS)
    for text in texts[:100]:  # one text a call, as single-text requests come
        got, encoding = ours.encode([text], truncate=True, small=True), expected.encode(text)
        assert got.batch.ids.tolist() == encoding.ids and got.truncated == ([0] if encoding.overflowing else [])


def test_the_python_wordpiece_serves_short_requests_of_the_bundled_model(monkeypatch):
    """Else the test above would pass without the path it is for ever being taken."""
    ours = TextTokenizer(spec(bundled_json()))
    backends = (ours._truncating, ours._truncating_left, ours._full)
    assert all(backend.copies_wordpiece for backend in backends)
    for backend in backends:
        monkeypatch.setattr(backend, "_encodings", lambda inputs: pytest.fail("the Rust tokenizer was called"))
    ours.encode(["Hello, world! 42 e-mails"], truncate=True, small=True)
    ours.encode(["x" * 400], truncate=False, small=True)
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(ours._truncating, "_encodings", lambda inputs: calls.append(inputs) or [])
    ours.encode(["café au lait"], truncate=True, small=True)  # not ASCII: the tokenizer's own path
    ours.encode(["ask [MASK] here"], truncate=True, small=True)  # an added token's content
    assert len(calls) == 2


def test_a_copy_that_would_differ_from_the_tokenizer_is_not_used():
    config = json.loads(bundled_json())
    # The reference cuts at 10 tokens where the copy is told 48: the probes show the difference.
    assert WordPiece.build(config, _copy(bundled_json(), 10, normalized=False), MAX_TOKENS, False) is None
    assert WordPiece.build(config, _copy(bundled_json(), MAX_TOKENS, normalized=False), MAX_TOKENS, False) is not None
    for change in ({"pre_tokenizer": {"type": "WhitespaceSplit"}},
                   {"post_processor": {"type": "ByteLevel", "trim_offsets": True}},
                   {"model": {**config["model"], "type": "WordLevel"}}):
        assert WordPiece.build({**config, **change}, _copy(bundled_json(), MAX_TOKENS, normalized=False),
                               MAX_TOKENS, False) is None


def test_query_document_pairs_get_the_ids_and_type_ids_of_the_models_own_tokenizer():
    rng = random.Random(11)
    pairs = list(zip(random_texts(rng, 96, False), random_texts(rng, 96, True)))
    pairs += list(zip(random_texts(rng, 32, True), random_texts(rng, 32, True)))
    assert_same_as_reference(bundled_json(), pairs)


def test_every_ascii_text_of_the_bundled_model_skips_the_normalizer():
    """Else the tests above would pass without the path they are for ever being taken."""
    table = ascii_normalization(bundled_json())
    assert table is not None
    backend = TextTokenizer(spec(bundled_json()))._truncating
    assert backend._plain is not None
    assert backend._normalized("Hello\tWorld\x00!\r\n") == "hello world!  "
    assert backend._normalized("ask [MASK] here") is None  # added tokens: the normalizer's path
    assert backend._normalized("café") is None


@pytest.mark.parametrize("normalizer", [
    {"type": "Lowercase"},
    {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]},
])
def test_other_normalizers_keep_the_tokenizers_own_path(normalizer):
    tokenizer_json = bundled_json(**normalizer)
    assert ascii_normalization(tokenizer_json) is None
    assert TextTokenizer(spec(tokenizer_json))._full._plain is None
    assert_same_as_reference(tokenizer_json, random_texts(random.Random(3), 32, True))
