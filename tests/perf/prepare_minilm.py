"""Copy the bundled all-MiniLM-L6-v2 into a folder with fp16 weights (about 45 MB), small enough
to carry to a GPU machine for `make bench-gpu`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from semserve.models.bundled import default_encoder_path


def main(target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(default_encoder_path(), target, ignore=shutil.ignore_patterns("README.md", ".gitattributes"))
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    print(target)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".models/minilm"))
