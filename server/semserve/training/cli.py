"""`semserve finetune` and `semserve evaluate-pairs`.

Only argparse is imported at parser-build time: `semserve serve --help` must not wait for torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = ("finetune", "evaluate-pairs")
EXIT_USAGE = 2

logger = logging.getLogger("semserve.training")

_DELIMITERS = {"auto": None, "tab": "\t", "comma": ",", "semicolon": ";"}


def _add_pair_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, metavar="FILE",
                        help="UTF-8 TSV or CSV with two columns: term, synonym")
    parser.add_argument("--delimiter", choices=sorted(_DELIMITERS), default="auto",
                        help="column separator; auto: tab for .tsv, comma for .csv, else tab if the first row has one")
    header = parser.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_true", default=None,
                        help="the first row is a header (default: detected from names such as term,synonym)")
    header.add_argument("--no-header", dest="header", action="store_false", help="the first row is a pair")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="warn about bad rows (every one, with its line number) and go on without them")
    parser.add_argument("--max-errors", type=int, default=20, metavar="N",
                        help="bad lines listed when refusing a file")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="input length limit in tokens (default: the model folder's)")
    parser.add_argument("--log-level", default="WARNING")


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register the training commands on the `semserve` parser."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    f = subparsers.add_parser("finetune", formatter_class=formatter,
                              help="fine-tune an encoder so that synonym pairs embed together")
    f.add_argument("--model", required=True, metavar="DIR",
                   help="encoder folder (sentence-transformers or plain Hugging Face)")
    f.add_argument("--out", required=True, metavar="DIR", help="where to write the tuned sentence-transformers folder")
    _add_pair_file_options(f)
    _add_model_options(f)
    f.add_argument("--epochs", type=int, default=3)
    f.add_argument("--batch-size", type=int, default=32, help="pairs per step; each pair's negatives are the others")
    f.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (AdamW, linear warmup and decay)")
    f.add_argument("--scale", type=float, default=20.0, help="1/temperature applied to cosine similarities")
    f.add_argument("--warmup-ratio", type=float, default=0.1)
    f.add_argument("--weight-decay", type=float, default=0.01)
    f.add_argument("--freeze-layers", type=int, default=0, metavar="N",
                   help="keep the embeddings and the N lowest transformer layers fixed")
    f.add_argument("--no-dropout", action="store_true", help="train with dropout off")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = subparsers.add_parser("evaluate-pairs", formatter_class=formatter,
                              help="recall@1 and cosines of synonym pairs, optionally against a baseline model")
    e.add_argument("--model", required=True, metavar="DIR", help="encoder folder to evaluate")
    e.add_argument("--baseline", metavar="DIR", default=None, help="encoder folder to compare with")
    _add_pair_file_options(e)
    _add_model_options(e)
    e.add_argument("--json", metavar="OUT", default=None, help="write the full report as JSON")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--seed", type=int, default=0, help="seed of the random non-synonym pairs")
    e.add_argument("--show-pairs", type=int, default=50, metavar="N",
                   help="print a row per pair when the file has at most N pairs")


def add_model_tool_subcommands(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "quantization-ranges", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="measure an encoder's int8/uint8 output ranges on sample texts (semserve_quantization.json)")
    q.add_argument("--model", required=True, metavar="DIR", help="encoder folder")
    q.add_argument("--texts", required=True, metavar="FILE",
                   help="UTF-8 text file, one text per line: a few thousand like those the server will embed")
    q.add_argument("--out", default=None, metavar="FILE", help="default: semserve_quantization.json in the model folder")
    q.add_argument("--batch-size", type=int, default=64)
    _add_model_options(q)


def _quantization_ranges(args: argparse.Namespace) -> int:
    """Each dimension's min and max over the texts' unit embeddings, as sentence-transformers
    calibrates int8; the server reads the file at load (core/quantization.py)."""
    import json

    import numpy as np

    from semserve.core.quantization import RANGES_FILE, QuantizationRanges
    from semserve.models.encoder import load_encoder

    texts = [line.strip() for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 2:
        raise ValueError(f"{args.texts}: at least two non-empty lines are needed")
    encoder = load_encoder(args.model, device=_device(args.device), max_tokens=args.max_tokens)
    from semserve.training.embedding import embed

    embeddings = embed(encoder, texts, batch_size=args.batch_size).numpy()
    ranges = QuantizationRanges.measure(embeddings)
    lower, upper = np.asarray(ranges["lower"]), np.asarray(ranges["upper"])
    flat = upper <= lower  # a dimension constant over the texts: give it a step's width
    upper[flat] = lower[flat] + 1e-6
    out = Path(args.out) if args.out else Path(args.model) / RANGES_FILE
    out.write_text(json.dumps({"lower": lower.tolist(), "upper": upper.tolist(), "texts": len(texts)}))
    print(f"wrote {out}: int8/uint8 ranges of {embeddings.shape[1]} dimensions from {len(texts)} texts")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a training command; returns the process exit code (2 for bad input of any kind)."""
    from semserve.config import ConfigError
    from semserve.models.errors import ModelLoadError
    from semserve.training.export import ExportError
    from semserve.training.pairs import PairFileError

    try:
        if args.command == "finetune":
            return _finetune(args)
        if args.command == "evaluate-pairs":
            return _evaluate(args)
        if args.command == "quantization-ranges":
            return _quantization_ranges(args)
    except PairFileError as exc:
        print(f"semserve {args.command}: {exc.describe(args.max_errors) if exc.bad_rows else exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelLoadError, ExportError, ConfigError, ValueError) as exc:
        print(f"semserve {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    raise ValueError(f"not a training command: {args.command}")


def _read_pairs(args: argparse.Namespace):
    from semserve.training.pairs import describe_bad_rows, read_pairs

    parsed = read_pairs(
        args.pairs,
        delimiter=_DELIMITERS[args.delimiter],
        header=args.header,
        skip_bad_rows=args.skip_bad_rows,
    )
    if parsed.bad_rows:
        message = describe_bad_rows(Path(args.pairs), parsed.bad_rows, limit=None)
        print(f"warning: skipping {message}", file=sys.stderr)
    return parsed


def _device(spec: str) -> str:
    from semserve.engine.runtime.devices import resolve_devices

    devices = resolve_devices(spec)
    if len(devices) != 1 and spec.strip().lower() not in ("auto", "cuda"):
        raise ValueError(f"training runs on one device; {spec!r} names {len(devices)}")
    return devices[0]


def _finetune(args: argparse.Namespace) -> int:
    from semserve.models.encoder import load_encoder
    from semserve.training.export import prepare_output, save_encoder
    from semserve.training.finetune import FinetuneConfig, finetune

    parsed = _read_pairs(args)
    out = Path(args.out)
    config = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        scale=args.scale,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        seed=args.seed,
        freeze_layers=args.freeze_layers,
        dropout=not args.no_dropout,
    )
    _check_positive(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, scale=config.scale)
    device = _device(args.device)
    prepare_output(out, overwrite=args.overwrite)
    encoder = load_encoder(args.model, device=device, max_tokens=args.max_tokens)
    _warn_coverage(encoder, parsed.pairs)
    print(f"fine-tuning {args.model} on {len(parsed.pairs)} pairs from {args.pairs} ({device})", file=sys.stderr)
    result = finetune(encoder, parsed.pairs, config, progress=not args.no_progress)
    provenance: dict[str, Any] = {
        "base_model": str(Path(args.model).resolve()),
        "pairs_file": str(Path(args.pairs).resolve()),
        "pairs": len(parsed.pairs),
        "skipped_bad_rows": [row.line for row in parsed.bad_rows],
        "config": vars(config),
        "steps": result.steps,
        "epoch_losses": result.epoch_losses,
        "seconds": round(result.seconds, 2),
        "device": device,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_encoder(encoder, out, extra=provenance)
    losses = ", ".join(f"{loss:.4f}" for loss in result.epoch_losses)
    print(f"{result.steps} steps in {result.seconds:.1f}s, mean loss per epoch: {losses}")
    print(f"wrote {out}")
    return 0


def _warn_coverage(encoder, pairs) -> None:
    """Tell the user, before any time is spent, about texts the model's vocabulary cannot represent."""
    from semserve.training.coverage import coverage_warning, poorly_covered

    texts = [text for pair in pairs for text in (pair.term, pair.synonym)]
    found = poorly_covered(encoder, texts)
    message = coverage_warning(found, len(set(texts)))
    if message:
        print(f"{encoder.path}: {message}", file=sys.stderr)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, found {value}")


def _evaluate(args: argparse.Namespace) -> int:
    from semserve.models.encoder import load_encoder
    from semserve.training.evaluate import evaluate_pairs
    from semserve.training.report import format_pairs, format_summary, report_json, write_json

    parsed = _read_pairs(args)
    _check_positive(batch_size=args.batch_size)
    device = _device(args.device)

    def score(path: str):
        encoder = load_encoder(path, device=device, max_tokens=args.max_tokens)
        _warn_coverage(encoder, parsed.pairs)
        return evaluate_pairs(encoder, parsed.pairs, seed=args.seed, batch_size=args.batch_size)

    baseline = score(args.baseline) if args.baseline else None
    model = score(args.model)
    if len(parsed.pairs) <= args.show_pairs:
        print(format_pairs(parsed.pairs, model, baseline))
        print()
    print(format_summary(model, baseline))
    if args.json:
        context = {
            "model": str(Path(args.model).resolve()),
            "baseline": str(Path(args.baseline).resolve()) if args.baseline else None,
            "pairs_file": str(Path(args.pairs).resolve()),
            "seed": args.seed,
            "skipped_bad_rows": [row.line for row in parsed.bad_rows],
        }
        write_json(args.json, report_json(parsed.pairs, model, baseline, context))
        print(f"wrote {args.json}")
    return 0


__all__ = ["COMMANDS", "add_subcommands", "run"]
