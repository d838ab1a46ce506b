"""Fine-tuning on a synonym dictionary: what it learns, what it writes, how it reads pair files.

The MiniLM tests train the bundled all-MiniLM-L6-v2 for real on tests/data/synonyms.tsv, split by
synonym group so that no held-out text is ever seen in training. Their numbers are printed
(pytest -s) because they are the evidence, not just pass/fail.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_factory import make_tiny_hf_encoder, make_tiny_st_encoder
from semserve.models import default_encoder_path, load_encoder
from semserve.training.batches import group_batches
from semserve.training.coverage import poorly_covered
from semserve.training.embedding import embed
from semserve.training.evaluate import evaluate_pairs
from semserve.training.export import save_encoder
from semserve.training.finetune import FinetuneConfig, finetune
from semserve.training.pairs import Pair, PairFileError, parse_pairs, read_pairs, synonym_groups

ROOT = Path(__file__).resolve().parent.parent
SYNONYMS = Path(__file__).resolve().parent / "data" / "synonyms.tsv"
PROBE_TEXTS = ["Land Cruiser Prado", "普拉多", "越野车 SUV", "New York City", "a longer sentence about electric vehicles"]
# Measured on 2 CPU cores: 4 epochs at lr 1e-4 take 15-35 s and do most of what 8 epochs do.
MINILM_CONFIG = FinetuneConfig(epochs=6, lr=1e-4, batch_size=32, seed=0)
HELD_OUT_SHARE = 0.3


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def _st_embed(folder: Path, texts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    return torch.as_tensor(SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True))


def _split_by_group(pairs: list[Pair], share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    groups = synonym_groups(pairs)
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    held = set(ids[: int(len(ids) * share)])
    train = [p for p, g in zip(pairs, groups) if g not in held]
    test = [p for p, g in zip(pairs, groups) if g in held]
    return train, test


def _describe(tag: str, metrics) -> str:
    return (
        f"{tag}: {metrics.pairs} pairs, recall@1 {metrics.recall_at_1:.3f} "
        f"(t->s {metrics.recall_at_1_term_to_synonym:.3f}, s->t {metrics.recall_at_1_synonym_to_term:.3f}), "
        f"synonym cos {metrics.mean_synonym_cosine:.3f}, random cos {metrics.mean_random_cosine:.3f}, "
        f"separation {metrics.separation:.3f}"
    )


# --- MiniLM on the synonym dictionary ---------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """Train once for the module: before/after metrics on train, held-out and its representable part."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pairs = read_pairs(SYNONYMS).pairs
    train, held = _split_by_group(pairs, HELD_OUT_SHARE, seed=0)
    encoder = load_encoder(default_encoder_path())
    covered = {item.text for item in poorly_covered(encoder, [t for p in pairs for t in (p.term, p.synonym)])}
    held_known = [p for p in held if p.term not in covered and p.synonym not in covered]
    sets = {"train": train, "held": held, "held_known": held_known}
    before = {name: evaluate_pairs(encoder, subset) for name, subset in sets.items()}
    result = finetune(encoder, train, MINILM_CONFIG, progress=False)
    after = {name: evaluate_pairs(encoder, subset) for name, subset in sets.items()}
    out = save_encoder(encoder, tmp_path_factory.mktemp("tuned") / "minilm-synonyms")
    for name in sets:
        print(_describe(f"{name} before", before[name]))
        print(_describe(f"{name} after ", after[name]))
    print(f"{result.steps} steps in {result.seconds:.1f}s; losses {result.epoch_losses}")
    return {"before": before, "after": after, "encoder": encoder, "out": out, "covered": covered, "sets": sets}


def test_minilm_learns_the_dictionary(minilm_run):
    """The pairs trained on: what the domain teams asked for, retrieval finds each synonym more often."""
    before, after = minilm_run["before"]["train"], minilm_run["after"]["train"]
    assert after.recall_at_1 >= before.recall_at_1 + 0.1
    assert after.mean_synonym_cosine >= before.mean_synonym_cosine + 0.1
    assert after.separation >= 0.2


