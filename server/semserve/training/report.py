"""Printing and saving evaluation results: an aligned table for people, JSON for pipelines."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

from semserve.training.evaluate import PairMetrics
from semserve.training.pairs import Pair

_SUMMARY_ROWS = (
    ("recall@1 term -> synonym", "recall_at_1_term_to_synonym"),
    ("recall@1 synonym -> term", "recall_at_1_synonym_to_term"),
    ("recall@1 (both directions)", "recall_at_1"),
    ("mean cosine, synonym pairs", "mean_synonym_cosine"),
    ("mean cosine, random pairs", "mean_random_cosine"),
    ("separation (synonym - random)", "separation"),
)


def display_width(text: str) -> int:
    """Terminal columns: CJK characters take two, which plain str.ljust does not know."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def fit(text: str, width: int) -> str:
    """Cut to ``width`` columns (with an ellipsis) and pad to exactly ``width``."""
    if display_width(text) > width:
        out, used = [], 0
        for ch in text:
            w = display_width(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    return text + " " * (width - display_width(text))


def _number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary(model: PairMetrics, baseline: PairMetrics | None) -> str:
    model_data = model.summary()
    base_data = baseline.summary() if baseline else None
    header = fit("metric", 30) + "  " + ("baseline    model     change" if baseline else "model")
    lines = [f"{model.pairs} pairs", header]
    for label, key in _SUMMARY_ROWS:
        after = model_data[key]
        if base_data is None:
            lines.append(f"{fit(label, 30)}  {_number(after)}")
            continue
        before = base_data[key]
        change = "-" if before is None or after is None else f"{after - before:+.4f}"
        lines.append(f"{fit(label, 30)}  {_number(before):>8}  {_number(after):>8}  {change:>8}")
    return "\n".join(lines)


def format_pairs(pairs: list[Pair], model: PairMetrics, baseline: PairMetrics | None) -> str:
    """One row per pair with its cosine (before and after, when there is a baseline)."""
    head = f"{'line':>6}  {fit('term', 28)}  {fit('synonym', 28)}  "
    head += "before   after  change" if baseline else "cosine"
    lines = [head]
    for index, pair in enumerate(pairs):
        row = f"{pair.line:>6}  {fit(pair.term, 28)}  {fit(pair.synonym, 28)}  "
        after = model.cosines[index]
        if baseline is None:
            row += f"{after:6.3f}"
        else:
            before = baseline.cosines[index]
            row += f"{before:6.3f}  {after:6.3f}  {after - before:+6.3f}"
        lines.append(row)
    return "\n".join(lines)


def report_json(
    pairs: list[Pair],
    model: PairMetrics,
    baseline: PairMetrics | None,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The full report: summary metrics for both models and every pair's cosines."""
    rows = []
    for index, pair in enumerate(pairs):
        row: dict[str, Any] = {"line": pair.line, "term": pair.term, "synonym": pair.synonym, "cosine": model.cosines[index]}
        if baseline is not None:
            row["baseline_cosine"] = baseline.cosines[index]
            row["change"] = model.cosines[index] - baseline.cosines[index]
        rows.append(row)
    return {
        **context,
        "metrics": {"model": model.summary(), "baseline": baseline.summary() if baseline else None},
        "pairs": rows,
    }


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
