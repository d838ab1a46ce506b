"""Reading synonym pair files (term, synonym) in TSV or CSV, refusing bad rows by line number.

Synonym dictionaries are edited by hand in spreadsheets, so they arrive with headers, stray
delimiters, half-filled rows and the odd non-UTF-8 byte. A row that is silently dropped is a
synonym the model never learns, so every problem is reported with its line number, and reading
fails unless the caller explicitly asks to skip bad rows.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# Lowercased cell values that mark a first row as a header rather than a synonym pair.
HEADER_WORDS = frozenset(
    {
        "term", "terms", "synonym", "synonyms", "word", "words", "alias", "aliases", "source", "target",
        "from", "to", "left", "right", "query", "text", "text1", "text2", "text_a", "text_b",
        "sentence1", "sentence2", "anchor", "positive", "name", "canonical", "variant",
        "词", "词语", "术语", "同义词", "近义词", "别名",
    }
)


@dataclass(frozen=True)
class Pair:
    """One synonym pair and the line it came from, so later reports can point back at the file."""

    term: str
    synonym: str
    line: int


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    content: str


@dataclass(frozen=True)
class PairFile:
    pairs: list[Pair]
    bad_rows: list[BadRow]
    header: tuple[str, str] | None
    delimiter: str


class PairFileError(Exception):
    """The file has bad rows; ``bad_rows`` lists all of them, in file order."""

    def __init__(self, path: Path, bad_rows: list[BadRow], message: str | None = None) -> None:
        self.path = path
        self.bad_rows = bad_rows
        super().__init__(message or f"{path}: {len(bad_rows)} bad row(s)")

    def describe(self, limit: int | None = 20) -> str:
        """A multi-line message naming up to ``limit`` bad lines (all of them when limit is None)."""
        return describe_bad_rows(self.path, self.bad_rows, limit)


def describe_bad_rows(path: Path, bad_rows: list[BadRow], limit: int | None = 20) -> str:
    shown = bad_rows if limit is None else bad_rows[:limit]
    lines = [f"{path}: {len(bad_rows)} bad row(s):"]
    lines += [f"  line {row.line}: {row.reason}: {row.content!r}" for row in shown]
    if len(shown) < len(bad_rows):
        lines.append(f"  ... and {len(bad_rows) - len(shown)} more")
    return "\n".join(lines)


def term_key(text: str) -> str:
    """The identity of a term for duplicate detection: Unicode-normalised, case- and space-insensitive.

    "SUV", "suv " and the full-width "ＳＵＶ" are the same term to a reader, and putting them on
    both sides of one contrastive batch would teach the model that they differ.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def guess_delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv/.tab, comma for .csv; otherwise tab if the first row has one, else comma."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    return "\t" if "\t" in first_line else ","


def looks_like_header(cells: list[str]) -> bool:
    return len(cells) == 2 and all(term_key(cell) in HEADER_WORDS for cell in cells)


def _split(line: str, delimiter: str) -> list[str] | None:
    """Cells of one physical line; None for a CSV line whose quoting does not close."""
    if delimiter == "\t":
        # TSV exports rarely quote; treating quotes literally keeps "17" wheels" intact.
        return line.split("\t")
    try:
        rows = list(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error:
        return None
    return rows[0] if rows else []


def parse_pairs(
    data: bytes,
    path: Path,
    *,
    delimiter: str | None = None,
    header: bool | None = None,
) -> PairFile:
    """Parse file contents into pairs and bad rows; never raises for row-level problems.

    ``header``: True skips the first non-empty row, False keeps it, None detects a header by its
    cell names (``term,synonym``, ``同义词``, ...). Blank lines are ignored, not errors. Each line
    is decoded on its own so that one bad byte costs one row, reported with its number.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # Excel's UTF-8 byte order mark
        data = data[3:]
    pairs: list[Pair] = []
    bad: list[BadRow] = []
    found_header: tuple[str, str] | None = None
    first_row = True
    for number, raw in enumerate(io.BytesIO(data), start=1):
        raw = raw.rstrip(b"\r\n")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(BadRow(number, f"invalid UTF-8 at byte {exc.start}", raw.decode("utf-8", "replace")))
            first_row = False
            continue
        if not line.strip():
            continue
        if delimiter is None:
            delimiter = guess_delimiter(path, line)
        cells = _split(line, delimiter)
        if first_row:
            first_row = False
            stripped = [cell.strip() for cell in cells or []]
            if header or (header is None and looks_like_header(stripped)):
                found_header = (stripped + ["", ""])[0], (stripped + ["", ""])[1]
                continue
        problem = _row_problem(cells, delimiter)
        if problem:
            bad.append(BadRow(number, problem, line))
            continue
        term, synonym = (cell.strip() for cell in cells)  # type: ignore[union-attr]
        pairs.append(Pair(term=term, synonym=synonym, line=number))
    return PairFile(pairs=pairs, bad_rows=bad, header=found_header, delimiter=delimiter or ",")


def _row_problem(cells: list[str] | None, delimiter: str) -> str | None:
    name = "tab" if delimiter == "\t" else repr(delimiter)
    if cells is None:
        return "unterminated quote"
    if len(cells) != 2:
        return f"expected 2 {name}-separated columns (term, synonym), found {len(cells)}"
    term, synonym = (cell.strip() for cell in cells)
    if not term or not synonym:
        return "empty term" if not term else "empty synonym"
    if term_key(term) == term_key(synonym):
        return "term and synonym are identical"
    return None


def read_pairs(
    path: str | Path,
    *,
    delimiter: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
) -> PairFile:
    """Read and validate a pair file.

    Raises PairFileError when any row is bad, unless ``skip_bad_rows``; then the bad rows are
    returned alongside the good pairs for the caller to report. A file without a single good pair
    is an error either way.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PairFileError(path, [], f"cannot read {path}: {exc.strerror or exc}") from exc
    parsed = parse_pairs(data, path, delimiter=delimiter, header=header)
    if parsed.bad_rows and not skip_bad_rows:
        raise PairFileError(path, parsed.bad_rows)
    if not parsed.pairs:
        raise PairFileError(path, parsed.bad_rows, f"{path}: no synonym pairs found")
    return parsed


def synonym_groups(pairs: list[Pair]) -> list[int]:
    """A group id per pair: pairs linked through a shared term (A-B, B-C) share a group.

    Within a group every text is a synonym of every other one, so two pairs of one group must
    never meet as each other's negatives, and a retrieval hit anywhere in the group is correct.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for pair in pairs:
        a, b = find(term_key(pair.term)), find(term_key(pair.synonym))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots: dict[str, int] = {}
    return [roots.setdefault(find(term_key(pair.term)), len(roots)) for pair in pairs]