def test_minilm_improves_unseen_pairs_it_can_represent(minilm_run):
    """Held-out groups never seen in training, restricted to texts MiniLM's vocabulary covers."""
    before, after = minilm_run["before"]["held_known"], minilm_run["after"]["held_known"]
    assert after.pairs >= 25
    assert after.recall_at_1 > before.recall_at_1
    assert after.mean_synonym_cosine > before.mean_synonym_cosine
    assert after.separation >= 0.2, "random pairs were pulled towards the synonym level"


def test_minilm_held_out_does_not_collapse(minilm_run):
    """The whole held-out set, Chinese included: synonyms move closer and stay above random pairs."""
    before, after = minilm_run["before"]["held"], minilm_run["after"]["held"]
    assert after.mean_synonym_cosine > before.mean_synonym_cosine
    assert after.mean_synonym_cosine - after.mean_random_cosine >= 0.1
    assert after.recall_at_1 >= before.recall_at_1 - 0.03


def test_minilm_vocabulary_misses_most_chinese(minilm_run):
    """Why the Chinese half of the dictionary barely generalises: its characters are [UNK] to MiniLM."""
    covered = minilm_run["covered"]
    assert "普拉多" in covered and "越野车" in covered
    assert not any(text.isascii() for text in covered)


def test_tuned_folder_loads_identically_in_semserve_and_sentence_transformers(minilm_run):
    out = minilm_run["out"]
    assert json.loads((out / "modules.json").read_text())[-1]["type"].endswith("Normalize")
    reloaded = embed(load_encoder(out), PROBE_TEXTS)
    in_memory = embed(minilm_run["encoder"], PROBE_TEXTS)
    reference = _st_embed(out, PROBE_TEXTS)
    assert _cosines(reloaded, reference).min() >= 0.99999
    assert _cosines(reloaded, in_memory).min() >= 0.99999
    assert load_encoder(out).max_tokens == load_encoder(default_encoder_path()).max_tokens


# --- export of other module stacks ------------------------------------------------------------


@pytest.mark.parametrize("factory", [make_tiny_st_encoder, make_tiny_hf_encoder], ids=["st-dense", "plain-hf"])
def test_export_keeps_the_module_stack(tmp_path, factory):
    """Dense heads survive; a plain Hugging Face folder becomes Transformer -> mean Pooling."""
    source = factory(tmp_path / "source")
    encoder = load_encoder(source)
    pairs = [Pair("NYC", "New York City", 1), Pair("LA", "Los Angeles", 2), Pair("SUV", "off-road vehicle", 3)]
    finetune(encoder, pairs, FinetuneConfig(epochs=1, batch_size=3, lr=1e-3), progress=False)
    out = save_encoder(encoder, tmp_path / "out")
    loaded = load_encoder(out)
    assert (loaded.pooling, loaded.dimension) == (encoder.pooling, encoder.dimension)
    assert [type(layer).__name__ for layer in loaded.head] == [type(layer).__name__ for layer in encoder.head]
    ours = embed(loaded, PROBE_TEXTS)
    assert _cosines(ours, embed(encoder, PROBE_TEXTS)).min() >= 0.99999
    assert _cosines(ours, _st_embed(out, PROBE_TEXTS)).min() >= 0.99999
    assert not torch.allclose(ours, embed(load_encoder(source), PROBE_TEXTS)), "training changed nothing"


# --- training mechanics ----------------------------------------------------------------------


def _tiny_pairs() -> list[Pair]:
    return read_pairs(SYNONYMS).pairs[:40]


