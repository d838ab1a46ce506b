"""Model loading: sentence-transformers and Hugging Face folders as plain torch modules.

Names are resolved lazily so that importing ``semserve.models.errors`` (or this package) does not
pull in torch and transformers, which take seconds to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CrossEncoder": "semserve.models.cross_encoder",
    "load_cross_encoder": "semserve.models.cross_encoder",
    "Encoder": "semserve.models.encoder",
    "load_encoder": "semserve.models.encoder",
    "ModelLoadError": "semserve.models.errors",
    "default_encoder_path": "semserve.models.bundled",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from semserve.models.bundled import default_encoder_path
    from semserve.models.cross_encoder import CrossEncoder, load_cross_encoder
    from semserve.models.encoder import Encoder, load_encoder
    from semserve.models.errors import ModelLoadError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
