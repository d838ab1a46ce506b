"""Front-end tokenization per text, with and without the ASCII path that skips BERT's normalizer
(frontend/tokenization.py), alternated in one process on the bench's synthetic texts.

    python tests/perf/bench_tokenize.py [--model DIR] [--rounds 3]

DIR holds a tokenizer.json (default: the bundled MiniLM). Prints microseconds per text for
requests of 32 texts, of one text, and of 32 query/document pairs. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as front ends run it
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "client"), str(ROOT / "tests")]

from semserve.core.types import TokenizerSpec  # noqa: E402
from semserve.frontend.tokenization import TextTokenizer  # noqa: E402
from semserve_client.bench import synthetic_texts  # noqa: E402


def per_text_us(tokenizer: TextTokenizer, inputs: list, size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(inputs), size):
        tokenizer.encode(inputs[i:i + size], truncate=True)
    return (time.perf_counter() - started) / len(inputs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=20000)
    args = parser.parse_args()
    if args.model is None:
        from model_factory import _bundled_dir

        args.model = _bundled_dir()
    spec = TokenizerSpec(name="m", load_id=1, tokenizer_json=(args.model / "tokenizer.json").read_text(),
                         max_tokens=256, lowercase=False, pad_id=0)
    texts = synthetic_texts(args.texts, seed=1)
    pairs = list(zip(texts[::2], texts[1::2]))
    fast = TextTokenizer(spec)
    normalizing = TextTokenizer(spec)
    for backend in (normalizing._truncating, normalizing._truncating_left, normalizing._full):
        backend._plain = None
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, tokenizer in (("normalizer", normalizing), ("ascii", fast)):
            for what, inputs, size in (("32 texts", texts, 32), ("1 text", texts[:4000], 1), ("32 pairs", pairs, 32)):
                results.setdefault(f"{what}, {name}", []).append(round(per_text_us(tokenizer, inputs, size), 2))
    for key, values in results.items():
        print(f"{key}: {values} us per input (best {min(values)})")
    print(json.dumps({k: min(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
