"""Finding texts that a model's vocabulary cannot represent.

English-only WordPiece vocabularies (all-MiniLM-L6-v2 among them) map most Chinese characters to
[UNK]: 普拉多 and 油管 both become "[UNK] [UNK]"-like sequences, identical to the model. No amount
of fine-tuning separates them, and training on them only drags unrelated texts together. This is
checked up front so that a dictionary in the wrong script is reported, not trained on blindly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from semserve.models.encoder import Encoder

# A text with at least this share of unknown tokens carries too little to be matched reliably.
UNKNOWN_SHARE_LIMIT = 1 / 3


@dataclass(frozen=True)
class PoorlyCovered:
    text: str
    unknown: int
    tokens: int


def poorly_covered(encoder: Encoder, texts: Sequence[str], limit: float = UNKNOWN_SHARE_LIMIT) -> list[PoorlyCovered]:
    """Distinct texts whose share of unknown tokens is at least ``limit``, in first-seen order."""
    unk = encoder.tokenizer.unk_token_id
    if unk is None:  # byte-level tokenizers have no unknown token: every text is representable
        return []
    distinct = list(dict.fromkeys(texts))
    prepared = [text.lower() for text in distinct] if encoder.lowercase else distinct
    encoded = encoder.tokenizer(prepared, add_special_tokens=False)["input_ids"]
    found = []
    for text, ids in zip(distinct, encoded):
        unknown = ids.count(unk)
        if ids and unknown / len(ids) >= limit:
            found.append(PoorlyCovered(text=text, unknown=unknown, tokens=len(ids)))
    return found


def coverage_warning(found: list[PoorlyCovered], total: int, examples: int = 5) -> str | None:
    """A one-paragraph warning naming a few examples, or None when every text is covered."""
    if not found:
        return None
    shown = ", ".join(f"{item.text} ({item.unknown}/{item.tokens} unknown tokens)" for item in found[:examples])
    return (
        f"warning: {len(found)} of {total} distinct texts are mostly unknown tokens to this model's vocabulary, "
        f"e.g. {shown}. The model cannot tell such texts apart, so it cannot learn or retrieve their synonyms; "
        "use a base model whose vocabulary covers these scripts (a multilingual model for Chinese)."
    )