def test_finetune_is_deterministic_for_a_seed_on_cpu(tmp_path):
    source = make_tiny_st_encoder(tmp_path / "tiny")
    runs = []
    for seed in (7, 7, 8):
        encoder = load_encoder(source)
        result = finetune(encoder, _tiny_pairs(), FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, seed=seed), progress=False)
        runs.append((result.epoch_losses, embed(encoder, PROBE_TEXTS)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_batches_never_hold_two_pairs_of_one_synonym_group():
    pairs = read_pairs(SYNONYMS).pairs
    groups = synonym_groups(pairs)
    batches = group_batches(groups, 32, random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(pairs)))
    for batch in batches:
        assert len({groups[i] for i in batch}) == len(batch)
    # "SUV" links 越野车 and "off-road vehicle" into one group, and "suv" is the same term as "SUV".
    linked = synonym_groups([Pair("越野车", "SUV", 1), Pair("suv", "off-road vehicle", 2), Pair("NYC", "New York", 3)])
    assert linked[0] == linked[1] != linked[2]


def test_freeze_layers_keeps_lower_layers_fixed(tmp_path):
    encoder = load_encoder(make_tiny_st_encoder(tmp_path / "tiny"))
    frozen_before = encoder.transformer.encoder.layer[0].state_dict()
    frozen_before = {k: v.clone() for k, v in frozen_before.items()}
    top_before = encoder.transformer.encoder.layer[1].output.dense.weight.clone()
    finetune(encoder, _tiny_pairs(), FinetuneConfig(epochs=1, batch_size=8, lr=1e-3, freeze_layers=1), progress=False)
    for key, value in encoder.transformer.encoder.layer[0].state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(encoder.transformer.encoder.layer[1].output.dense.weight, top_before)


# --- pair files ------------------------------------------------------------------------------


def test_shipped_dictionary_reads_cleanly():
    parsed = read_pairs(SYNONYMS)
    assert parsed.header == ("term", "synonym") and parsed.delimiter == "\t"
    assert len(parsed.pairs) >= 300
    assert parsed.pairs[0].line == 2
    assert any(not p.term.isascii() and not p.synonym.isascii() for p in parsed.pairs)  # Chinese <-> Chinese
    assert any(not p.term.isascii() and p.synonym.isascii() for p in parsed.pairs)  # Chinese <-> English


def test_tsv_bad_rows_are_reported_by_line_number(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(
        "术语\t同义词\n"  # 1: header, detected from its Chinese names
        "普拉多\t霸道SUV\n"  # 2
        "越野车\n"  # 3: one column
        "\n"  # 4: blank, ignored
        "SUV\t\n"  # 5: empty synonym
        "SUV\tsuv\n".encode()  # 6: identical up to case
        + b"caf\xe9\tcoffee\n"  # 7: Latin-1, not UTF-8
        + "a\tb\tc\n"  # 8: three columns
        "NYC\tNew York City\n".encode()  # 9
    )
    with pytest.raises(PairFileError) as caught:
        read_pairs(path)
    assert [(row.line, row.reason.split()[0]) for row in caught.value.bad_rows] == [
        (3, "expected"), (5, "empty"), (6, "term"), (7, "invalid"), (8, "expected"),
    ]
    message = caught.value.describe(limit=2)
    assert "line 3:" in message and "line 5:" in message and "and 3 more" in message

    parsed = read_pairs(path, skip_bad_rows=True)
    assert [(p.line, p.term, p.synonym) for p in parsed.pairs] == [(2, "普拉多", "霸道SUV"), (9, "NYC", "New York City")]
    assert [row.line for row in parsed.bad_rows] == [3, 5, 6, 7, 8]


def test_csv_quoting_headers_and_bom(tmp_path):
    data = '\ufeffterm,synonym\nPrado,"Land Cruiser, Prado"\n越野车,SUV\n"unclosed,quote\n'.encode()
    parsed = parse_pairs(data, tmp_path / "pairs.csv")
    assert parsed.header == ("term", "synonym")
    assert [(p.line, p.synonym) for p in parsed.pairs] == [(2, "Land Cruiser, Prado"), (3, "SUV")]
    assert [(row.line, row.reason) for row in parsed.bad_rows] == [(4, "unterminated quote")]

    # Without header words the first row is data, unless --header says otherwise.
    plain = "Prado,Land Cruiser Prado\nEV,electric vehicle\n".encode()
    assert len(parse_pairs(plain, Path("p.csv")).pairs) == 2
    assert [p.line for p in parse_pairs(plain, Path("p.csv"), header=True).pairs] == [2]
    # A header-like first row is kept as data when --no-header says so.
    header_like = "term,synonym\nEV,electric vehicle\n".encode()
    assert len(parse_pairs(header_like, Path("p.csv"), header=False).pairs) == 2
    # Unknown extension: the delimiter is sniffed from the first row.
    assert parse_pairs("a\tb\n".encode(), Path("pairs.txt")).delimiter == "\t"


def test_a_file_without_pairs_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("term,synonym\n\n", encoding="utf-8")
    with pytest.raises(PairFileError, match="no synonym pairs"):
        read_pairs(path)


# --- the commands, end to end ----------------------------------------------------------------


def _semserve(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client")])}
    return subprocess.run(
        [sys.executable, "-m", "semserve", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def tiny_pair_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    path.write_text(
        'term,synonym\nNYC,New York City\nLA,Los Angeles\nPrado,"Land Cruiser Prado"\n'
        "SUV,off-road vehicle\n越野车,SUV\nEV,electric vehicle\n",
        encoding="utf-8",
    )
    return path


def test_cli_finetune_then_evaluate(tmp_path, tiny_pair_file):
    source = make_tiny_hf_encoder(tmp_path / "tiny")
    out = tmp_path / "tuned"
    done = _semserve("finetune", "--model", str(source), "--pairs", str(tiny_pair_file), "--out", str(out),
                     "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "fine-tuning" in done.stderr and "wrote" in done.stdout  # tqdm bar and summary
    assert "越野车" in done.stderr  # the vocabulary warning names the text it cannot represent
    provenance = json.loads((out / "semserve_finetune.json").read_text())
    assert provenance["config"]["seed"] == 3 and provenance["pairs"] == 6

    report_path = tmp_path / "report.json"
    done = _semserve("evaluate-pairs", "--model", str(out), "--baseline", str(source),
                     "--pairs", str(tiny_pair_file), "--json", str(report_path), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "recall@1 (both directions)" in done.stdout and "Land Cruiser Prado" in done.stdout
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["metrics"]["model"]["pairs"] == 6 and report["metrics"]["baseline"] is not None
    assert [row["line"] for row in report["pairs"]] == [2, 3, 4, 5, 6, 7]
    assert report["pairs"][4]["term"] == "越野车"
    assert {"cosine", "baseline_cosine", "change"} <= set(report["pairs"][0])

    again = _semserve("finetune", "--model", str(source), "--pairs", str(tiny_pair_file), "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_cli_refuses_bad_rows_with_line_numbers(tmp_path):
    source = make_tiny_hf_encoder(tmp_path / "tiny")
    pairs = tmp_path / "bad.tsv"
    pairs.write_text("NYC\tNew York City\n越野车\n\tSUV\nLA\tLos Angeles\nEV\telectric vehicle\n", encoding="utf-8")
    done = _semserve("finetune", "--model", str(source), "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                     "--max-errors", "1")
    assert done.returncode == 2
    assert "line 2:" in done.stderr and "line 3:" not in done.stderr and "and 1 more" in done.stderr
    assert not (tmp_path / "o").exists()

    done = _semserve("evaluate-pairs", "--model", str(source), "--pairs", str(pairs), "--skip-bad-rows")
    assert done.returncode == 0, done.stderr
    assert "line 2:" in done.stderr and "line 3:" in done.stderr and "3 pairs" in done.stdout
