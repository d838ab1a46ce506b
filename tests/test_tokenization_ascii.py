"""ASCII inputs skip BERT's normalizer (frontend/tokenization.py): the ids, type ids and the
truncation report must be what the model's own tokenizer gives, for every input."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer

from model_factory import _bundled_dir
from semserve.core.types import TokenizerSpec
from semserve.frontend.tokenization import TextTokenizer, ascii_normalization

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


def assert_same_as_reference(tokenizer_json: str, inputs: list) -> None:
    ours = TextTokenizer(spec(tokenizer_json))
    for truncate, left, limit, direction in ((True, False, MAX_TOKENS, "right"), (True, True, MAX_TOKENS, "left"),
                                             (False, False, None, "right")):
        expected = reference(tokenizer_json, limit, direction).encode_batch(inputs)
        got = ours.encode(inputs, truncate=truncate, truncate_left=left)
        offsets = got.batch.offsets
        for i, encoding in enumerate(expected):
            assert got.batch.ids[offsets[i]:offsets[i + 1]].tolist() == encoding.ids, (inputs[i], truncate, left)
            if got.batch.type_ids is not None:
                assert got.batch.type_ids[offsets[i]:offsets[i + 1]].tolist() == encoding.type_ids
        assert got.truncated == [i for i, e in enumerate(expected) if e.overflowing]


@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("lowercase", [True, False])
def test_texts_get_the_ids_of_the_models_own_tokenizer(ascii_only, lowercase):
    tokenizer_json = bundled_json(type="BertNormalizer", clean_text=True, handle_chinese_chars=True,
                                  strip_accents=None, lowercase=lowercase)
    rng = random.Random(7 + lowercase + 2 * ascii_only)
    for _ in range(4):
        assert_same_as_reference(tokenizer_json, random_texts(rng, 64, ascii_only))


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
