"""The front end's view of the hosted models: descriptors and tokenizers, kept in step with the
engine through its models epoch.

A model loaded through any front end bumps the engine's epoch; every reply carries it, and the
next lookup here refreshes the table. A name this table does not know is looked up again before
a request fails, so a model loaded a moment ago through another front end is found at once; an
unloaded one is refused by the engine itself.
"""

from __future__ import annotations

import asyncio

from semserve.core.api import Core
from semserve.core.errors import ModelNotFound, NoModelOfKind
from semserve.core.models import find_model
from semserve.core.types import ModelDescriptor
from semserve.frontend.tokenization import TextTokenizer


class ModelDirectory:
    def __init__(self, core: Core):
        self._core = core
        self._epoch = -1
        self._models: dict[str, ModelDescriptor] = {}
        self._defaults: dict[str, str] = {}  # kind -> the default model's name
        self._tokenizers: dict[tuple[str, int], TextTokenizer] = {}
        self._refreshing: asyncio.Future | None = None

    async def refresh(self) -> None:
        """Fetch the model table (one fetch at a time; concurrent callers share it)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            table = await self._core.models()
            live = {(m.name, m.load_id) for m in table.models}
            tokenizers = {k: v for k, v in self._tokenizers.items() if k in live}
            # Tokenizers are built here, before the table is used, so a model's first request
            # does not pay for it (building one from its JSON takes tens of milliseconds).
            for key in live - set(tokenizers):
                try:
                    tokenizer = TextTokenizer(await self._core.tokenizer(key[0]))
                    tokenizer.encode(["warm up"], True)  # the first call of a tokenizer pays its set-up
                    tokenizers[key] = tokenizer
                except ModelNotFound:  # unloaded meanwhile; the next refresh sees it gone
                    pass
            self._models = {m.name: m for m in table.models if (m.name, m.load_id) in tokenizers}
            self._defaults = {m.kind: m.name for m in self._models.values() if m.is_default}
            self._tokenizers = tokenizers
            self._epoch = table.epoch
            self._refreshing.set_result(None)
        except BaseException as exc:
            self._refreshing.set_exception(exc)
            self._refreshing.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        finally:
            self._refreshing = None

    def all(self) -> list[ModelDescriptor]:
        return list(self._models.values())

    async def get(self, name: str, kind: str) -> tuple[ModelDescriptor, TextTokenizer]:
        """The model a request names (empty: the default of ``kind``) and its tokenizer."""
        if self._epoch != self._core.models_epoch:
            await self.refresh()
        try:
            model = find_model(self._models, self._defaults, name, kind)
        except (ModelNotFound, NoModelOfKind):  # perhaps loaded a moment ago through another front end
            await self.refresh()
            model = find_model(self._models, self._defaults, name, kind)
        return model, self._tokenizers[(model.name, model.load_id)]
