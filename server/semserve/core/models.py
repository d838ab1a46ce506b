"""Finding the model a request names: one rule, and one set of messages, for the engine's
registry and the front end's copy of the model table."""

from __future__ import annotations

from typing import Mapping, Protocol, TypeVar

from semserve.core.errors import ModelNotFound, NoModelOfKind, WrongModelKind
from semserve.core.types import CROSS_ENCODER, ENCODER

_FLAG_FOR_KIND = {ENCODER: "--encoder", CROSS_ENCODER: "--reranker"}
_KIND_WORDS = {ENCODER: "encoder (bi-encoder)", CROSS_ENCODER: "cross-encoder"}


class Named(Protocol):
    name: str
    kind: str


M = TypeVar("M", bound=Named)


def find_model(models: Mapping[str, M], defaults: Mapping[str, str], name: str, kind: str) -> M:
    """The model called ``name``, or the default of ``kind`` when the name is empty.

    ``defaults`` maps a kind to its default model's name. A missing name is NOT_FOUND, a kind
    the server does not host FAILED_PRECONDITION (naming the flag that loads one), a model of
    the other kind INVALID_ARGUMENT.
    """
    if not name:
        default = defaults.get(kind)
        if default is None or default not in models:
            raise NoModelOfKind(
                f"this server hosts no {_KIND_WORDS[kind]}; start it with {_FLAG_FOR_KIND[kind]} DIR to load one"
            )
        return models[default]
    model = models.get(name)
    if model is None:
        known = ", ".join(f"{m.name} ({m.kind})" for m in models.values()) or "none"
        raise ModelNotFound(f"no model named {name!r}; loaded models: {known}")
    if model.kind != kind:
        raise WrongModelKind(f"model {name!r} is a {_KIND_WORDS[model.kind]}, this call needs a {_KIND_WORDS[kind]}")
    return model
