"""AdminService: LoadModel and UnloadModel, for callers with the admin role (frontend/auth.py).

The engine loads and unloads; every front end sees the change through the models epoch
(frontend/models.py), so a model loaded through one front end is served by all. LoadModel loads
only folders under ``--model-root``: the path is resolved (symlinks, ``..``) before the check,
and an error about a path outside the root says only that, never whether it exists.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from semserve.core.api import Core
from semserve.core.types import CROSS_ENCODER, ENCODER
from semserve.frontend.errors import ServiceError, invalid_argument, unary_rpc
from semserve.frontend.info_service import model_info
from semserve.frontend.models import ModelDirectory
from semserve_client.v1 import common_pb2, info_pb2, info_pb2_grpc

_KINDS = {common_pb2.MODEL_KIND_ENCODER: ENCODER, common_pb2.MODEL_KIND_CROSS_ENCODER: CROSS_ENCODER}


def resolve_under_root(root: Path | None, requested: str) -> Path:
    """The model folder ``requested`` names (absolute, or relative to the root), inside ``root``."""
    if root is None:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           "LoadModel is off: start the server with --model-root, the folder models may be loaded from")
    root = root.resolve()
    resolved = (root / requested).resolve()  # an absolute ``requested`` replaces the root here
    if not resolved.is_relative_to(root):
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "path is outside the model root")
    if not resolved.is_dir():
        relative = resolved.relative_to(root)
        raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no model folder {str(relative)!r} under the model root")
    return resolved


class AdminServicer(info_pb2_grpc.AdminServiceServicer):
    def __init__(self, core: Core, models: ModelDirectory, model_root: Path | None):
        self._core = core
        self._models = models
        self._root = model_root

    @unary_rpc
    async def LoadModel(self, request, context):
        if not request.name.strip():
            raise invalid_argument("name is empty; give the name requests will use for this model")
        if request.kind not in _KINDS:
            raise invalid_argument("kind must be MODEL_KIND_ENCODER or MODEL_KIND_CROSS_ENCODER")
        if not request.path:
            raise invalid_argument("path is empty; give a model folder under the server's --model-root")
        folder = resolve_under_root(self._root, request.path)
        model = await self._core.load_model(request.name, _KINDS[request.kind], str(folder))
        await self._models.refresh()
        return info_pb2.LoadModelResponse(model=model_info(model))

    @unary_rpc
    async def UnloadModel(self, request, context):
        await self._core.unload_model(request.name)
        await self._models.refresh()
        return info_pb2.UnloadModelResponse()
