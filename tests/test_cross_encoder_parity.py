"""Our CrossEncoder must score pairs exactly as sentence_transformers.CrossEncoder.predict does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model_factory import MAX_POSITIONS, make_tiny_cross_encoder, make_tiny_hf_encoder
from semserve.models import CrossEncoder, ModelLoadError, load_cross_encoder

STCrossEncoder = pytest.importorskip("sentence_transformers").CrossEncoder

LONG = "Retrieval systems rank documents by relevance to a query. " * 40  # > 128 tokens alone

PAIRS = [
    ("what is a cat", "A cat is a small domesticated carnivorous mammal."),
    ("password reset", LONG),  # only the document needs truncating
    (LONG, LONG + " and more"),  # both sides are cut, longest first
    ("你好", "世界你好，今天天气很好。"),
    (" ", " "),
    ("Ünïcödé façade", "naïve café"),
]


def tokenize(model: CrossEncoder, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
    return dict(
        model.tokenizer(
            queries,
            documents,
            padding=True,
            truncation="longest_first",
            max_length=model.max_tokens,
            return_tensors="pt",
        )
    )


def logits_of(model: CrossEncoder, pairs: list[tuple[str, str]]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenize(model, pairs))


def scores_of(model: CrossEncoder, pairs: list[tuple[str, str]]) -> np.ndarray:
    with torch.inference_mode():
        return model.activate(logits_of(model, pairs)).numpy()


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-5, (ours, reference)


def assert_same_inputs(folder: Path, model: CrossEncoder) -> STCrossEncoder:
    reference = STCrossEncoder(str(folder), device="cpu")
    assert model.max_tokens == reference.max_seq_length
    assert model.num_labels == reference.num_labels
    assert torch.equal(tokenize(model, PAIRS)["input_ids"], reference.preprocess(PAIRS)["input_ids"])
    return reference


@pytest.fixture(scope="module")
def one_label(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce1"), num_labels=1)


@pytest.fixture(scope="module")
def two_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce2"), num_labels=2)


def test_single_label_sigmoid_matches_predict(one_label: Path) -> None:
    model = load_cross_encoder(one_label)
    assert (model.num_labels, model.max_tokens, model.activation) == (1, MAX_POSITIONS, "Sigmoid")
    assert model.label_names == ["LABEL_0"] and not model.lowercase and not model.training
    reference = assert_same_inputs(one_label, model)
    ours = scores_of(model, PAIRS)
    assert ours.std() > 1e-3  # the scores must actually differ, or the comparison proves little
    assert_close(ours, reference.predict(PAIRS, convert_to_numpy=True))


def test_single_label_without_activation_matches_predict(one_label: Path) -> None:
    model = load_cross_encoder(one_label, activation="identity")
    reference = STCrossEncoder(str(one_label), device="cpu")
    expected = reference.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    assert_close(scores_of(model, PAIRS), expected)
    # raw_scores is the same logit whatever the activation.
    default = load_cross_encoder(one_label)
    assert_close(default.raw_scores(logits_of(default, PAIRS)).numpy(), expected)


def test_two_labels_match_predict(two_labels: Path) -> None:
    model = load_cross_encoder(two_labels)
    assert (model.num_labels, model.score_label, model.activation) == (2, 1, "Identity")
    reference = assert_same_inputs(two_labels, model)
    # Plain predict returns every label's logit for multi-label models...
    assert_close(logits_of(model, PAIRS).numpy(), reference.predict(PAIRS, convert_to_numpy=True))
    # ...and with apply_softmax the probabilities, of which the score is label 1's.
    probabilities = reference.predict(PAIRS, apply_softmax=True, convert_to_numpy=True)
    assert_close(scores_of(model, PAIRS), probabilities[:, 1])
    assert_close(scores_of(load_cross_encoder(two_labels, score_label=0), PAIRS), probabilities[:, 0])
    assert load_cross_encoder(two_labels, score_label="LABEL_0").score_label == 0


def test_sentence_transformers_6_save_loads_the_same(one_label: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    STCrossEncoder(str(one_label), device="cpu").save(str(saved))
    assert json.loads((saved / "config_sentence_transformers.json").read_text())["model_type"] == "CrossEncoder"
    model = load_cross_encoder(saved)
    reference = assert_same_inputs(saved, model)
    assert_close(scores_of(model, PAIRS), reference.predict(PAIRS, convert_to_numpy=True))


def test_activation_named_in_legacy_config_json(one_label: Path, tmp_path: Path) -> None:
    # sentence-transformers 4.x/5.x recorded the activation inside config.json.
    folder = Path(shutil.copytree(one_label, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_cross_encoder(folder)
    assert model.activation == "Identity"
    reference = STCrossEncoder(str(folder), device="cpu")
    assert_close(scores_of(model, PAIRS), reference.predict(PAIRS, convert_to_numpy=True))


@pytest.mark.parametrize("labels", ["one_label", "two_labels"])
def test_score_does_not_depend_on_batch_companions(labels: str, request: pytest.FixtureRequest) -> None:
    model = load_cross_encoder(request.getfixturevalue(labels))
    batch = scores_of(model, PAIRS)
    for index, pair in enumerate(PAIRS):
        assert abs(scores_of(model, [pair])[0] - batch[index]) <= 1e-5, pair[0][:30]


def test_many_labels_need_an_explicit_score_label(tmp_path: Path) -> None:
    folder = make_tiny_cross_encoder(tmp_path / "ce3", num_labels=3)
    with pytest.raises(ModelLoadError, match="3 labels"):
        load_cross_encoder(folder)
    assert load_cross_encoder(folder, score_label=2).score_label == 2
    with pytest.raises(ModelLoadError, match="out of range"):
        load_cross_encoder(folder, score_label=3)


def test_embedding_model_is_not_a_cross_encoder(tmp_path: Path) -> None:
    folder = make_tiny_hf_encoder(tmp_path / "encoder")
    with pytest.raises(ModelLoadError, match="not a sequence-classification model"):
        load_cross_encoder(folder)


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_cross_encoder(tmp_path / "nope")
