"""`semserve-client index`: load a CSV, TSV or JSON Lines file into a collection, resumably.

Rows go out as batched unary Upserts, a few in flight at once. Each Upsert is acknowledged only
once durable on the server, so after every acknowledged batch (in file order) the number of rows
done is written to a small progress file next to the input. A rerun skips those rows; a batch
that was in flight when the run stopped is simply sent again, which is harmless because an
upsert of an existing id replaces it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from semserve_client import search_requests as sr

FORMATS = ("csv", "tsv", "jsonl")


@dataclass
class IndexSpec:
    path: Path
    collection: str
    text_column: str
    id_column: str | None = None  # None: the row number (0-based, header excluded) is the id
    metadata_columns: tuple[str, ...] = ()
    format: str | None = None  # None: from the file extension
    batch_size: int = 256
    in_flight: int = 4
    max_rows: int | None = None  # stop after this many rows in this run (the rest on a rerun)
    resume_file: Path | None = None
    restart: bool = False
    progress_bar: bool = True


def detect_format(path: Path, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    return "csv"


def read_rows(path: Path, fmt: str) -> Iterator[dict]:
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
        return
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")


def count_rows(path: Path, fmt: str) -> int:
    return sum(1 for _ in read_rows(path, fmt))


def progress_path(spec: IndexSpec) -> Path:
    return spec.resume_file or spec.path.with_name(spec.path.name + ".semserve-progress.json")


def _identity(spec: IndexSpec) -> dict:
    """What a progress file must match to be resumed: the same load of the same file."""
    return {
        "file": str(spec.path.resolve()),
        "file_size": spec.path.stat().st_size,
        "collection": spec.collection,
        "id_column": spec.id_column,
        "text_column": spec.text_column,
    }


def load_progress(spec: IndexSpec) -> int:
    """Rows already acknowledged by an earlier run of the same load (0 when none or restarting)."""
    path = progress_path(spec)
    if spec.restart or not path.exists():
        return 0
    saved = json.loads(path.read_text())
    if {k: saved.get(k) for k in _identity(spec)} != _identity(spec):
        print(f"semserve-client: {path} belongs to another load (file, collection or columns differ); "
              "starting from the first row", file=sys.stderr)
        return 0
    return int(saved.get("rows_done", 0))


def save_progress(spec: IndexSpec, rows_done: int, complete: bool) -> None:
    path = progress_path(spec)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({**_identity(spec), "rows_done": rows_done, "complete": complete}))
    os.replace(temporary, path)


def index_file(client, spec: IndexSpec) -> dict:
    """Upsert the file's rows; returns a summary (rows done, upserted, skipped, seconds)."""
    from tqdm import tqdm

    started = time.monotonic()
    fmt = detect_format(spec.path, spec.format)
    total = count_rows(spec.path, fmt)
    done = resumed_from = load_progress(spec)
    upserted = skipped = 0
    pending: deque = deque()  # (future, rows_done_after, documents)
    bar = tqdm(total=total, initial=done, unit="rows", desc=spec.collection, disable=not spec.progress_bar,
               file=sys.stderr, dynamic_ncols=True)

    def acknowledge_oldest() -> None:
        nonlocal done, upserted
        future, rows_after, count = pending.popleft()
        future.result()  # raises grpc.RpcError on failure; progress keeps the last good batch
        upserted += count
        bar.update(rows_after - done)
        done = rows_after
        save_progress(spec, done, complete=False)

    def send(batch: list, rows_after: int) -> None:
        if not batch:  # every row of the batch had an empty text: nothing to send
            pending.append((_Done(), rows_after, 0))
            return
        request = sr.upsert_request(spec.collection, batch)
        pending.append((client.search.Upsert.future(request, timeout=client.timeout), rows_after, len(batch)))

    batch: list = []
    read = 0
    next_row = done  # the row after the last one read
    try:
        for row_number, row in enumerate(read_rows(spec.path, fmt)):
            if row_number < resumed_from:
                continue
            if spec.max_rows is not None and read >= spec.max_rows:
                break
            read += 1
            next_row = row_number + 1
            text = row.get(spec.text_column)
            if text is None:
                raise KeyError(f"row {row_number} has no column {spec.text_column!r}; columns: {', '.join(row)}")
            if not str(text).strip():
                skipped += 1
            else:
                doc_id = str(row[spec.id_column]) if spec.id_column else str(row_number)
                metadata = {c: str(row[c]) for c in spec.metadata_columns if row.get(c) is not None}
                batch.extend(sr.documents([doc_id], [str(text)], metadata=[metadata]))
            if read % spec.batch_size == 0:
                send(batch, next_row)
                batch = []
                while len(pending) >= spec.in_flight:
                    acknowledge_oldest()
        if read % spec.batch_size:
            send(batch, next_row)
        while pending:
            acknowledge_oldest()
    finally:
        bar.close()
    complete = done >= total
    save_progress(spec, done, complete)
    return {
        "collection": spec.collection,
        "rows_total": total,
        "rows_done": done,
        "resumed_from": resumed_from,
        "upserted": upserted,
        "skipped_empty_text": skipped,
        "complete": complete,
        "seconds": round(time.monotonic() - started, 3),
        "progress_file": str(progress_path(spec)),
    }


class _Done:
    """A future that is already complete (a batch with nothing to send)."""

    def result(self):
        return None
